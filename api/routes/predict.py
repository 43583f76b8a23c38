from __future__ import annotations

from fastapi import APIRouter

from api.deps import BriefPredictorDep, RuntimeDep
from api.schemas.common import responses
from api.schemas.predict import PredictRequest, PredictResponse
from core.services.predictions import PredictSpec, predict

router = APIRouter(prefix="/predict", tags=["predict"])


@router.post(
    "", response_model=PredictResponse, response_model_exclude_none=True, responses=responses(404, 503)
)
async def predict_notes(body: PredictRequest, runtime: RuntimeDep, principal: BriefPredictorDep) -> dict:
    """Probability of death per note, side by side with the compared models."""
    spec = PredictSpec(
        model_id=body.model_id,
        texts=body.texts,
        compare_with=body.compare_with,
        threshold=body.threshold,
        organisation_id=principal.organisation_id,
    )
    return await predict(
        runtime.database,
        runtime.settings,
        runtime.predictor,
        spec,
        api_key_id=principal.key_id,
        rate=runtime.predict_buckets,
        explain=body.explain,
    )
