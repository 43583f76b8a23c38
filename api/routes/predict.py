from __future__ import annotations

import logging

from fastapi import APIRouter

from api.deps import PredictorDep, RuntimeDep, SessionDep
from api.schemas.common import responses
from api.schemas.predict import PredictRequest, PredictResponse
from core.services.predictions import PredictSpec, predict

log = logging.getLogger("notetune.api")
router = APIRouter(prefix="/predict", tags=["predict"])


@router.post("", response_model=PredictResponse, responses=responses(404, 503))
def predict_notes(
    body: PredictRequest, session: SessionDep, runtime: RuntimeDep, principal: PredictorDep
) -> dict:
    """Probability of death per note, side by side with the compared models."""
    spec = PredictSpec(
        model_id=body.model_id, texts=body.texts, compare_with=body.compare_with, threshold=body.threshold
    )
    result = predict(session, runtime.settings, runtime.model_cache, spec, api_key_id=principal.key_id)
    session.commit()
    log.info("predicted %d note(s) with model %s", len(spec.texts), spec.model_id)
    return result
