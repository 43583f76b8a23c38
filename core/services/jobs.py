"""The job state machine.

    queued --claim--> running --> succeeded | failed | cancelled
    queued --cancel--> cancelled
    queued --its message could not be sent--> failed
    running --stale heartbeat, attempts left--> queued
    running --stale heartbeat, no attempts left--> failed

Every transition is a compare-and-set in JobRepository, so two workers, a late redelivery or a
reaper can never both move the same job. Services flush but never commit: the caller owns that,
except `commit_and_enqueue`, as a job's message may only be sent once its row is committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy.orm import Session

from core.db.base import new_id, utcnow
from core.db.models import Job, JobEvent, JobKind, JobStatus, Model
from core.db.repositories import JobEventRepository, JobRepository, JobRunRepository, ModelRepository, Page
from core.errors import Conflict, InvalidRequest, NotFound, QueueUnavailable
from core.services.datasets import dataset_for_job
from core.services.models import allowed_base_models, configured_base_model
from core.settings import Settings

if TYPE_CHECKING:
    from core.queue import JobQueue

log = logging.getLogger("notetune.jobs")


@dataclass(frozen=True)
class FinetuneSpec:
    dataset_field: ClassVar[str] = "train_dataset_id"  # the field a CSV sent with the request fills in

    train_dataset_id: str
    method: str | None = None
    parent_model_id: str | None = None
    base_model: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    name: str | None = None


def create_finetune_job(
    session: Session,
    settings: Settings,
    spec: FinetuneSpec,
    *,
    organisation_id: str,
    api_key_id: str | None,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Validate everything that can be checked before training; returns (job, created). Every row it
    reads is the organisation's: another organisation's dataset or parent model is not found."""
    fingerprint = request_fingerprint(JobKind.finetune, asdict(spec))
    existing = idempotent_replay(session, organisation_id, api_key_id, idempotency_key, fingerprint)
    if existing is not None:
        return existing, False

    dataset = dataset_for_job(session, spec.train_dataset_id, organisation_id=organisation_id)
    config, base_model = resolve_run_config(session, settings, spec, organisation_id)
    _check_trainable(dataset.summary, config.min_rows)
    _check_for_base(config, base_model)

    job = add_queued_job(
        session,
        organisation_id,
        Job(
            kind=JobKind.finetune,
            name=spec.name,
            api_key_id=api_key_id,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            method=config.method,
            stage=config.stage,
            base_model=base_model,
            train_dataset_id=dataset.id,
            parent_model_id=spec.parent_model_id,
            hyperparameters=given_hyperparameters(config, spec.hyperparameters),
            run_config=json_safe(config.to_dict()),
            output_model_id=new_id(),
        ),
    )
    return job, True


def add_queued_job(session: Session, organisation_id: str, job: Job) -> Job:
    """A new job of the organisation enters the state machine as queued, with its first event."""
    job.id, job.status, job.created_at = new_id(), JobStatus.queued, utcnow()
    JobRepository(session, organisation_id).add(job)
    JobEventRepository(session).add(job.id, "state", data={"status": JobStatus.queued.value})
    return job


def idempotent_replay(
    session: Session, organisation_id: str, api_key_id: str | None, key: str | None, fingerprint: str
) -> Job | None:
    """The job an earlier request with this Idempotency-Key created: only the same request may reuse it."""
    if key is None:
        return None
    existing = JobRepository(session, organisation_id).by_idempotency_key(api_key_id, key)
    if existing is not None and existing.request_fingerprint != fingerprint:
        raise Conflict(
            "this Idempotency-Key was already used for a different request",
            code="idempotency_key_reused",
            details={"job_id": existing.id},
        )
    return existing


def given_hyperparameters(config: Any, requested: dict[str, Any]) -> dict[str, Any]:
    """The keys the request set, with their validated and coerced values: never the raw input, which
    may hold values PostgreSQL's JSONB refuses. Unset keys stay out, so the stage defaults apply."""
    validated = config.to_dict()
    return {key: validated[key] for key in requested if key in validated and key not in ("method", "stage")}


def _check_for_base(config: Any, base_model: str) -> None:
    """Settings that name parts of the model (target_modules) are checked against the base model
    now, not in the worker after queueing."""
    from ml.methods import method_for

    method_for(config.method).check_for_base(config, base_model)


