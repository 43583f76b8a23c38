"""An organisation's evaluation reports."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from core.db.models import (
    Evaluation,
)
from core.db.repositories.base import OwnedRepository


class EvaluationRepository(OwnedRepository):
    row_type = Evaluation

    def set_deleted(self, evaluation_ids: Sequence[str], now: datetime) -> list[str]:
        return self._set_deleted(evaluation_ids, now, report={})
