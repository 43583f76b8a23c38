"""Submitting a job request: create the job once, store an inline CSV with it, commit, then enqueue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.models import Dataset, Job
from core.db.repositories import JobRepository
from core.errors import TooManyRequests
from core.services.datasets import forget_dataset_file, register_dataset
from core.services.evaluations import EvaluationSpec, create_evaluation_job
from core.services.jobs import FinetuneSpec, commit_and_enqueue, create_finetune_job
from core.settings import Settings

if TYPE_CHECKING:
    from core.queue import JobQueue

JobSpec = FinetuneSpec | EvaluationSpec
_CREATE: dict[type, Callable[..., tuple[Job, bool]]] = {
    FinetuneSpec: create_finetune_job,
    EvaluationSpec: create_evaluation_job,
}


@dataclass(frozen=True)
class Upload:
    """A CSV sent with the job request, to be stored as the job's dataset."""

    content: bytes
    filename: str | None


def submit_job(
    session: Session,
    settings: Settings,
    queue: JobQueue,
    spec: JobSpec,
    *,
    organisation_id: str,
    api_key_id: str | None,
    idempotency_key: str | None = None,
    upload: Upload | None = None,
) -> Job:
    """The organisation's job for this request: new and queued, or the one an earlier request with the
    same Idempotency-Key created. With an upload, the CSV becomes the spec's dataset; a request that
    is refused or replayed stores nothing."""
    caller = _Caller(organisation_id, api_key_id, idempotency_key)
    if not _is_replay(session, caller):
        check_active_job_room(session, settings, organisation_id)
    if upload is None:
        job, created = _create_once(session, settings, spec, caller)
    else:
        job, created = _create_with_upload(session, settings, spec, upload, caller)
    return commit_and_enqueue(session, queue, job) if created else job


@dataclass(frozen=True)
class _Caller:
    organisation_id: str
    api_key_id: str | None
    idempotency_key: str | None


def _is_replay(session: Session, caller: _Caller) -> bool:
    if caller.idempotency_key is None:
        return False
    jobs = JobRepository(session, caller.organisation_id)
    return jobs.by_idempotency_key(caller.api_key_id, caller.idempotency_key) is not None


def check_active_job_room(session: Session, settings: Settings, organisation_id: str) -> None:
    """One organisation may have so many jobs queued or running at once (429 past it), so that its
    backlog cannot fill the queue the others share."""
    active, limit = (
        JobRepository(session, organisation_id).count_active(),
        settings.max_active_jobs_per_organisation,
    )
    if active >= limit:
        raise TooManyRequests(
            f"this organisation already has {active} jobs queued or running, its limit; submit this one "
            "when one of them has finished",
            code="too_many_active_jobs",
            retry_after_s=60,
            limit={"setting": "NOTETUNE_MAX_ACTIVE_JOBS_PER_ORGANISATION", "jobs": limit},
        )


def _create_once(session: Session, settings: Settings, spec: JobSpec, caller: _Caller) -> tuple[Job, bool]:
    create = _CREATE[type(spec)]
    key = caller.idempotency_key

    def attempt() -> tuple[Job, bool]:
        return create(
            session,
            settings,
            spec,
            organisation_id=caller.organisation_id,
            api_key_id=caller.api_key_id,
            idempotency_key=key,
        )

    try:
        return attempt()
    except IntegrityError:
        # Two requests with one Idempotency-Key raced: the other one created the job.
        session.rollback()
        if key is None:
            raise
        return attempt()


def _create_with_upload(
    session: Session,
    settings: Settings,
    spec: JobSpec,
    upload: Upload,
    caller: _Caller,
) -> tuple[Job, bool]:
    dataset, dataset_created = register_dataset(
        session, settings, upload.content, upload.filename, organisation_id=caller.organisation_id
    )
    spec_with_dataset: Any = replace(spec, **{spec.dataset_field: dataset.id})
    try:
        job, created = _create_once(session, settings, spec_with_dataset, caller)
    except Exception:
        _forget_upload(session, settings, dataset, dataset_created)
        raise
    if not created:
        # An Idempotency-Key replay: the job already exists, so this upload stores nothing either.
        _forget_upload(session, settings, dataset, dataset_created)
    return job, created


def _forget_upload(session: Session, settings: Settings, dataset: Dataset, created: bool) -> None:
    """A refused request stores nothing: not the dataset row (rolled back) and not the file."""
    session.rollback()
    if created:
        forget_dataset_file(session, settings, dataset)
