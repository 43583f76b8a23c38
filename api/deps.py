"""Request dependencies as Annotated aliases; tests may swap them with app.dependency_overrides."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.metrics import ServiceMetrics
from api.schemas.common import PageQuery
from core.db.models import Role
from core.db.session import Database
from core.queue import JobQueue
from core.services.auth import Principal, authenticate, authorize
from core.settings import Settings


@dataclass
class ApiRuntime:
    """Everything the API process builds once, in the lifespan."""

    settings: Settings
    database: Database
    queue: JobQueue
    predictor: Any  # ml.serving.MicroBatcher, imported lazily (torch); the only user of the models
    metrics: ServiceMetrics


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


def _principal_in_own_transaction(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """For routes that wait a while (predict): the key check returns its connection at once."""
    with runtime.database.transaction() as session:
        return authenticate(session, credentials.credentials if credentials else None)


def require_briefly(role: Role):
    def dependency(principal: Annotated[Principal, Depends(_principal_in_own_transaction)]) -> Principal:
        return authorize(principal, role)

    dependency.__name__ = f"require_{role.value}_briefly"
    return dependency


AnyKeyDep = Annotated[Principal, Depends(_principal)]
AdminDep = Annotated[Principal, Depends(require(Role.admin))]
TrainerDep = Annotated[Principal, Depends(require(Role.trainer))]
PredictorDep = Annotated[Principal, Depends(require(Role.predictor))]
# Holds no database connection for the rest of the request.
BriefPredictorDep = Annotated[Principal, Depends(require_briefly(Role.predictor))]


# The page size limit is a setting, read per request; the schema documents its default.
DOCUMENTED_PAGE_SIZE_LIMIT = Settings.model_fields["page_size_limit"].default


def pagination(default_limit: int):
    """offset/limit query parameters, the limit bounded by Settings.page_size_limit."""

    def page(
        settings: SettingsDep,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[
            int,
            Query(
                ge=1,
                description="Items per page, at most the service's page size limit.",
                json_schema_extra={"maximum": DOCUMENTED_PAGE_SIZE_LIMIT},
            ),
        ] = default_limit,
    ) -> PageQuery:
        if limit > settings.page_size_limit:
            raise RequestValidationError(
                [
                    {
                        "loc": ("query", "limit"),
                        "msg": f"Input should be less than or equal to {settings.page_size_limit}",
                        "type": "less_than_equal",
                    }
                ]
            )
        return PageQuery(offset=offset, limit=limit)

    return page


# DELETE routes: also delete (or cancel) what depends on the object, instead of a 409 naming it.
CascadeQuery = Annotated[
    bool,
    Query(description="Also delete the models fine-tuned from it and cancel the jobs that read it"),
]

PageDep = Annotated[PageQuery, Depends(pagination(default_limit=50))]
EventPageDep = Annotated[PageQuery, Depends(pagination(default_limit=100))]
