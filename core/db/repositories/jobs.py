"""Jobs: an organisation's view (submit, list, cancel), the state machine a worker drives by job id,
their events, and the counts `/metrics` reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, literal, or_, select, update
from sqlalchemy.orm import Session, aliased

from core.db.base import UTCDateTime, db_now, utcnow
from core.db.models import (
    Job,
    JobEvent,
    JobKind,
    JobStatus,
    Model,
)
from core.db.repositories.base import ACTIVE, OwnedRepository, Page, page_of


class JobRepository(OwnedRepository):
    """A caller's view of its organisation's jobs (the worker's state machine is JobRunRepository)."""

    row_type = Job

    def refreshed(self, job_id: str) -> Job | None:
        return self.session.scalar(
            self._owned(select(Job).where(Job.id == job_id)).execution_options(populate_existing=True)
        )

    def by_idempotency_key(self, api_key_id: str | None, idempotency_key: str) -> Job | None:
        return self.session.scalar(
            self._owned(select(Job)).where(
                Job.api_key_id == api_key_id, Job.idempotency_key == idempotency_key
            )
        )

    def by_output_model_id(self, model_id: str) -> Job | None:
        return self.session.scalar(self._owned(select(Job)).where(Job.output_model_id == model_id))

    def list(self, *, status: JobStatus | None, kind: JobKind | None, offset: int, limit: int) -> Page[Job]:
        query = self._owned(select(Job)).order_by(Job.created_at.desc(), Job.id)
        if status is not None:
            query = query.where(Job.status == status)
        if kind is not None:
            query = query.where(Job.kind == kind)
        return page_of(self.session, query, offset, limit)

    def events(self, job_id: str, offset: int, limit: int) -> Page[JobEvent]:
        query = self._owned(select(JobEvent).join(Job, Job.id == JobEvent.job_id))
        return page_of(
            self.session, query.where(JobEvent.job_id == job_id).order_by(JobEvent.id), offset, limit
        )

    def cancel(self, job_id: str, now: datetime) -> JobStatus | None:
        """As JobRunRepository.cancel, for this organisation's job only."""
        result = self.session.execute(
            self._owned(update(Job))
            .where(Job.id == job_id, Job.status.in_(ACTIVE))
            .values(**cancel_values(now))
        )
        if result.rowcount != 1:
            return None
        status = self.session.scalar(self._owned(select(Job.status)).where(Job.id == job_id))
        return JobStatus(status) if status is not None else None

    def forget_words(self, *, model_ids: Sequence[str] = (), job_ids: Sequence[str] = ()) -> None:
        """What a person typed that went with a deleted model or evaluation, kept on the job that made
        it: the job's name and an evaluation's subgroup column names (the rest is the job's record)."""
        query = self._owned(select(Job)).where(
            or_(Job.output_model_id.in_(list(model_ids)), Job.id.in_(list(job_ids)))
        )
        for job in self.session.scalars(query).all():
            job.name = None
            if job.evaluation_options and "subgroup_columns" in job.evaluation_options:
                job.evaluation_options = {
                    key: value for key, value in job.evaluation_options.items() if key != "subgroup_columns"
                }
        self.session.flush()

    def count_active(self) -> int:
        query = self._owned(select(func.count()).select_from(Job)).where(Job.status.in_(ACTIVE))
        return int(self.session.scalar(query) or 0)

    def active_reading(self, *, dataset_ids: Sequence[str] = (), model_ids: Sequence[str] = ()) -> list[Job]:
        """Queued or running jobs that read one of these datasets or models: a fine-tune's training
        data or parent, an evaluation's test data or compared models."""
        query = self._owned(select(Job)).where(Job.status.in_(ACTIVE)).order_by(Job.created_at, Job.id)
        datasets, models = set(dataset_ids), set(model_ids)
        return [
            job
            for job in self.session.scalars(query).all()
            if {job.train_dataset_id, job.test_dataset_id} & datasets
            or ({job.parent_model_id} | {entry.get("model_id") for entry in job.evaluation_models or []})
            & models
        ]


def cancel_values(now: datetime) -> dict[str, Any]:
    """A queued job becomes cancelled, a running one is flagged (see JobRunRepository.cancel)."""
    is_queued = Job.status == JobStatus.queued
    return {
        "cancel_requested": True,
        "status": case((is_queued, JobStatus.cancelled.value), else_=Job.status),
        "finished_at": case((is_queued, literal(now, UTCDateTime())), else_=Job.finished_at),
        "updated_at": now,
    }


@dataclass
class JobRunRepository:
    """The job state machine, by job id: a worker holds a job id, the reaper and the sweeper act on
    every organisation's jobs. Nothing here answers a caller of the API."""

    session: Session

    def refreshed(self, job_id: str) -> Job | None:
        return self.session.get(Job, job_id, populate_existing=True)

    def owners_of_model_ids(self, model_ids: Sequence[str]) -> dict[str, tuple[JobStatus, int, str | None]]:
        """For each output model id that a job names: (job status, attempt, the store key its model row
        names, None without a row)."""
        if not model_ids:
            return {}
        rows = self.session.execute(
            select(Job.output_model_id, Job.status, Job.attempt, Model.path)
            .outerjoin(Model, Model.id == Job.output_model_id)
            .where(Job.output_model_id.in_(list(model_ids)))
        ).all()
        return {row[0]: (JobStatus(row[1]), int(row[2]), row[3]) for row in rows}

    def fairest_queued(self, limit: int = 8) -> list[str]:
        """Queued jobs in the order organisations take turns: first the organisations with the fewest
        jobs running, then the one served longest ago (never served first), then each one's oldest
        job. One organisation's backlog of many jobs therefore waits its turn behind another's single
        job instead of holding every worker."""
        other = aliased(Job)
        running = (
            select(func.count())
            .where(other.organisation_id == Job.organisation_id, other.status == JobStatus.running)
            .scalar_subquery()
        )
        last_served = (
            select(func.max(other.started_at))
            .where(other.organisation_id == Job.organisation_id)
            .scalar_subquery()
        )
        query = (
            select(Job.id)
            .where(Job.status == JobStatus.queued, Job.cancel_requested.is_(False))
            .order_by(running, case((last_served.is_(None), 0), else_=1), last_served, Job.created_at, Job.id)
            .limit(limit)
        )
        return list(self.session.scalars(query).all())

    def claim(self, job_id: str, worker: str, now: datetime, progress: dict[str, Any]) -> bool:
        """Compare-and-set queued -> running: of two deliveries of one message, only one wins."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued, Job.cancel_requested.is_(False))
            .values(
                status=JobStatus.running,
                attempt=Job.attempt + 1,
                worker=worker,
                heartbeat_at=db_now(),
                started_at=now,
                progress=progress,
                updated_at=now,
            )
        )
        return result.rowcount == 1

    def cancel(self, job_id: str, now: datetime) -> JobStatus | None:
        """Cancel in one statement: a queued job becomes cancelled, a running one is flagged.

        One UPDATE, so a job that moves between queued and running meanwhile (a claim, a re-queue)
        is still cancelled: the statement sees the row as it is when it writes. Returns the status the
        job has afterwards, or None if it had already finished."""
        result = self.session.execute(
            update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE)).values(**cancel_values(now))
        )
        if result.rowcount != 1:
            return None
        state = self.run_state(job_id)
        return state[0] if state is not None else None

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

    def heartbeat(self, job_id: str, attempt: int) -> bool:
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running)
            .values(heartbeat_at=db_now())
        )
        return result.rowcount == 1

    def set_progress(self, job_id: str, attempt: int, progress: dict[str, Any], now: datetime) -> bool:
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running)
            .values(progress=progress, heartbeat_at=db_now(), updated_at=now)
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

    def stale_running(self, silent_for_s: float) -> Sequence[Job]:
        """Running jobs with no heartbeat for `silent_for_s`, by the database's clock."""
        return self.session.scalars(
            select(Job)
            .where(Job.status == JobStatus.running, Job.heartbeat_at < db_now(silent_for_s))
            .order_by(Job.id)
        ).all()

    def queued_with_cancel_flag(self) -> Sequence[Job]:
        """Queued jobs that a cancel flagged but nothing ended (left by an older re-queue): no claim
        will ever take them, so they are closed as cancelled."""
        return self.session.scalars(
            select(Job).where(Job.status == JobStatus.queued, Job.cancel_requested.is_(True)).order_by(Job.id)
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

    def requeue(self, job_id: str, attempt: int, now: datetime) -> JobStatus | None:
        """running -> queued for the attempt that held the claim; a job that a cancel flagged, even one
        that arrives while this runs, becomes cancelled instead (the flag is read as the row is written).
        Returns the new status, or None if the attempt no longer held the job."""
        flagged = Job.cancel_requested.is_(True)
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running)
            .values(
                status=case((flagged, JobStatus.cancelled.value), else_=JobStatus.queued.value),
                finished_at=case((flagged, literal(now, UTCDateTime())), else_=None),
                worker=None,
                heartbeat_at=None,
                updated_at=now,
            )
        )
        if result.rowcount != 1:
            return None
        state = self.run_state(job_id)
        return state[0] if state is not None else None


@dataclass
class JobEventRepository:
    session: Session

    def add(self, job_id: str, kind: str, *, attempt: int = 0, data: dict[str, Any] | None = None) -> None:
        self.session.add(
            JobEvent(job_id=job_id, kind=kind, attempt=attempt, data=data or {}, created_at=utcnow())
        )


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
