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
            "Models trained on a deleted dataset. They stay (results, not notes), but each stores a TF-IDF "
            "baseline whose vocabulary holds word and character n-grams of those notes: delete them too "
            "to remove every trace of the notes"
        ),
    )
