"""All SQL lives here. Repositories take a Session and never commit: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import (
    ApiKey,
    Dataset,
    Evaluation,
    Job,
    JobEvent,
    JobKind,
    JobStatus,
    Model,
    PredictionAudit,
    Role,
    WorkerHeartbeat,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    count: int


def _page(session: Session, query: Any, offset: int, limit: int) -> Page[Any]:
    count = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    items = session.scalars(query.offset(offset).limit(limit)).all()
    return Page(items=items, count=count)


@dataclass
class ApiKeyRepository:
    session: Session

    def add(self, key: ApiKey) -> ApiKey:
        self.session.add(key)
        self.session.flush()
        return key

    def active_by_hash(self, key_hash: str) -> ApiKey | None:
        return self.session.scalar(
            select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )

    def list(self, offset: int, limit: int) -> Page[ApiKey]:
        return _page(self.session, select(ApiKey).order_by(ApiKey.created_at, ApiKey.id), offset, limit)

    def count_active(self) -> int:
        return self.session.scalar(select(func.count()).where(ApiKey.revoked_at.is_(None))) or 0

    def lock_active_admins(self) -> list[str]:
        """Ids of the active admin keys, row-locked until the transaction ends (PostgreSQL), so two
        concurrent revocations cannot both see another admin left."""
        query = (
            select(ApiKey.id)
            .where(ApiKey.role == Role.admin, ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.id)
            .with_for_update()
        )
        return list(self.session.scalars(query).all())

    def revoke(self, key_id: str, now: datetime) -> bool:
        result = self.session.execute(
            update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=now)
        )
        return result.rowcount == 1


@dataclass
class DatasetRepository:
    session: Session

    def add(self, dataset: Dataset) -> Dataset:
        self.session.add(dataset)
        self.session.flush()
        return dataset

    def get(self, dataset_id: str) -> Dataset | None:
        return self.session.get(Dataset, dataset_id)

    def by_sha256(self, sha256: str) -> Dataset | None:
        return self.session.scalar(select(Dataset).where(Dataset.sha256 == sha256))

    def list(self, offset: int, limit: int) -> Page[Dataset]:
        query = select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id)
        return _page(self.session, query, offset, limit)


@dataclass
class JobRepository:
    session: Session

    def add(self, job: Job) -> Job:
        self.session.add(job)
        self.session.flush()
        return job

    def get(self, job_id: str) -> Job | None:
        return self.session.get(Job, job_id)

    def refreshed(self, job_id: str) -> Job | None:
        return self.session.get(Job, job_id, populate_existing=True)

    def by_idempotency_key(self, api_key_id: str | None, idempotency_key: str) -> Job | None:
        return self.session.scalar(
            select(Job).where(Job.api_key_id == api_key_id, Job.idempotency_key == idempotency_key)
        )

    def by_output_model_id(self, model_id: str) -> Job | None:
        return self.session.scalar(select(Job).where(Job.output_model_id == model_id))

    def list(self, *, status: JobStatus | None, kind: JobKind | None, offset: int, limit: int) -> Page[Job]:
        query = select(Job).order_by(Job.created_at.desc(), Job.id)
        if status is not None:
            query = query.where(Job.status == status)
        if kind is not None:
            query = query.where(Job.kind == kind)
        return _page(self.session, query, offset, limit)

    def claim(self, job_id: str, worker: str, now: datetime) -> bool:
        """Compare-and-set queued -> running: of two deliveries of one message, only one wins."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued, Job.cancel_requested.is_(False))
            .values(
                status=JobStatus.running,
                attempt=Job.attempt + 1,
                worker=worker,
                heartbeat_at=now,
                started_at=now,
                progress=None,
                updated_at=now,
            )
        )
        return result.rowcount == 1

    def cancel_if_queued(self, job_id: str, now: datetime) -> bool:
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(status=JobStatus.cancelled, cancel_requested=True, finished_at=now, updated_at=now)
        )
        return result.rowcount == 1

    def fail_if_queued(self, job_id: str, error: str, now: datetime) -> bool:
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(status=JobStatus.failed, error=error, finished_at=now, updated_at=now)
        )
        return result.rowcount == 1

    def request_cancel_if_running(self, job_id: str, now: datetime) -> bool:
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running)
            .values(cancel_requested=True, updated_at=now)
        )
        return result.rowcount == 1

    def heartbeat(self, job_id: str, attempt: int, now: datetime) -> bool:
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running)
            .values(heartbeat_at=now)
        )
        return result.rowcount == 1

    def set_progress(self, job_id: str, attempt: int, progress: dict[str, Any], now: datetime) -> bool:
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running)
            .values(progress=progress, heartbeat_at=now, updated_at=now)
        )
        return result.rowcount == 1

    def run_state(self, job_id: str) -> tuple[JobStatus, int, bool] | None:
        row = self.session.execute(
            select(Job.status, Job.attempt, Job.cancel_requested).where(Job.id == job_id)
        ).one_or_none()
        return (JobStatus(row[0]), int(row[1]), bool(row[2])) if row is not None else None

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        now: datetime,
        *,
        unless_cancel_requested: bool = False,
        **values: Any,
    ) -> bool:
        """running -> a final state, only for the attempt that holds the claim (a reaped run loses it);
        with unless_cancel_requested, also only while nobody has asked to cancel the job."""
        conditions = [Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running]
        if unless_cancel_requested:
            conditions.append(Job.cancel_requested.is_(False))
        result = self.session.execute(
            update(Job).where(*conditions).values(status=status, finished_at=now, updated_at=now, **values)
        )
        return result.rowcount == 1

    def stale_running(self, cutoff: datetime) -> Sequence[Job]:
        return self.session.scalars(
            select(Job).where(Job.status == JobStatus.running, Job.heartbeat_at < cutoff).order_by(Job.id)
        ).all()

    def queued_since_before(self, cutoff: datetime) -> Sequence[Job]:
        return self.session.scalars(
            select(Job).where(Job.status == JobStatus.queued, Job.updated_at < cutoff).order_by(Job.id)
        ).all()

    def touch_if_queued_since_before(self, job_id: str, cutoff: datetime, now: datetime) -> bool:
        """Compare-and-set on updated_at: of several reapers, one re-sends the job per period."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued, Job.updated_at < cutoff)
            .values(updated_at=now)
        )
        return result.rowcount == 1

    def requeue(self, job_id: str, attempt: int, now: datetime) -> bool:
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running)
            .values(status=JobStatus.queued, worker=None, heartbeat_at=None, updated_at=now)
        )
        return result.rowcount == 1


@dataclass
class JobEventRepository:
    session: Session

    def add(self, job_id: str, kind: str, *, attempt: int = 0, data: dict[str, Any] | None = None) -> None:
        self.session.add(
            JobEvent(job_id=job_id, kind=kind, attempt=attempt, data=data or {}, created_at=utcnow())
        )

    def list(self, job_id: str, offset: int, limit: int) -> Page[JobEvent]:
        query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        return _page(self.session, query, offset, limit)


@dataclass
class ModelRepository:
    session: Session

    def add(self, model: Model) -> Model:
        self.session.add(model)
        self.session.flush()
        return model

    def get(self, model_id: str) -> Model | None:
        return self.session.get(Model, model_id)

    def list(self, offset: int, limit: int) -> Page[Model]:
        return _page(self.session, select(Model).order_by(Model.created_at.desc(), Model.id), offset, limit)

    def lineage(self, model: Model, max_depth: int = 100) -> list[Model]:
        """The model's ancestors, nearest first, back to the first fine-tune of the base model."""
        chain: list[Model] = []
        current = model
        while current.parent_id is not None and len(chain) < max_depth:
            parent = self.get(current.parent_id)
            if parent is None:
                break
            chain.append(parent)
            current = parent
        return chain


