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
    kept_models: list[str] = Field(
        default_factory=list,
        description=(
            "Models learnt from a deleted dataset's notes (trained on it, and the models fine-tuned from "
            "those) that stay because delete_models was not asked for. Their weights are statistics of "
            "the notes; no text of the notes is stored in them, except in a TF-IDF baseline saved before "
            "format 2 (its vocabulary holds n-grams of the notes): delete_models=true removes them all"
        ),
    )
