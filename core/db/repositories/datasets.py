"""An organisation's uploaded datasets."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, literal, or_, select, update

from core.db.base import UTCDateTime
from core.db.models import (
    Dataset,
    Job,
    JobStatus,
    Model,
)
from core.db.repositories.base import ACTIVE, OwnedRepository, Page, page_of


class DatasetRepository(OwnedRepository):
    row_type = Dataset

    def by_sha256(self, sha256: str) -> Dataset | None:
        return self.session.scalar(self._owned(select(Dataset).where(Dataset.sha256 == sha256)))

    def stored_bytes(self) -> int:
        """Bytes of the notes files the organisation keeps: live datasets whose file is still there."""
        query = self._owned(select(func.coalesce(func.sum(Dataset.size_bytes), 0))).where(
            Dataset.deleted_at.is_(None), Dataset.file_deleted_at.is_(None)
        )
        return int(self.session.scalar(query) or 0)

    def by_path(self, path: str) -> Dataset | None:
        return self.session.scalar(self._owned(select(Dataset).where(Dataset.path == path)))

    def list(self, offset: int, limit: int) -> Page[Dataset]:
        query = self._owned(select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id))
        return page_of(self.session, query, offset, limit)

    def model_ids_trained_on(self, dataset_id: str) -> list[str]:
        query = select(Model.id).where(
            Model.train_dataset_id == dataset_id,
            Model.organisation_id == self.organisation_id,
            Model.deleted_at.is_(None),
        )
        return list(self.session.scalars(query.order_by(Model.id)).all())

    def usage(self, dataset_ids: Sequence[str]) -> dict[str, tuple[bool, datetime | None]]:
        """For each dataset a job read: (whether a queued or running job reads it now, when the last
        job that read it finished)."""
        if not dataset_ids:
            return {}
        wanted = list(dataset_ids)
        query = select(Job.train_dataset_id, Job.test_dataset_id, Job.status, Job.finished_at).where(
            Job.organisation_id == self.organisation_id,
            or_(Job.train_dataset_id.in_(wanted), Job.test_dataset_id.in_(wanted)),
        )
        usage: dict[str, tuple[bool, datetime | None]] = {}
        for train_id, test_id, status, finished_at in self.session.execute(query).all():
            for dataset_id in {train_id, test_id} & set(wanted):
                active, last = usage.get(dataset_id, (False, None))
                active = active or JobStatus(status) in ACTIVE
                last = max(filter(None, (last, finished_at)), default=None)
                usage[dataset_id] = (active, last)
        return usage

    def set_deleted(self, dataset_ids: Sequence[str], now: datetime) -> list[str]:
        """Tombstones: the content goes (the file name may name a patient or a ward), the id stays."""
        return self._set_deleted(
            dataset_ids,
            now,
            file_deleted_at=func.coalesce(Dataset.file_deleted_at, literal(now, UTCDateTime())),
            name="",
            sha256=None,
            size_bytes=0,
            rows=0,
            class_counts={},
            duplicates=0,
            truncated_at_max_length=0,
            summary={},
        )

    def set_file_deleted(self, dataset_id: str, now: datetime) -> bool:
        result = self.session.execute(
            self._owned(update(Dataset))
            .where(Dataset.id == dataset_id, Dataset.file_deleted_at.is_(None))
            .values(file_deleted_at=now)
        )
        return result.rowcount == 1
