from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import AdminDep, RuntimeDep
from api.metrics import CONTENT_TYPE
from api.schemas.common import responses

router = APIRouter(tags=["system"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={**responses(), 200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
)
def read_metrics(runtime: RuntimeDep, _: AdminDep) -> Response:
    """Request latencies, batch sizes, queue depth, loaded models and jobs, for Prometheus (admin key)."""
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
