"""Request dependencies as Annotated aliases; tests may swap them with app.dependency_overrides."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import allowed_methods
from api.limits import PRINCIPAL_SCOPE_KEY
from api.metrics import ServiceMetrics
from api.schemas.common import PageQuery
from core.db.models import Role
from core.db.session import Database
from core.errors import NotFound
from core.queue import JobQueue
from core.rate_limits import TokenBuckets
from core.services.auth import Principal, authenticate, authorize
from core.services.health import HealthProbe
from core.settings import Settings


@dataclass
class ApiRuntime:
    """Everything the API process builds once, in the lifespan."""

    settings: Settings
    database: Database
    queue: JobQueue
    predictor: Any  # ml.serving.MicroBatcher, imported lazily (torch); the only user of the models
    metrics: ServiceMetrics
    health: HealthProbe
    predict_buckets: TokenBuckets


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
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    checked = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if checked is not None:  # the body guard checked this key before the body was read
        return checked
    return authenticate(session, credentials.credentials if credentials else None)


def _principal_in_own_transaction(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """For routes that wait a while (predict): the key check returns its connection at once."""
    checked = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if checked is not None:
        return checked
    with runtime.database.transaction() as session:
        return authenticate(session, credentials.credentials if credentials else None)


def require(role: Role, key_check=_principal):
    """A dependency: the caller's key, checked by `key_check`, must hold `role`."""

    def dependency(principal: Principal = Depends(key_check)) -> Principal:
        return authorize(principal, role)

    dependency.__name__ = f"require_{role.value}"
    return dependency


AnyKeyDep = Annotated[Principal, Depends(_principal)]
AdminDep = Annotated[Principal, Depends(require(Role.admin))]
TrainerDep = Annotated[Principal, Depends(require(Role.trainer))]
PredictorDep = Annotated[Principal, Depends(require(Role.predictor))]
# Holds no database connection for the rest of the request.
BriefPredictorDep = Annotated[Principal, Depends(require(Role.predictor, _principal_in_own_transaction))]


# The databases' OFFSET is a signed 64-bit integer; no list comes near this many rows.
MAX_OFFSET = 2**31 - 1

# The page size limit is a setting, read per request; the schema documents its default.
DOCUMENTED_PAGE_SIZE_LIMIT = Settings.model_fields["page_size_limit"].default


def pagination(default_limit: int):
    """offset/limit query parameters, the limit bounded by Settings.page_size_limit."""

    def page(
        settings: SettingsDep,
        offset: Annotated[
            int, Query(ge=0, le=MAX_OFFSET, description=f"Items to skip, at most {MAX_OFFSET}.")
        ] = 0,
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

DeleteModelsQuery = Annotated[
    bool,
    Query(
        description=(
            "Also delete every model learnt from the dataset's notes: those trained on it and the models "
            "fine-tuned from them (their weights are statistics of the notes; no text of them is stored)"
        )
    ),
]

PageDep = Annotated[PageQuery, Depends(pagination(default_limit=50))]
EventPageDep = Annotated[PageQuery, Depends(pagination(default_limit=100))]


# Every id this service issues: 32 lowercase hex characters (core.errors.safe_ref has the same rule).
ID_PATTERN = "^[0-9a-f]{32}$"
_ID = re.compile(ID_PATTERN)


def path_id(resource: str, parameter: str):
    """A path id of our shape, or 404 (the value is not echoed): free text never reaches the database."""

    def dependency(request: Request, **path: str) -> str:
        value = path[parameter]
        if _ID.match(value) is None:
            if request.method not in allowed_methods(request):
                # /jobs/finetune has the shape of /jobs/{job_id}: GET there is a method the path lacks.
                raise StarletteHTTPException(405)
            raise NotFound.for_id(resource, value)
        return value

    # The path parameter's name differs per route, so the signature is built here, not written.
    declared = Path(
        description="A 32-character hex id; anything else is 404", json_schema_extra={"pattern": ID_PATTERN}
    )
    dependency.__signature__ = inspect.Signature(
        [
            inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
            inspect.Parameter(parameter, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[str, declared]),
        ],
        return_annotation=str,
    )
    dependency.__name__ = f"{parameter}_path"
    return dependency


DatasetId = Annotated[str, Depends(path_id("dataset", "dataset_id"))]
JobId = Annotated[str, Depends(path_id("job", "job_id"))]
ModelId = Annotated[str, Depends(path_id("model", "model_id"))]
EvaluationId = Annotated[str, Depends(path_id("evaluation", "evaluation_id"))]
KeyId = Annotated[str, Depends(path_id("api_key", "key_id"))]
