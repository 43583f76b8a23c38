from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import PublicBaseModel, ReadModel


class DatasetReference(BaseModel):
    id: str
    deleted_at: datetime | None = Field(default=None, description="Set when the dataset was deleted")


class LineageEntry(BaseModel):
    kind: Literal["model", "base_model"]
    id: str | None
    method: str | None = None
    stage: int | None = None
    name: str | None = None
    deleted_at: datetime | None = Field(default=None, description="Set for a deleted ancestor (a tombstone)")
    train_dataset: DatasetReference | None = None


class ModelSummary(ReadModel):
    id: str
    name: str | None
    job_id: str
    parent_id: str | None
    method: str
    stage: int
    base_model: PublicBaseModel
    threshold: float
    created_at: datetime


class ModelRead(ModelSummary):
    train_dataset_id: str | None
    temperature: float | None
    hyperparameters: dict[str, Any]
    data_summary: dict[str, Any]
    metrics: dict[str, Any]
    lineage: list[LineageEntry]
    loaded: bool = Field(description="Whether the API process has this model loaded for /predict now")
