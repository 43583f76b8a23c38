"""The deletion journal of stored files, and which data files rows still need (for the sweeper)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, exists, func, literal, or_, select
from sqlalchemy.orm import Session

from core.db.base import UTCDateTime
from core.db.models import (
    Dataset,
    Evaluation,
    FileKind,
    Job,
    Model,
    PendingFileDeletion,
)
from core.db.repositories.base import ACTIVE


@dataclass
class StoredFileRepository:
    """Files named by rows, across organisations, and the journal of files still to remove: the
    sweeper's and the retention's view (it acts on every organisation's rows)."""

    session: Session

    def named_data_paths(self) -> set[str]:
        """Data files some row still needs: live dataset files and evaluation arrays."""
        datasets = select(Dataset.path).where(Dataset.file_deleted_at.is_(None))
        evaluations = select(Evaluation.arrays_path).where(Evaluation.deleted_at.is_(None))
        return set(self.session.scalars(datasets).all()) | set(self.session.scalars(evaluations).all())

    def named_model_paths(self) -> set[str]:
        """Store keys of live models (every organisation's)."""
        return set(self.session.scalars(select(Model.path).where(Model.deleted_at.is_(None))).all())

    def journal(self, kind: FileKind, paths: Sequence[str], now: datetime) -> None:
        self.session.add_all([PendingFileDeletion(kind=kind, path=path, created_at=now) for path in paths])
        self.session.flush()

    def pending(self, limit: int = 1000) -> Sequence[PendingFileDeletion]:
        return self.session.scalars(
            select(PendingFileDeletion).order_by(PendingFileDeletion.id).limit(limit)
        ).all()

    def done(self, entry_ids: Sequence[int]) -> None:
        if entry_ids:
            self.session.execute(
                delete(PendingFileDeletion).where(PendingFileDeletion.id.in_(list(entry_ids)))
            )

    def datasets_past_retention(self, used_before: datetime, now: datetime) -> list[tuple[str, str]]:
        """(organisation id, dataset id) of live dataset files last used before `used_before`: no job
        reads them now, and the last job that did (or the upload, if none did) ended before it."""
        uses = (
            select(Job.finished_at)
            .where(or_(Job.train_dataset_id == Dataset.id, Job.test_dataset_id == Dataset.id))
            .correlate(Dataset)
        )
        active = exists(uses.where(Job.status.in_(ACTIVE)))
        last_finished = uses.with_only_columns(func.max(Job.finished_at)).scalar_subquery()
        last_used = func.coalesce(last_finished, Dataset.created_at)
        query = select(Dataset.organisation_id, Dataset.id).where(
            Dataset.file_deleted_at.is_(None), ~active, last_used < literal(used_before, UTCDateTime())
        )
        return [(row[0], row[1]) for row in self.session.execute(query.order_by(Dataset.id)).all()]