def resolve_run_config(
    session: Session, settings: Settings, spec: FinetuneSpec, organisation_id: str
) -> tuple[Any, str]:
    """A fine-tune's whole configuration (ml.config.TrainConfig) and its base model, resolved once,
    at submit: the stage's and method's defaults, the request's settings and, for a second fine-tune,
    the parent's method, stage and architecture. The job stores it (`run_config`) and the worker
    trains with exactly that."""
    from ml.config import TrainConfig
    from ml.vocabulary import METHODS

    if spec.parent_model_id is None:
        if spec.method is None:
            raise InvalidRequest("'method' is required for a first fine-tune", code="method_required")
        if spec.method not in METHODS:
            raise InvalidRequest(f"method must be one of {', '.join(METHODS)}", code="unknown_method")
        base_model = spec.base_model or configured_base_model(settings)
        if base_model not in allowed_base_models(settings):
            raise InvalidRequest(
                "base_model is not one of the base models this service allows",
                code="base_model_not_allowed",
                details={"allowed": allowed_base_models(settings)},
            )
        return TrainConfig.for_stage(1, spec.method, spec.hyperparameters), base_model

    parent = finished_parent(session, spec.parent_model_id, organisation_id)
    lineage = {"method": parent.method, "stage": parent.stage, "hyperparameters": parent.hyperparameters}
    config = TrainConfig.for_parent(lineage, spec.hyperparameters, method=spec.method)
    if spec.base_model is not None and spec.base_model != parent.base_model:
        raise InvalidRequest(
            "a second fine-tune uses its parent's base model; leave base_model out",
            code="base_model_mismatch",
        )
    return config, parent.base_model


def finished_parent(session: Session, parent_model_id: str, organisation_id: str) -> Model:
    return finished_model(
        session,
        parent_model_id,
        organisation_id,
        role="the parent model",
        use="fine-tuned further",
        code="parent_not_ready",
    )


def finished_model(
    session: Session, model_id: str, organisation_id: str, *, role: str, use: str, code: str
) -> Model:
    """The organisation's model row, or why there is none: its job has not succeeded (409), or no such
    model (404). The row stays locked against a deletion until the job that uses it is committed."""
    model = ModelRepository(session, organisation_id).get(model_id, lock=True)
    if model is not None:
        return model
    producing_job = JobRepository(session, organisation_id).by_output_model_id(model_id)
    if producing_job is not None:
        raise Conflict(
            f"{role}'s job is {producing_job.status}; only the model of a succeeded job can be {use}",
            code=code,
            details={"job_id": producing_job.id, "job_status": str(producing_job.status)},
        )
    raise NotFound.for_id("model", model_id)


def _check_trainable(stored_summary: dict[str, Any], min_rows: int) -> None:
    from ml.data import DatasetSummary, check_trainable

    check_trainable(DatasetSummary(**stored_summary), min_rows)


