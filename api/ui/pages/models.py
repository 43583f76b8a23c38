"""Models: the list with lineage, method, data, metrics and threshold, and one model's page."""

from __future__ import annotations

from fastapi import Request

from api.deps import SessionDep, SettingsDep
from api.ui import views
from api.ui.pages.common import page_router
from api.ui.rendering import render
from api.ui.security import PredictorPageDep
from core.services import models as models_service

router = page_router()


@router.get("/models")
def models_page(request: Request, session: SessionDep, settings: SettingsDep, principal: PredictorPageDep):
    models = models_service.list_models(
        session, 0, settings.page_size_limit, organisation_id=principal.organisation_id
    )
    rows = [(model, models_service.lineage(session, model)) for model in models.items]
    context = {"rows": rows, "count": models.count, "labels": views.model_labels(models.items)}
    return render(request, "models.html", context)


@router.get("/models/{model_id}")
def model_page(model_id: str, request: Request, session: SessionDep, principal: PredictorPageDep):
    model = models_service.get_model(session, model_id, organisation_id=principal.organisation_id)
    metrics = model.metrics or {}
    comparison = metrics.get("comparison") or {}
    context = {
        "model": model,
        "lineage": models_service.lineage(session, model),
        "base_rows": views.comparison_rows(
            comparison.get("base_untrained") or {}, comparison.get("fine_tuned") or {}
        ),
        "baseline_rows": views.comparison_rows(
            comparison.get("baseline") or {}, comparison.get("fine_tuned") or {}
        ),
        "baseline_verdict": views.baseline_verdict(comparison),
        "forgetting": views.forgetting_summary(metrics.get("forgetting_check")),
        "dial": views.dial_view(metrics.get("interpolation")),
        "metric_labels": views.METRIC_LABELS,
    }
    return render(request, "model.html", context)
