from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import PredictorDep, SessionDep
from api.schemas.common import ListResponse, responses
from api.schemas.models import ModelRead, ModelSummary
from core.db.repositories import ModelRepository
from core.services.models import get_model, lineage

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=ListResponse[ModelSummary], responses=responses())
def list_models(
    session: SessionDep,
    _: PredictorDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ListResponse[ModelSummary]:
    """List trained models, newest first."""
    page = ModelRepository(session).list(offset, limit)
    data = [ModelSummary.model_validate(model) for model in page.items]
    return ListResponse(data=data, count=page.count, offset=offset, limit=limit)


@router.get("/{model_id}", response_model=ModelRead, responses=responses(404))
def read_model(model_id: str, session: SessionDep, _: PredictorDep) -> ModelRead:
    """A model: method, stage, base model, hyperparameters, data, metrics and its lineage."""
    model = get_model(session, model_id)
    return ModelRead.model_validate(
        {
            **ModelSummary.model_validate(model).model_dump(),
            **_details(model),
            "lineage": lineage(session, model),
        }
    )


def _details(model) -> dict:
    return {
        "train_dataset_id": model.train_dataset_id,
        "temperature": model.temperature,
        "hyperparameters": model.hyperparameters,
        "data_summary": model.data_summary,
        "metrics": model.metrics,
    }
