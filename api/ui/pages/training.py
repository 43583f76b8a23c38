"""1. First fine-tune, 2. second fine-tune, and the jobs: list, live progress, cancel, results."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from api.deps import RuntimeDep, SessionDep, SettingsDep
from api.schemas.jobs import FinetuneCreate
from api.ui import views
from api.ui.i18n import N_
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
from api.ui.training_form import (
    MAIN_HINTS,
    METHOD_LINES,
    SECOND_STAGE_ADVICE,
    field_views,
    submitted_hyperparameters,
)
from core.errors import InvalidRequest, NotFound
from core.services import datasets as datasets_service
from core.services import jobs as jobs_service
from core.services import models as models_service
from core.services.jobs import FinetuneSpec
from ml.errors import UserError
from ml.vocabulary import METHODS

router = page_router()


@router.get("/finetune")
def first_finetune_page(
    request: Request, session: SessionDep, settings: SettingsDep, principal: TrainerPageDep
):
    return _finetune_form(request, session, settings, principal.organisation_id, stage=1, values={})


@router.get("/finetune/second")
def second_finetune_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: TrainerPageDep,
    parent: str | None = None,
):
    values = {"parent_model_id": parent or ""}
    return _finetune_form(request, session, settings, principal.organisation_id, stage=2, values=values)


@router.post("/finetune")
async def start_finetune(
    request: Request, session: SessionDep, runtime: RuntimeDep, principal: TrainerPageDep
):
    form = await read_form(request)
    hyperparameters = submitted_hyperparameters(form)
    values = {
        "dataset_id": text_field(form, "dataset_id") or "",
        "method": text_field(form, "method") or "",
        "parent_model_id": text_field(form, "parent_model_id") or "",
        "name": text_field(form, "name") or "",
        "hyperparameters": hyperparameters,
    }
    stage = 2 if values["parent_model_id"] or form.get("stage") == "2" else 1
    try:
        upload = await uploaded_file(form, runtime.settings)
        body = validated(
            FinetuneCreate,
            {
                "train_dataset_id": dataset_or_upload(values["dataset_id"], upload),
                "method": values["method"] or None if stage == 1 else None,
                "parent_model_id": values["parent_model_id"] or None,
                "hyperparameters": hyperparameters,
                "name": values["name"] or None,
            },
        )
        if stage == 2 and body.parent_model_id is None:
            raise InvalidRequest(N_("choose the model to continue"), code="parent_required")
        spec = FinetuneSpec(**body.model_dump(exclude_unset=True))
        job = await run_in_threadpool(submit, session, runtime, principal, spec, upload, form)
    except UserError as error:
        session.rollback()
        return _finetune_form(
            request,
            session,
            runtime.settings,
            principal.organisation_id,
            stage=stage,
            values=values,
            error=error,
            status_code=error.status_code,
        )
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


def _finetune_form(
    request, session, settings, organisation_id, *, stage, values, error=None, status_code=200
):
    limit = settings.page_size_limit
    datasets = datasets_service.list_datasets(session, 0, limit, organisation_id=organisation_id).items
    parents = (
        models_service.list_models(session, 0, limit, organisation_id=organisation_id).items
        if stage == 2
        else []
    )
    parent = next((model for model in parents if model.id == values.get("parent_model_id")), None)
    method = parent.method if parent else values.get("method") or None
    main, advanced = field_views(stage, method, values.get("hyperparameters") or {})
    context = {
        "stage": stage,
        "datasets": datasets,
        "parents": [(model, models_service.lineage(session, model)) for model in parents],
        "parent": parent,
        "methods": METHODS,
        "method_lines": METHOD_LINES,
        "main_hints": MAIN_HINTS,
        "second_stage_advice": SECOND_STAGE_ADVICE,
        "main_fields": main,
        "advanced_fields": advanced,
        "values": values,
        "error": error,
        "submission": secrets.token_urlsafe(16),
    }
    return render(request, "finetune.html", context, status_code=status_code)


# ------------------------------------------------------------------------------------------------ jobs


@router.get("/jobs")
def jobs_page(request: Request, session: SessionDep, settings: SettingsDep, principal: TrainerPageDep):
    jobs = jobs_service.list_jobs(
        session,
        organisation_id=principal.organisation_id,
        status=None,
        kind=None,
        offset=0,
        limit=settings.page_size_limit,
    )
    context = {"jobs": jobs.items, "count": jobs.count, "phase_of": views.job_phase}
    return render(request, "jobs.html", context)


@router.get("/jobs/{job_id}")
def job_page(job_id: str, request: Request, session: SessionDep, principal: TrainerPageDep):
    return render(request, "job.html", _job_context(session, job_id, principal.organisation_id))


@router.get("/jobs/{job_id}/progress")
def job_progress(job_id: str, request: Request, session: SessionDep, principal: TrainerPageDep):
    """The part of the job page that htmx polls until the job ends."""
    return render(request, "_job_status.html", _job_context(session, job_id, principal.organisation_id))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, session: SessionDep, principal: TrainerPageDep) -> RedirectResponse:
    jobs_service.cancel_job(session, job_id, organisation_id=principal.organisation_id)
    session.commit()
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


def _job_context(session, job_id: str, organisation_id: str) -> dict[str, Any]:
    job = jobs_service.get_job(session, job_id, organisation_id=organisation_id)
    events = jobs_service.list_job_events(session, job_id, 0, 1000, organisation_id=organisation_id).items
    metrics = job.metrics or {}
    comparison = metrics.get("comparison") or {}
    parent_vs = comparison.get("parent_vs_fine_tuned") or {}
    return {
        "job": job,
        "finished": job.status in views.FINISHED,
        "phase": views.job_phase(job),
        "progress": job.progress or {},
        "chart": views.epoch_chart(events, (job.progress or {}).get("epochs")),
        "base_rows": views.comparison_rows(
            comparison.get("base_untrained") or {}, comparison.get("fine_tuned") or {}
        ),
        "parent_rows": views.comparison_rows(parent_vs.get("parent") or {}, parent_vs.get("second") or {}),
        "baseline_rows": views.comparison_rows(
            comparison.get("baseline") or {}, comparison.get("fine_tuned") or {}
        ),
        "baseline_verdict": views.baseline_verdict(comparison),
        "forgetting": views.forgetting_summary(metrics.get("forgetting_check")),
        "dial": views.dial_view(metrics.get("interpolation")),
        "metric_labels": views.METRIC_LABELS,
        "model": _model_or_none(session, job.output_model_id, organisation_id)
        if job.status == "succeeded"
        else None,
        "evaluation_id": metrics.get("evaluation_id") if job.kind == "evaluate" else None,
    }


def _model_or_none(session, model_id: str | None, organisation_id: str):
    try:
        return (
            models_service.get_model(session, model_id, organisation_id=organisation_id) if model_id else None
        )
    except NotFound:
        return None
