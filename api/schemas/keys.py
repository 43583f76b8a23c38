from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import ReadModel, Text
from core.db.models import Role


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"role": "trainer", "name": "lab-1"}]}
    )

    role: Role
    name: Text = Field(default="", max_length=200)


class KeyRead(ReadModel):
    id: str
    name: str
    role: Role
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyRead):
    key: str = Field(description="The API key itself: shown once, store it now.")