@dataclass
class EvaluationRepository:
    session: Session

    def add(self, evaluation: Evaluation) -> Evaluation:
        self.session.add(evaluation)
        self.session.flush()
        return evaluation

    def get(self, evaluation_id: str) -> Evaluation | None:
        return self.session.get(Evaluation, evaluation_id)


@dataclass
class PredictionAuditRepository:
    session: Session

    def append(self, rows: list[PredictionAudit]) -> None:
        self.session.add_all(rows)


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


class JobStatisticsRepository:
    """Counts for the operator's metrics: jobs by kind and state, and the run time of finished ones."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def by_kind_and_status(self) -> list[tuple[str, str, int, float]]:
        """(kind, status, jobs, seconds run in total) per kind and state."""
        counts = self.session.execute(
            select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
        ).all()
        seconds: dict[tuple[str, str], float] = {}
        finished = self.session.execute(
            select(Job.kind, Job.status, Job.started_at, Job.finished_at).where(
                Job.started_at.is_not(None), Job.finished_at.is_not(None)
            )
        )
        for kind, status, started, ended in finished:
            key = (str(kind), str(status))
            seconds[key] = seconds.get(key, 0.0) + max(0.0, (ended - started).total_seconds())
        return [(str(k), str(s), int(n), seconds.get((str(k), str(s)), 0.0)) for k, s, n in counts]
