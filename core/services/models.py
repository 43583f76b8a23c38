"""Trained models: lookup and lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.db.models import Model
from core.db.repositories import ModelRepository
from core.errors import NotFound, safe_ref
from core.settings import Settings


def get_model(session: Session, model_id: str) -> Model:
    model = ModelRepository(session).get(model_id)
    if model is None:
        raise NotFound("no model with this id", code="model_not_found", details={"id": safe_ref(model_id)})
    return model


def model_directory(settings: Settings, model: Model) -> Path:
    """Where the model lives: the store root from the settings, the rest from the database row."""
    return settings.models_root / model.path


def lineage(session: Session, model: Model) -> list[dict[str, Any]]:
    """This model, its ancestors, then the base model it all started from."""
    chain = [model, *ModelRepository(session).lineage(model)]
    entries: list[dict[str, Any]] = [
        {"kind": "model", "id": item.id, "method": item.method, "stage": item.stage, "name": item.name}
        for item in chain
    ]
    entries.append({"kind": "base_model", "id": None, "name": chain[-1].base_model})
    return entries
