from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DeletionRead(BaseModel):
    """What a deletion removed: ids of the caller's own organisation."""

    model_config = ConfigDict(from_attributes=True)

    datasets: list[str] = Field(description="Datasets deleted (their notes files removed)")
    models: list[str] = Field(
        description="Models deleted: the one asked for and, with cascade, its descendants"
    )
    evaluations: list[str] = Field(description="Evaluations deleted")
    cancelled_jobs: list[str] = Field(
        description="Queued or running jobs cancelled because they read a deleted object"
    )
