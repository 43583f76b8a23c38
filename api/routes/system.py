from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import AnyKeyDep, RuntimeDep
from api.schemas.common import responses
from api.schemas.system import Check, Health, Version
from core.services import health as health_service

router = APIRouter(tags=["system"])


def package_version() -> str:
    try:
        return version("notetune")
    except PackageNotFoundError:
        return "0+unknown"


@router.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "Degraded"}})
def health(runtime: RuntimeDep) -> JSONResponse:
    """Database, broker and a live worker; 503 when any is missing. Needs no API key."""
    checks = {"database": _database(runtime), "broker": _broker(runtime), "worker": _worker(runtime)}
    healthy = all(check.ok for check in checks.values())
    body = Health(status="ok" if healthy else "degraded", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


def _database(runtime: RuntimeDep) -> Check:
    try:
        health_service.check_database(runtime.database)
        return Check(ok=True)
    except Exception as error:
        return Check(ok=False, detail=f"unreachable ({type(error).__name__})")


def _broker(runtime: RuntimeDep) -> Check:
    ok = runtime.queue.broker_reachable()
    return Check(ok=ok, detail=None if ok else "unreachable")


def _worker(runtime: RuntimeDep) -> Check:
    try:
        live = health_service.live_workers(runtime.database, runtime.settings)
    except Exception as error:
        return Check(ok=False, detail=f"unknown ({type(error).__name__})")
    return Check(ok=live > 0, detail=f"{live} live worker(s)")


@router.get("/version", response_model=Version, responses=responses())
def read_version(runtime: RuntimeDep, _: AnyKeyDep) -> Version:
    """The service version."""
    return Version(name="notetune", version=package_version(), embedded=runtime.settings.embedded)
