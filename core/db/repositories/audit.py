"""The append-only audit trail of predictions."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.db.models import (
    PredictionAudit,
)


@dataclass
class PredictionAuditRepository:
    session: Session

    def append(self, rows: list[PredictionAudit]) -> None:
        self.session.add_all(rows)
