"""3. Test on new data: pick or upload a test set, tick models, and read the side-by-side report."""

from __future__ import annotations

import secrets
from typing import Any, Literal

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from api.deps import RuntimeDep, SessionDep, SettingsDep
from api.schemas.jobs import EvaluateCreate
from api.ui import views
from api.ui.pages.common import (
    dataset_or_upload,
    page_router,
    read_form,
    submit,
    text_field,
    uploaded_file,
    validated,
)
from api.ui.rendering import render
from api.ui.security import TrainerPageDep
from core.services import datasets as datasets_service
from core.services import evaluations as evaluations_service
from core.services import models as models_service
from core.services.evaluations import EvaluationSpec
from ml.errors import UserError
from ml.vocabulary import BASE, BASELINE_PREFIX, MAX_MODELS, PLOT_KINDS, REPORT_TABLES

router = page_router()


@router.get("/evaluate")
def evaluate_page(request: Request, session: SessionDep, settings: SettingsDep, principal: TrainerPageDep):
    return _evaluate_form(request, session, settings, principal.organisation_id, values={"models": [BASE]})


@router.post("/evaluate")
async def start_evaluation(
    request: Request, session: SessionDep, runtime: RuntimeDep, principal: TrainerPageDep
):
    form = await read_form(request)
    chosen = [value for value in form.getlist("models") if isinstance(value, str) and value]
    values = {
        "dataset_id": text_field(form, "dataset_id"),
        "models": chosen,
        "name": text_field(form, "name"),
        "subgroup_columns": text_field(form, "subgroup_columns"),
    }
    # One text box, comma-separated: column names are short words.
    columns = [part.strip() for part in (values["subgroup_columns"] or "").split(",") if part.strip()]
    try:
        upload = await uploaded_file(form, runtime.settings)
        body = validated(
            EvaluateCreate,
            {
                "test_dataset_id": dataset_or_upload(values["dataset_id"], upload),
                "models": chosen,
                "name": values["name"],
                "subgroup_columns": columns,
            },
        )
        spec = EvaluationSpec(**body.model_dump(exclude_unset=True))
        job = await run_in_threadpool(submit, session, runtime, principal, spec, upload, form)
    except UserError as error:
        session.rollback()
        return _evaluate_form(
            request,
            session,
            runtime.settings,
            principal.organisation_id,
            values=values,
            error=error,
            status_code=error.status_code,
        )
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


def _evaluate_form(request, session, settings, organisation_id, *, values, error=None, status_code=200):
    limit = settings.page_size_limit
    models = models_service.list_models(session, 0, limit, organisation_id=organisation_id).items
    context = {
        "datasets": datasets_service.list_datasets(session, 0, limit, organisation_id=organisation_id).items,
        "models": models,
        "labels": views.model_labels(models),
        "with_baseline": {model.id for model in models if evaluations_service.has_stored_baseline(model)},
        "baseline_prefix": BASELINE_PREFIX,
        "values": values,
        "error": error,
        "max_models": MAX_MODELS,
        "submission": secrets.token_urlsafe(16),
    }
    return render(request, "evaluate.html", context, status_code=status_code)


@router.get("/evaluations/{evaluation_id}")
def evaluation_page(evaluation_id: str, request: Request, session: SessionDep, principal: TrainerPageDep):
    organisation_id = principal.organisation_id
    evaluation = evaluations_service.get_evaluation(session, evaluation_id, organisation_id=organisation_id)
    report: dict[str, Any] = evaluation.report
    ids = [entry["model_id"] for entry in report.get("models", []) if entry.get("model_id")]
    models = [_model(session, model_id, organisation_id) for model_id in ids]
    labels = views.model_labels([model for model in models if model])
    context = {
        "evaluation": evaluation,
        "report": report,
        "labels": labels,
        "metrics": views.TABLE_METRICS,
        "metric_labels": views.METRIC_LABELS,
        "plot_kinds": PLOT_KINDS,
        "dataset": _dataset(session, evaluation.test_dataset_id, organisation_id),
    }
    return render(request, "evaluation.html", context)


@router.get("/evaluations/{evaluation_id}/table.csv")
def evaluation_csv(
    evaluation_id: str,
    session: SessionDep,
    principal: TrainerPageDep,
    table: Literal[REPORT_TABLES] = REPORT_TABLES[0],  # type: ignore[valid-type]
) -> Response:
    evaluation = evaluations_service.get_evaluation(
        session, evaluation_id, organisation_id=principal.organisation_id
    )
    suffix = "" if table == REPORT_TABLES[0] else f"-{table}"
    return Response(
        evaluations_service.evaluation_csv(evaluation, table),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="evaluation-{evaluation.id}{suffix}.csv"'},
    )


@router.get("/evaluations/{evaluation_id}/plots/{kind}.png")
def evaluation_plot(
    evaluation_id: str,
    kind: Literal[PLOT_KINDS],  # type: ignore[valid-type]
    session: SessionDep,
    settings: SettingsDep,
    principal: TrainerPageDep,
) -> Response:
    png = evaluations_service.plot_evaluation(
        session,
        settings,
        evaluation_id,
        kind,
        organisation_id=principal.organisation_id,
        width=800,
        height=600,
    )
    return Response(png, media_type="image/png")


def _model(session, model_id: str, organisation_id: str):
    try:
        return models_service.get_model(session, model_id, organisation_id=organisation_id)
    except UserError:
        return None  # a model deleted since the evaluation: its id is shown instead


def _dataset(session, dataset_id: str | None, organisation_id: str):
    if not dataset_id:
        return None
    try:
        return datasets_service.get_dataset(session, dataset_id, organisation_id=organisation_id)
    except UserError:
        return None
