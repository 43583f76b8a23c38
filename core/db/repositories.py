"""All SQL lives here. Repositories take a Session and never commit: the caller owns the transaction.

Rows an organisation owns are read and written through an `OwnedRepository`, made for one
organisation: its `_owned` adds that organisation (and leaves tombstones out) to every statement,
so another organisation's row is exactly as absent as a missing one. The few repositories without
an organisation serve the machinery that acts by id or across organisations: the job state machine
(a worker holds a job id), authentication (before the organisation is known), the sweeper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import case, delete, exists, func, literal, or_, select, update
from sqlalchemy.orm import Session, aliased

from core.db.base import UTCDateTime, db_now, utcnow
from core.db.models import (
    ApiKey,
    Dataset,
    Evaluation,
    FileKind,
    Job,
    JobEvent,
    JobKind,
    JobStatus,
    Model,
    Organisation,
    PendingFileDeletion,
    PredictionAudit,
    Role,
    WorkerHeartbeat,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    count: int


ACTIVE = (JobStatus.queued, JobStatus.running)


def _page(session: Session, query: Any, offset: int, limit: int) -> Page[Any]:
    count = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    items = session.scalars(query.offset(offset).limit(limit)).all()
    return Page(items=items, count=count)


class OwnedRepository:
    """One organisation's rows of `row_type`; every statement goes through `_owned`."""

    row_type: ClassVar[Any]

    def __init__(self, session: Session, organisation_id: str) -> None:
        if not organisation_id:
            raise ValueError("an owned repository needs the organisation it acts for")
        self.session, self.organisation_id = session, organisation_id

    def _owned(self, statement: Any, *, deleted: bool | None = False) -> Any:
        """The statement limited to this organisation's rows; live ones only unless `deleted` is
        None (live and tombstones) or True (tombstones only)."""
        statement = statement.where(self.row_type.organisation_id == self.organisation_id)
        if deleted is not None and hasattr(self.row_type, "deleted_at"):
            column = self.row_type.deleted_at
            statement = statement.where(column.is_not(None) if deleted else column.is_(None))
        return statement

    def add(self, row: Any) -> Any:
        row.organisation_id = self.organisation_id
        self.session.add(row)
        self.session.flush()
        return row

    def get(self, row_id: str, *, lock: bool = False) -> Any:
        """A live row; with `lock`, held until the transaction ends (FOR SHARE on PostgreSQL), so a
        concurrent deletion waits for it, and a request that uses the row waits for a deletion."""
        query = self._owned(select(self.row_type).where(self.row_type.id == row_id))
        if lock:
            query = query.with_for_update(read=True)
        return self.session.scalar(query)

    def get_for_update(self, row_id: str) -> Any:
        query = self._owned(select(self.row_type).where(self.row_type.id == row_id)).with_for_update()
        return self.session.scalar(query.execution_options(populate_existing=True))

    def all_for_update(self, row_ids: Sequence[str]) -> list[Any]:
        """The live rows among these ids, locked until the transaction ends, in id order (so two
        deletions lock in one order and cannot deadlock)."""
        if not row_ids:
            return []
        query = self._owned(select(self.row_type).where(self.row_type.id.in_(list(row_ids))))
        return list(self.session.scalars(query.order_by(self.row_type.id).with_for_update()).all())

    def tombstone(self, row_id: str) -> Any:
        return self.session.scalar(
            self._owned(select(self.row_type).where(self.row_type.id == row_id), deleted=True)
        )

    def tombstones(self, row_ids: Sequence[str]) -> dict[str, datetime]:
        """deleted_at of each of these ids that is one of this organisation's tombstones."""
        if not row_ids:
            return {}
        query = self._owned(
            select(self.row_type.id, self.row_type.deleted_at).where(self.row_type.id.in_(list(row_ids))),
            deleted=True,
        )
        return {row_id: deleted_at for row_id, deleted_at in self.session.execute(query).all()}

    def _set_deleted(self, row_ids: Sequence[str], now: datetime, **cleared: Any) -> list[str]:
        """Tombstone the live rows among these ids; returns the ids it turned into tombstones."""
        if not row_ids:
            return []
        live = self._owned(select(self.row_type.id).where(self.row_type.id.in_(list(row_ids))))
        ids = list(self.session.scalars(live).all())
        if ids:
            self.session.execute(
                self._owned(update(self.row_type).where(self.row_type.id.in_(ids))).values(
                    deleted_at=now, **cleared
                )
            )
        return ids


@dataclass
class OrganisationRepository:
    session: Session

    def add(self, organisation: Organisation) -> Organisation:
        self.session.add(organisation)
        self.session.flush()
        return organisation

    def by_name(self, name: str) -> Organisation | None:
        return self.session.scalar(select(Organisation).where(Organisation.name == name))

    def get(self, organisation_id: str) -> Organisation | None:
        return self.session.get(Organisation, organisation_id)


@dataclass
class KeyLookup:
    """Keys across organisations: authentication finds a key (and so its organisation) by its hash."""

    session: Session

    def active_by_hash(self, key_hash: str) -> ApiKey | None:
        return self.session.scalar(
            select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )

    def count_active(self) -> int:
        return self.session.scalar(select(func.count()).where(ApiKey.revoked_at.is_(None))) or 0


