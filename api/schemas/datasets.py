from __future__ import annotations

from datetime import datetime

from pydantic import Field

from api.schemas.common import ReadModel
from ml.vocabulary import DEFAULT_MAX_LENGTH


class DatasetRead(ReadModel):
    id: str
    name: str
    sha256: str
    size_bytes: int
    rows: int
    class_counts: dict[str, int] = Field(examples=[{"0": 780, "1": 220}])
    duplicates: int
    truncated_at_max_length: int = Field(
        description=(
            "Notes longer than the service's token limit (NOTETUNE_DATASET_MAX_LENGTH, "
            f"default {DEFAULT_MAX_LENGTH} tokens)"
        )
    )
    created_at: datetime
    file_deleted_at: datetime | None = Field(
        default=None, description="When the notes file was removed (retention); the summary stays"
    )
    retained_until: datetime | None = Field(
        default=None,
        description=(
            "When the notes file is due to be removed (NOTETUNE_DATASET_RETENTION_DAYS after the last job "
            "that read it); null when retention is off, the file is gone, or a job reads it now"
        ),
    )
