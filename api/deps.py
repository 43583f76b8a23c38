"""Request dependencies as Annotated aliases; tests may swap them with app.dependency_overrides."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from core.db.models import Role
from core.db.session import Database
from core.queue import JobQueue
from core.services.auth import Principal, authenticate, authorize
from core.settings import Settings
from models_store.store import ModelStore


@dataclass
class ApiRuntime:
    """Everything the API process builds once, in the lifespan."""

    settings: Settings
    database: Database
    queue: JobQueue
    store: ModelStore
    model_cache: object  # ml.model_cache.ModelCache, imported lazily (torch)


def get_runtime(request: Request) -> ApiRuntime:
    return request.app.state.runtime


RuntimeDep = Annotated[ApiRuntime, Depends(get_runtime)]


def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    """One session per request; routes commit explicitly, anything uncommitted is rolled back."""
    with runtime.database.session() as session:
        try:
            yield session
        except Exception:
            session.rollback()
            raise


SessionDep = Annotated[Session, Depends(get_session)]

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")


def _principal(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    return authenticate(session, credentials.credentials if credentials else None)


def require(role: Role):
    def dependency(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        return authorize(principal, role)

    dependency.__name__ = f"require_{role.value}"
    return dependency


AnyKeyDep = Annotated[Principal, Depends(_principal)]
AdminDep = Annotated[Principal, Depends(require(Role.admin))]
TrainerDep = Annotated[Principal, Depends(require(Role.trainer))]
PredictorDep = Annotated[Principal, Depends(require(Role.predictor))]


def get_store(runtime: RuntimeDep) -> ModelStore:
    return runtime.store


StoreDep = Annotated[ModelStore, Depends(get_store)]


def get_queue(runtime: RuntimeDep) -> JobQueue:
    return runtime.queue


QueueDep = Annotated[JobQueue, Depends(get_queue)]
