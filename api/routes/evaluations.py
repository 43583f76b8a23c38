from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from api.deps import SessionDep, SettingsDep, TrainerDep
from api.schemas.common import responses
from core.errors import InvalidRequest, NotFound
from core.services.evaluations import get_evaluation

router = APIRouter(prefix="/evaluations", tags=["evaluations"])


@router.get(
    "/{evaluation_id}",
    responses={
        200: {"content": {"application/json": {}, "text/csv": {}}, "description": "The report"},
        **responses(404),
    },
)
def read_evaluation(
    evaluation_id: str,
    session: SessionDep,
    _: TrainerDep,
    format: Annotated[Literal["json", "csv"], Query(description="json (default) or csv")] = "json",
) -> Response:
    """An evaluation report: metrics with 95% CIs per model, majority baseline and comparisons."""
    evaluation = get_evaluation(session, evaluation_id)
    if format == "csv":
        from ml.report import report_to_csv

        return Response(
            report_to_csv(evaluation.report),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="evaluation-{evaluation.id}.csv"'},
        )
    body: dict[str, Any] = {
        "id": evaluation.id,
        "job_id": evaluation.job_id,
        "test_dataset_id": evaluation.test_dataset_id,
        "created_at": evaluation.created_at.isoformat(),
        "report": evaluation.report,
    }
    return JSONResponse(body)


@router.get(
    "/{evaluation_id}/plots/{kind}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "A PNG chart"}, **responses(404)},
)
def evaluation_plot(
    evaluation_id: str,
    kind: Literal["roc", "pr", "confusion", "calibration"],
    session: SessionDep,
    settings: SettingsDep,
    _: TrainerDep,
    width: Annotated[int | None, Query(description="Pixels (200-4000); default 900")] = None,
    height: Annotated[int | None, Query(description="Pixels (200-4000); default 700")] = None,
) -> Response:
    """ROC, precision-recall, confusion matrices or calibration of the evaluated models."""
    import numpy as np

    from ml.evaluate import outputs_from_arrays
    from ml.plots import PIXEL_RANGE, plot_png

    size = {name: value for name, value in (("width_px", width), ("height_px", height)) if value is not None}
    low, high = PIXEL_RANGE
    if not all(low <= value <= high for value in size.values()):
        raise InvalidRequest(f"width and height must be between {low} and {high} pixels", code="plot_size")
    evaluation = get_evaluation(session, evaluation_id)
    path = settings.data_dir.resolve() / evaluation.arrays_path
    if not path.is_file():
        raise NotFound("the evaluation's stored scores are missing", code="evaluation_arrays_missing")
    with np.load(path) as stored:
        arrays = {key: stored[key] for key in stored.files}
    y_true, outputs = outputs_from_arrays(arrays, evaluation.report)
    return Response(plot_png(kind, y_true, outputs, **size), media_type="image/png")