def request_fingerprint(kind: JobKind, payload: dict[str, Any]) -> str:
    canonical = json.dumps({"kind": kind.value, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def get_job(session: Session, job_id: str, *, organisation_id: str) -> Job:
    job = JobRepository(session, organisation_id).get(job_id)
    if job is None:
        raise NotFound.for_id("job", job_id)
    return job


def list_jobs(
    session: Session,
    *,
    organisation_id: str,
    status: JobStatus | None,
    kind: JobKind | None,
    offset: int,
    limit: int,
) -> Page[Job]:
    return JobRepository(session, organisation_id).list(status=status, kind=kind, offset=offset, limit=limit)


def list_job_events(
    session: Session, job_id: str, offset: int, limit: int, *, organisation_id: str
) -> Page[JobEvent]:
    get_job(session, job_id, organisation_id=organisation_id)
    return JobRepository(session, organisation_id).events(job_id, offset, limit)


def commit_and_enqueue(session: Session, queue: JobQueue, job: Job) -> Job:
    """Commit the new job row, then send its message: a worker never sees an uncommitted job.

    Returns the job as committed (a fast worker may already be running it). A job whose message could
    not be sent is failed, so it never waits for a message that will not come.
    """
    session.commit()
    session.refresh(job)
    try:
        queue.enqueue(job)
    except Exception as error:
        log.error("could not enqueue job %s (%s)", job.id, type(error).__name__)
        _fail_unsent(session, job.id)
        raise QueueUnavailable("the job queue is unreachable; the job was not started") from None
    log.info("job %s (%s) queued", job.id, job.kind)
    return job


def _fail_unsent(session: Session, job_id: str) -> None:
    message = "the job queue was unreachable; submit the job again"
    if JobRunRepository(session).fail_if_queued(job_id, message, utcnow()):
        JobEventRepository(session).add(job_id, "state", data={"status": "failed", "error": message})
        session.commit()


def cancel_job(session: Session, job_id: str, *, organisation_id: str) -> Job:
    """A queued job is cancelled at once; a running one is flagged and stops at its next step."""
    jobs = JobRepository(session, organisation_id)
    job = get_job(session, job_id, organisation_id=organisation_id)
    status = request_cancel(session, job)
    if status is None:
        job = jobs.refreshed(job_id) or job
        raise Conflict(
            f"the job is already {job.status} and cannot be cancelled",
            code="job_finished",
            details={"status": str(job.status)},
        )
    return jobs.refreshed(job_id) or job


def request_cancel(session: Session, job: Job) -> JobStatus | None:
    """Cancel one of the organisation's jobs (a queued one at once, a running one flagged), with its
    event; the status it has now, or None if it had already finished."""
    status = JobRepository(session, job.organisation_id).cancel(job.id, utcnow())
    if status == JobStatus.cancelled:
        JobEventRepository(session).add(job.id, "state", attempt=job.attempt, data={"status": "cancelled"})
    elif status == JobStatus.running:
        JobEventRepository(session).add(job.id, "cancel_requested", attempt=job.attempt)
    return status


@dataclass(frozen=True)
class ReapResult:
    requeued: list[Job]
    failed: list[Job]
    cancelled: list[Job]


def reap_stale_jobs(session: Session, settings: Settings, now: datetime | None = None) -> ReapResult:
    """Jobs whose worker stopped heartbeating (by the database's clock): re-queue them, or fail them
    after max_attempts; a job with a cancel request ends cancelled, even one flagged mid-reap.

    The caller commits, then enqueues the re-queued jobs (a queued job needs a new message: the old
    one may be gone with the dead worker).
    """
    now = now or utcnow()
    result = ReapResult([], [], [])
    runs = JobRunRepository(session)
    for job in runs.stale_running(settings.stale_after_s):
        _reap_one(session, settings, job, now, result)
    for job in runs.queued_with_cancel_flag():
        if runs.cancel(job.id, now) == JobStatus.cancelled:
            _add_state_event(session, job, {"status": "cancelled", "reason": "cancel requested"})
            result.cancelled.append(job)
    return result


def _reap_one(session: Session, settings: Settings, job: Job, now: datetime, result: ReapResult) -> None:
    jobs = JobRunRepository(session)
    silent_for = f"no heartbeat for over {settings.stale_after_s:g} s"
    if job.attempt >= settings.max_attempts and not job.cancel_requested:
        error = (
            f"the worker running this job stopped responding ({silent_for}) on attempt {job.attempt} of "
            f"{settings.max_attempts}; giving up"
        )
        if jobs.finish(job.id, job.attempt, JobStatus.failed, now, error=error, unless_cancel_requested=True):
            _add_state_event(session, job, {"status": "failed", "error": error})
            result.failed.append(job)
            return
    # Attempts left, or a cancel flagged: requeue() ends a flagged job as cancelled, not queued.
    status = jobs.requeue(job.id, job.attempt, now)
    if status == JobStatus.queued:
        JobEventRepository(session).add(
            job.id, "requeued", attempt=job.attempt, data={"status": "queued", "reason": silent_for}
        )
        result.requeued.append(job)
    elif status == JobStatus.cancelled:
        _add_state_event(session, job, {"status": "cancelled", "reason": silent_for})
        result.cancelled.append(job)


def _add_state_event(session: Session, job: Job, data: dict[str, Any]) -> None:
    JobEventRepository(session).add(job.id, "state", attempt=job.attempt, data=data)


def queued_jobs_to_resend(session: Session, settings: Settings, now: datetime | None = None) -> list[Job]:
    """Queued jobs unchanged for resend_queued_after_s, marked so no other reaper re-sends them in
    the same period; the caller commits, then sends each one a new message."""
    now = now or utcnow()
    jobs = JobRunRepository(session)
    cutoff = now - timedelta(seconds=settings.resend_queued_after_s)
    return [
        job
        for job in jobs.queued_since_before(cutoff)
        if jobs.touch_if_queued_since_before(job.id, cutoff, now)
    ]


def progress_record(
    *, epoch: int, epochs: int, step: int, total_steps: int, elapsed_s: float, loss: float | None = None
) -> dict[str, Any]:
    fraction = step / total_steps if total_steps else 0.0
    eta = elapsed_s / step * (total_steps - step) if step else None
    return json_safe(
        {
            "epoch": epoch,
            "epochs": epochs,
            "step": step,
            "total_steps": total_steps,
            "percent": round(100.0 * fraction, 1),
            "eta_seconds": round(eta, 1) if eta is not None else None,
            "loss": loss,
        }
    )


def json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON (PostgreSQL refuses them): store them as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return json_safe(value.item())
    return value
