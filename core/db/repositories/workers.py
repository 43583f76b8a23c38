"""Worker heartbeats (for /healthz and the reaper)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import (
    WorkerHeartbeat,
)


@dataclass
class WorkerRepository:
    session: Session

    def beat(self, name: str, hostname: str, pid: int, now: datetime) -> None:
        row = self.session.get(WorkerHeartbeat, name)
        if row is None:
            self.session.add(
                WorkerHeartbeat(name=name, hostname=hostname, pid=pid, started_at=now, seen_at=now)
            )
        else:
            row.seen_at = now

    def remove(self, name: str) -> None:
        row = self.session.get(WorkerHeartbeat, name)
        if row is not None:
            self.session.delete(row)

    def live(self, since: datetime) -> Sequence[WorkerHeartbeat]:
        return self.session.scalars(select(WorkerHeartbeat).where(WorkerHeartbeat.seen_at >= since)).all()
