from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import (
    CascadeQuery,
    ModelId,
    PageDep,
    PredictorDep,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    TrainerDep,
)
from api.schemas.common import ListResponse, responses
from api.schemas.deletion import DeletionRead
from api.schemas.models import ModelRead, ModelSummary
from core.db.models import Model
from core.services import deletion as deletion_service
from core.services import models as models_service

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=ListResponse[ModelSummary], responses=responses())
def list_models(session: SessionDep, principal: PredictorDep, page: PageDep) -> ListResponse[ModelSummary]:
    """List trained models, newest first."""
    models = models_service.list_models(
        session, page.offset, page.limit, organisation_id=principal.organisation_id
    )
    return ListResponse.of([ModelSummary.model_validate(model) for model in models.items], models.count, page)


@router.get("/{model_id}", response_model=ModelRead, responses=responses(404))
def read_model(
    model_id: ModelId, session: SessionDep, runtime: RuntimeDep, principal: PredictorDep
) -> ModelRead:
    """A model: method, stage, base model, hyperparameters, data, metrics, lineage, and whether it is
    loaded for serving."""
    model = models_service.get_model(session, model_id, organisation_id=principal.organisation_id)
    return ModelRead.model_validate(
        {
            **ModelSummary.model_validate(model).model_dump(),
            **_details(model),
            "lineage": models_service.lineage(session, model),
            "loaded": model.id in runtime.predictor.loaded_models(),
        }
    )


@router.delete("/{model_id}", response_model=DeletionRead, responses=responses(404, 409))
def delete_model(
    model_id: ModelId,
    session: SessionDep,
    settings: SettingsDep,
    principal: TrainerDep,
    cascade: CascadeQuery = False,
) -> DeletionRead:
    """Delete a model and its files; 409 while models were fine-tuned from it, unless cascade."""
    deletion = deletion_service.delete_model(
        session, model_id, organisation_id=principal.organisation_id, cascade=cascade
    )
    deletion_service.commit_and_remove_files(session, settings)
    return DeletionRead.model_validate(deletion)


def _details(model: Model) -> dict[str, Any]:
    return {
        "train_dataset_id": model.train_dataset_id,
        "temperature": model.temperature,
        "hyperparameters": model.hyperparameters,
        "data_summary": model.data_summary,
        "metrics": model.metrics,
    }
