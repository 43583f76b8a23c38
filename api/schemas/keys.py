from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import ReadModel


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"role": "trainer", "name": "lab-1"}]}
    )

    role: Literal["admin", "trainer", "predictor"]
    name: str = Field(default="", max_length=200)


class KeyRead(ReadModel):
    id: str
    name: str
    role: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyRead):
    key: str = Field(description="The API key itself: shown once, store it now.")
