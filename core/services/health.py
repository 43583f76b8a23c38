"""What /healthz reports: the database answers, and a worker has written its heartbeat recently."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from core.db.base import utcnow
from core.db.repositories import WorkerRepository
from core.db.session import Database
from core.settings import Settings


def check_database(database: Database) -> None:
    """Raises whatever the driver raises when the database cannot answer."""
    with database.session() as session:
        session.execute(text("SELECT 1"))


def live_workers(database: Database, settings: Settings) -> int:
    """Workers seen within stale_after_s: a heartbeat row works on every broker."""
    since = utcnow() - timedelta(seconds=settings.stale_after_s)
    with database.session() as session:
        return len(WorkerRepository(session).live(since))
