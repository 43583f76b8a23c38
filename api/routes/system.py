from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import AnyKeyDep, RuntimeDep
from api.health_port import health_body
from api.schemas.common import responses
from api.schemas.system import Health, Version
from core.db.session import Database
from core.queue import JobQueue
from core.services import health as health_service
from core.services.health import CheckResult
from core.settings import Settings

router = APIRouter(tags=["system"])


def package_version() -> str:
    try:
        return version("notetune")
    except PackageNotFoundError:
        return "0+unknown"


@router.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "Degraded"}})
async def health(runtime: RuntimeDep) -> JSONResponse:
    """Database, broker and a live worker (checked every few seconds); 503 when any is missing.
    Needs no API key."""
    status, body = health_body(runtime.health)
    return JSONResponse(Health.model_validate(body).model_dump(), status_code=status)


def run_checks(database: Database, queue: JobQueue, settings: Settings) -> dict[str, CheckResult]:
    return {
        "database": _database(database),
        "broker": _broker(queue),
        "worker": _worker(database, settings),
    }


def _database(database: Database) -> CheckResult:
    try:
        health_service.check_database(database)
        return CheckResult(ok=True)
    except Exception as error:
        return CheckResult(ok=False, detail=f"unreachable ({type(error).__name__})")


def _broker(queue: JobQueue) -> CheckResult:
    ok = queue.broker_reachable()
    return CheckResult(ok=ok, detail=None if ok else "unreachable")


def _worker(database: Database, settings: Settings) -> CheckResult:
    try:
        live = health_service.live_workers(database, settings)
    except Exception as error:
        return CheckResult(ok=False, detail=f"unknown ({type(error).__name__})")
    return CheckResult(ok=live > 0, detail=f"{live} live worker(s)")


@router.get("/version", response_model=Version, responses=responses())
def read_version(runtime: RuntimeDep, _: AnyKeyDep) -> Version:
    """The service version."""
    return Version(name="notetune", version=package_version(), embedded=runtime.settings.embedded)
