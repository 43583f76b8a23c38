from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from api.deps import EvaluationId, SessionDep, SettingsDep, TrainerDep
from api.schemas.common import responses
from api.schemas.deletion import DeletionRead
from core.services import deletion as deletion_service
from core.services import evaluations as evaluations_service
from ml.vocabulary import PLOT_KINDS, REPORT_TABLES

router = APIRouter(prefix="/evaluations", tags=["evaluations"])
# The service checks the size (code plot_size); the schema states the same bounds.
PIXELS = {"minimum": 200, "maximum": 4000}


@router.get(
    "/{evaluation_id}",
    responses={
        200: {"content": {"application/json": {}, "text/csv": {}}, "description": "The report"},
        **responses(404),
    },
)
def read_evaluation(
    evaluation_id: EvaluationId,
    session: SessionDep,
    principal: TrainerDep,
    format: Annotated[Literal["json", "csv"], Query(description="json (default) or csv")] = "json",
    table: Annotated[
        Literal[REPORT_TABLES],  # type: ignore[valid-type]
        Query(description="With format=csv: which table (models, the default, is the main one)"),
    ] = REPORT_TABLES[0],
) -> Response:
    """An evaluation report: metrics with 95% CIs, calibration, decision curve, subgroups, comparisons."""
    evaluation = evaluations_service.get_evaluation(
        session, evaluation_id, organisation_id=principal.organisation_id
    )
    if format == "csv":
        suffix = "" if table == REPORT_TABLES[0] else f"-{table}"
        return Response(
            evaluations_service.evaluation_csv(evaluation, table),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="evaluation-{evaluation.id}{suffix}.csv"'},
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
    evaluation_id: EvaluationId,
    kind: Literal[PLOT_KINDS],  # type: ignore[valid-type]
    session: SessionDep,
    settings: SettingsDep,
    principal: TrainerDep,
    width: Annotated[
        int | None, Query(description="Pixels (200-4000); default 900", json_schema_extra=PIXELS)
    ] = None,
    height: Annotated[
        int | None, Query(description="Pixels (200-4000); default 700", json_schema_extra=PIXELS)
    ] = None,
) -> Response:
    """ROC, precision-recall, confusion matrices, calibration or decision curve of the evaluated models."""
    png = evaluations_service.plot_evaluation(
        session,
        settings,
        evaluation_id,
        kind,
        organisation_id=principal.organisation_id,
        width=width,
        height=height,
    )
    return Response(png, media_type="image/png")


@router.delete("/{evaluation_id}", response_model=DeletionRead, responses=responses(404))
def delete_evaluation(
    evaluation_id: EvaluationId, session: SessionDep, settings: SettingsDep, principal: TrainerDep
) -> DeletionRead:
    """Delete an evaluation: its report and the scores its plots are drawn from."""
    deletion = deletion_service.delete_evaluation(
        session, evaluation_id, organisation_id=principal.organisation_id
    )
    deletion_service.commit_and_remove_files(session, settings)
    return DeletionRead.model_validate(deletion)
