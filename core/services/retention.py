"""Retention of uploaded notes: a dataset's file is removed a set number of days after the last job
that read it finished (after its upload, if none did), while no job is queued or running on it.
The dataset row, the models trained on it and every metric stay; the row reports `file_deleted_at`,
and until then `retained_until`. The worker's sweeper applies it (worker/sweeper.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import Dataset, FileKind
from core.db.repositories import DatasetRepository, JobRepository, StoredFileRepository
from core.settings import Settings


def retention_days(settings: Settings) -> int | None:
    """NOTETUNE_DATASET_RETENTION_DAYS, or None: notes files are kept until deleted."""
    return settings.dataset_retention_days


def apply_retention(session: Session, days: int | None, now: datetime | None = None) -> list[str]:
    """Journal the removal of every notes file past retention (the caller commits, then removes the
    files: core.services.deletion.commit_and_remove_files); returns the datasets' ids."""
    if days is None:
        return []
    now = now or utcnow()
    expired = []
    for organisation_id, dataset_id in StoredFileRepository(session).datasets_past_retention(
        now - timedelta(days=days), now
    ):
        datasets = DatasetRepository(session, organisation_id)
        dataset = datasets.get_for_update(dataset_id)
        # Checked again under the row lock: a job created meanwhile holds the row until it commits.
        if dataset is None or JobRepository(session, organisation_id).active_reading(
            dataset_ids=[dataset_id]
        ):
            continue
        if datasets.set_file_deleted(dataset_id, now):
            StoredFileRepository(session).journal(FileKind.data, [dataset.path], now)
            expired.append(dataset_id)
    return expired


def retained_until(
    session: Session, settings: Settings, datasets: Sequence[Dataset], *, organisation_id: str
) -> dict[str, datetime | None]:
    """When each dataset's file is due to go: None when retention is off, the file is gone already,
    or a job is reading it now."""
    days = retention_days(settings)
    if days is None:
        return dict.fromkeys((dataset.id for dataset in datasets), None)
    usage = DatasetRepository(session, organisation_id).usage([dataset.id for dataset in datasets])
    due: dict[str, datetime | None] = {}
    for dataset in datasets:
        in_use, last_finished = usage.get(dataset.id, (False, None))
        if dataset.file_deleted_at is not None or in_use:
            due[dataset.id] = None
        else:
            due[dataset.id] = max(filter(None, (last_finished, dataset.created_at))) + timedelta(days=days)
    return due
