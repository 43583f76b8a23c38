"""What the operator's metrics read from the database (api/metrics.py exports them)."""

from __future__ import annotations

from core.db.repositories import JobStatisticsRepository
from core.db.session import Database


def job_statistics(database: Database) -> list[tuple[str, str, int, float]]:
    """(kind, status, jobs, seconds run in total) per job kind and state."""
    with database.session() as session:
        return JobStatisticsRepository(session).by_kind_and_status()
