from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPAuthorizationCredentials

from api.deps import RuntimeDep, bearer
from api.metrics import CONTENT_TYPE
from api.schemas.common import responses
from core.errors import NotFound, Unauthorized

router = APIRouter(tags=["system"])


def operator(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """The deployment's operator, not a tenant: the metrics count every organisation's jobs, so no
    organisation's key may read them. The operator's token is NOTETUNE_METRICS_TOKEN."""
    token = runtime.settings.metrics_token
    if credentials is None:  # as the schema says: the header first, whether metrics are on or off
        raise Unauthorized("send the operator's metrics token: 'Authorization: Bearer <token>'")
    if token is None:
        raise NotFound("metrics are off: the operator sets NOTETUNE_METRICS_TOKEN to turn them on")
    sent = credentials.credentials
    if not hmac.compare_digest(sent.encode(), token.get_secret_value().encode()):
        raise Unauthorized(
            "send the operator's metrics token: 'Authorization: Bearer <token>'", code="invalid_token"
        )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        **responses(404),
        200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"},
    },
)
def read_metrics(runtime: RuntimeDep, _: Annotated[None, Depends(operator)]) -> Response:
    """Request latencies, batch sizes, queue depth, loaded models and jobs (the operator's token)."""
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
