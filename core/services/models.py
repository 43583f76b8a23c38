"""Trained models of an organisation: lookup, listing, lineage (with tombstones), and the service's
base model."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.db.models import Model
from core.db.repositories import DatasetRepository, ModelRepository, Page
from core.errors import NotFound
from core.settings import Settings
from core.storage import artifact_store

# How the MiniLM packaged with the service is shown: its path is inside the virtual environment.
PACKAGED_BASE_MODEL = "minilm-l6 (packaged)"


@cache
def _packaged_path() -> str:
    from ml.config import default_base_model

    return default_base_model()


def public_base_model(name: str) -> str:
    """A base model as responses show it: the packaged one by its public name (also inside a longer
    text, such as an error), any other by the name it was configured with (a hub name)."""
    return name.replace(_packaged_path(), PACKAGED_BASE_MODEL) if _packaged_path() in name else name


def without_server_paths(value: Any) -> Any:
    """public_base_model over every string of a JSON value (error details)."""
    if isinstance(value, str):
        return public_base_model(value)
    if isinstance(value, dict):
        return {key: without_server_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_server_paths(item) for item in value]
    return value


def requested_base_model(settings: Settings, requested: str) -> str:
    """A request's base_model: the public name of an allowed base model stands for that model."""
    for name in allowed_base_models(settings):
        if public_base_model(name) == requested:
            return name
    return requested


def configured_base_model(settings: Settings) -> str:
    """NOTETUNE_BASE_MODEL, or else the MiniLM packaged with the service."""
    from ml.config import default_base_model

    return settings.base_model or default_base_model()


def allowed_base_models(settings: Settings) -> list[str]:
    """The names a request may pass as `base_model`: the configured one first."""
    return [configured_base_model(settings), *settings.allowed_base_models]


def get_model(session: Session, model_id: str, *, organisation_id: str) -> Model:
    model = ModelRepository(session, organisation_id).get(model_id)
    if model is None:
        raise NotFound.for_id("model", model_id)
    return model


def list_models(session: Session, offset: int, limit: int, *, organisation_id: str) -> Page[Model]:
    return ModelRepository(session, organisation_id).list(offset, limit)


def model_directory(settings: Settings, model: Model) -> Path:
    """A local directory holding the model's files (fetched into this host's cache if need be):
    ObjectMissing, IntegrityFailure or StoreUnavailable when they cannot be had."""
    return artifact_store(settings).model_dir(model.path)


def lineage(session: Session, model: Model) -> list[dict[str, Any]]:
    """This model, its ancestors, then the base model it all started from. A deleted ancestor or
    training dataset is there as its tombstone: its id and when it was deleted."""
    chain = [model, *ModelRepository(session, model.organisation_id).lineage(model)]
    datasets = DatasetRepository(session, model.organisation_id)
    dataset_ids = [item.train_dataset_id for item in chain if item.train_dataset_id]
    deleted = datasets.tombstones(dataset_ids)
    entries: list[dict[str, Any]] = [
        {
            "kind": "model",
            "id": item.id,
            "method": item.method,
            "stage": item.stage,
            "name": item.name,
            "deleted_at": item.deleted_at,
            "train_dataset": _dataset_reference(item.train_dataset_id, deleted),
        }
        for item in chain
    ]
    entries.append({"kind": "base_model", "id": None, "name": public_base_model(chain[-1].base_model)})
    return entries


def _dataset_reference(dataset_id: str | None, deleted: dict[str, Any]) -> dict[str, Any] | None:
    if dataset_id is None:
        return None
    return {"id": dataset_id, "deleted_at": deleted.get(dataset_id)}
