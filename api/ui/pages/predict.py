"""4. Predict: one note scored by the chosen model beside the untrained base and compared models,
with the sentences that raised and lowered the risk. The note travels in the POST body only: never
in a URL, a log line or the browser's storage, and the page is not cached."""

from __future__ import annotations

from fastapi import Request

from api.deps import RuntimeDep
from api.ui import views
from api.ui.i18n import N_
from api.ui.pages.common import page_router, read_form, text_field
from api.ui.rendering import render
from api.ui.security import BriefPredictorPageDep
from core.errors import InvalidRequest
from core.services import models as models_service
from core.services.predictions import PredictSpec, predict
from ml.errors import UserError
from ml.vocabulary import BASE

router = page_router()


@router.get("/predict")
def predict_page(request: Request, runtime: RuntimeDep, principal: BriefPredictorPageDep):
    return _page(request, runtime, principal.organisation_id, values={"compare": [BASE]})


@router.post("/predict")
async def predict_note(request: Request, runtime: RuntimeDep, principal: BriefPredictorPageDep):
    form = await read_form(request)
    note = form.get("note") if isinstance(form.get("note"), str) else ""
    compare = [value for value in form.getlist("compare") if isinstance(value, str) and value]
    values = {
        "model_id": text_field(form, "model_id") or "",
        "note": note,
        "compare": compare,
        "threshold": text_field(form, "threshold") or "",
    }
    try:
        spec = PredictSpec(
            model_id=_required_model(values["model_id"]),
            texts=[note],
            compare_with=compare,
            threshold=_threshold(values["threshold"]),
            organisation_id=principal.organisation_id,
        )
        result = await predict(
            runtime.database,
            runtime.settings,
            runtime.predictor,
            spec,
            api_key_id=principal.key_id,
            rate=runtime.predict_buckets,
            explain=True,
        )
    except UserError as error:
        return _page(
            request,
            runtime,
            principal.organisation_id,
            values=values,
            error=error,
            status_code=error.status_code,
        )
    return _page(request, runtime, principal.organisation_id, values=values, result=result["predictions"][0])


def _page(request, runtime, organisation_id, *, values, result=None, error=None, status_code=200):
    with runtime.database.transaction() as session:
        limit = runtime.settings.page_size_limit
        models = models_service.list_models(session, 0, limit, organisation_id=organisation_id).items
        labels = views.model_labels(models)
    explanation = (result or {}).get("explanation")
    context = {
        "models": models,
        "labels": labels,
        "values": values,
        "result": result,
        "segments": views.highlighted(values.get("note") or "", explanation) if explanation else None,
        "error": error,
        "max_chars": runtime.settings.max_text_chars,
    }
    return render(request, "predict.html", context, status_code=status_code)


def _required_model(model_id: str) -> str:
    if not model_id:
        raise InvalidRequest(N_("choose a model"), code="model_required")
    return model_id


def _threshold(text: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise InvalidRequest(
            N_("the threshold must be a number between 0 and 1"), code="threshold_out_of_range"
        )
    return value