class ApiKeyRepository(OwnedRepository):
    row_type = ApiKey

    def list(self, offset: int, limit: int) -> Page[ApiKey]:
        return _page(
            self.session, self._owned(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)), offset, limit
        )

    def lock_active_admins(self) -> list[str]:
        """Ids of the organisation's active admin keys, row-locked until the transaction ends
        (PostgreSQL), so two concurrent revocations cannot both see another admin left."""
        query = (
            self._owned(select(ApiKey.id))
            .where(ApiKey.role == Role.admin, ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.id)
            .with_for_update()
        )
        return list(self.session.scalars(query).all())

    def revoke(self, key_id: str, now: datetime, *, keep_one_admin: bool = True) -> bool:
        """Revoke an active key; with keep_one_admin, never the organisation's last active admin key.

        The guard is part of the UPDATE itself, so it holds where row locks do not (SQLite ignores
        FOR UPDATE, and its driver reads outside a transaction): the database's single writer checks
        and revokes in one step."""
        conditions = [ApiKey.id == key_id, ApiKey.revoked_at.is_(None)]
        if keep_one_admin:
            other = aliased(ApiKey)
            another_admin = exists().where(
                other.role == Role.admin,
                other.revoked_at.is_(None),
                other.id != key_id,
                other.organisation_id == ApiKey.organisation_id,
            )
            conditions.append(or_(ApiKey.role != Role.admin, another_admin))
        result = self.session.execute(self._owned(update(ApiKey).where(*conditions)).values(revoked_at=now))
        return result.rowcount == 1

    def active(self, key_id: str) -> ApiKey | None:
        return self.session.scalar(
            self._owned(select(ApiKey))
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .execution_options(populate_existing=True)
        )


class DatasetRepository(OwnedRepository):
    row_type = Dataset

    def by_sha256(self, sha256: str) -> Dataset | None:
        return self.session.scalar(self._owned(select(Dataset).where(Dataset.sha256 == sha256)))

    def by_path(self, path: str) -> Dataset | None:
        return self.session.scalar(self._owned(select(Dataset).where(Dataset.path == path)))

    def list(self, offset: int, limit: int) -> Page[Dataset]:
        query = self._owned(select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id))
        return _page(self.session, query, offset, limit)

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
        return _page(self.session, query, offset, limit)

    def events(self, job_id: str, offset: int, limit: int) -> Page[JobEvent]:
        query = self._owned(select(JobEvent).join(Job, Job.id == JobEvent.job_id))
        return _page(
            self.session, query.where(JobEvent.job_id == job_id).order_by(JobEvent.id), offset, limit
        )

    def cancel(self, job_id: str, now: datetime) -> JobStatus | None:
        """As JobRunRepository.cancel, for this organisation's job only."""
        result = self.session.execute(
            self._owned(update(Job))
            .where(Job.id == job_id, Job.status.in_(ACTIVE))
            .values(**_cancel_values(now))
        )
        if result.rowcount != 1:
            return None
        status = self.session.scalar(self._owned(select(Job.status)).where(Job.id == job_id))
        return JobStatus(status) if status is not None else None

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


def _cancel_values(now: datetime) -> dict[str, Any]:
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
            update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE)).values(**_cancel_values(now))
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


class ModelRepository(OwnedRepository):
    row_type = Model

    def list(self, offset: int, limit: int) -> Page[Model]:
        query = self._owned(select(Model)).order_by(Model.created_at.desc(), Model.id)
        return _page(self.session, query, offset, limit)

    def lineage(self, model: Model, max_depth: int = 100) -> list[Model]:
        """The model's ancestors, nearest first, back to the first fine-tune of the base model;
        a deleted ancestor is there as its tombstone."""
        chain: list[Model] = []
        current = model
        while current.parent_id is not None and len(chain) < max_depth:
            parent = self.session.scalar(
                self._owned(select(Model).where(Model.id == current.parent_id), deleted=None)
            )
            if parent is None:
                break
            chain.append(parent)
            current = parent
        return chain

    def descendants(self, model_ids: Sequence[str]) -> list[str]:
        """The live models fine-tuned from these, their children and so on, nearest first."""
        found: list[str] = []
        frontier = list(model_ids)
        while frontier:
            children = self.session.scalars(
                self._owned(select(Model.id)).where(Model.parent_id.in_(frontier)).order_by(Model.id)
            ).all()
            frontier = [child for child in children if child not in found]
            found.extend(frontier)
        return found

    def set_deleted(self, model_ids: Sequence[str], now: datetime) -> list[str]:
        """Tombstones keep what a lineage shows (method, stage, parent, base model); the rest goes."""
        return self._set_deleted(
            model_ids, now, name=None, hyperparameters={}, data_summary={}, metrics={}, manifest={}
        )


class EvaluationRepository(OwnedRepository):
    row_type = Evaluation

    def set_deleted(self, evaluation_ids: Sequence[str], now: datetime) -> list[str]:
        return self._set_deleted(evaluation_ids, now, report={})


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
