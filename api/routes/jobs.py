from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import ApiRuntime, RuntimeDep, SessionDep, TrainerDep
from api.forms import FormShape, InlineUpload, is_multipart, read_inline_upload
from api.schemas.common import ListResponse, responses
from api.schemas.jobs import EvaluateCreate, FinetuneCreate, JobEventRead, JobRead
from api.strict_json import NonFiniteNumber, loads_finite, non_finite_error
from core.db.base import utcnow
from core.db.models import Dataset, Job, JobKind, JobStatus
from core.db.repositories import JobEventRepository, JobRepository
from core.errors import InvalidRequest, QueueUnavailable
from core.services.auth import Principal
from core.services.datasets import forget_dataset_file, register_dataset
from core.services.evaluations import EvaluationSpec, create_evaluation_job
from core.services.jobs import FinetuneSpec, cancel_job, create_finetune_job, get_job
from core.settings import Settings

log = logging.getLogger("notetune.api")
BodyT = TypeVar("BodyT", bound=BaseModel)
# Stands in for the dataset id while a form is validated, before its CSV has been stored.
INLINE_PLACEHOLDER = "inline"
router = APIRouter(prefix="/jobs", tags=["jobs"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Repeat a POST with the same key to get the same job back instead of a second one.",
    ),
]


def job_read(job: Job) -> JobRead:
    succeeded = job.status == JobStatus.succeeded
    evaluation_id = (job.metrics or {}).get("evaluation_id") if job.kind == JobKind.evaluate else None
    return JobRead.model_validate(
        {
            **{column: getattr(job, column) for column in JobRead.model_fields if hasattr(job, column)},
            "model_id": job.output_model_id if succeeded and job.kind == JobKind.finetune else None,
            "evaluation_id": evaluation_id if succeeded else None,
        }
    )


def commit_and_enqueue(session: Session, runtime: RuntimeDep, job: Job, created: bool) -> JobRead:
    """Commit the job row first, then send the message: a worker never sees an uncommitted job."""
    if not created:
        return job_read(job)
    session.commit()
    accepted = job_read(job)  # as committed: a fast worker may already be running it
    try:
        runtime.queue.enqueue(job)
    except Exception as error:
        log.error("could not enqueue job %s (%s)", job.id, type(error).__name__)
        # Fail it, so it never waits for a message that was not sent.
        message = "the job queue was unreachable; submit the job again"
        if JobRepository(session).fail_if_queued(job.id, message, utcnow()):
            JobEventRepository(session).add(job.id, "state", data={"status": "failed", "error": message})
            session.commit()
        raise QueueUnavailable("the job queue is unreachable; the job was not started") from None
    log.info("job %s (%s) queued", job.id, job.kind)
    return accepted


@dataclass(frozen=True)
class JobRequest:
    """One kind of job request: its JSON schema, how its form reads, and how the job is created."""

    schema: type[BaseModel]
    dataset_field: str  # the body field an inline CSV fills in
    form: FormShape
    create: Callable[[Session, Settings, Any, str | None, str | None], tuple[Job, bool]]


def _create_finetune(
    session: Session, settings: Settings, body: FinetuneCreate, api_key_id: str | None, key: str | None
) -> tuple[Job, bool]:
    spec = FinetuneSpec(
        train_dataset_id=body.train_dataset_id,
        method=body.method,
        parent_model_id=body.parent_model_id,
        base_model=body.base_model,
        hyperparameters=body.hyperparameters,
        name=body.name,
    )
    return create_finetune_job(session, settings, spec, api_key_id=api_key_id, idempotency_key=key)


def _create_evaluation(
    session: Session, settings: Settings, body: EvaluateCreate, api_key_id: str | None, key: str | None
) -> tuple[Job, bool]:
    spec = EvaluationSpec(
        test_dataset_id=body.test_dataset_id,
        models=list(body.models),
        thresholds=dict(body.thresholds),
        n_resamples=body.n_resamples,
        seed=body.seed,
        name=body.name,
    )
    return create_evaluation_job(session, settings, spec, api_key_id=api_key_id, idempotency_key=key)


FINETUNE_REQUEST = JobRequest(
    schema=FinetuneCreate,
    dataset_field="train_dataset_id",
    form=FormShape("training CSV", object_fields=("hyperparameters",)),
    create=_create_finetune,
)
EVALUATE_REQUEST = JobRequest(
    schema=EvaluateCreate,
    dataset_field="test_dataset_id",
    form=FormShape("test CSV", object_fields=("thresholds",), list_fields=("models",)),
    create=_create_evaluation,
)

FINETUNE_FORM_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "Training CSV (Text,label)"},
        "method": {"type": "string", "enum": ["full", "lora", "adalora"]},
        "parent_model_id": {"type": "string"},
        "base_model": {"type": "string"},
        "hyperparameters": {"type": "string", "description": 'A JSON object, e.g. {"epochs": 3}'},
        "name": {"type": "string"},
    },
}
EVALUATE_FORM_SCHEMA = {
    "type": "object",
    "required": ["file", "models"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "Test CSV (Text,label)"},
        "models": {
            "type": "array",
            "items": {"type": "string"},
            "description": 'Repeat the field once per model, or send one JSON list: ["base", "77de..."]',
        },
        "thresholds": {"type": "string", "description": 'A JSON object, e.g. {"77de...": 0.3}'},
        "n_resamples": {"type": "integer"},
        "seed": {"type": "integer"},
        "name": {"type": "string"},
    },
}
EVALUATE_EXAMPLES = {
    "compare": {
        "summary": "Base model, a first fine-tune and its second fine-tune",
        "value": {"test_dataset_id": "5e0a...", "models": ["base", "77de...", "91fa..."]},
    },
    "threshold": {
        "summary": "Override a model's stored decision threshold",
        "value": {
            "test_dataset_id": "5e0a...",
            "models": ["77de...", "91fa..."],
            "thresholds": {"91fa...": 0.3},
        },
    },
}
FINETUNE_EXAMPLES = {
    "first": {
        "summary": "First fine-tune of the base model",
        "value": {"train_dataset_id": "3f1c...", "method": "lora", "hyperparameters": {"epochs": 8}},
    },
    "second": {
        "summary": "Second fine-tune continuing a model (method inherited)",
        "value": {"train_dataset_id": "9ab2...", "parent_model_id": "77de..."},
    },
}


def _request_body(job_request: JobRequest, form_schema: dict, examples: dict) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": job_request.schema.model_json_schema(), "examples": examples},
                "multipart/form-data": {"schema": form_schema},
            },
        }
    }


@router.post(
    "/finetune",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses=responses(404, 409, 413, 503),
    openapi_extra=_request_body(FINETUNE_REQUEST, FINETUNE_FORM_SCHEMA, FINETUNE_EXAMPLES),
)
async def start_finetune(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    principal: TrainerDep,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Start a fine-tune: JSON naming an uploaded dataset, or a multipart form with the CSV inline."""
    return await _start_job(request, session, runtime, principal, idempotency_key, FINETUNE_REQUEST)


@router.post(
    "/evaluate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses=responses(404, 409, 413, 503),
    openapi_extra=_request_body(EVALUATE_REQUEST, EVALUATE_FORM_SCHEMA, EVALUATE_EXAMPLES),
)
async def start_evaluation(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    principal: TrainerDep,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Evaluate 1-8 models on a test set (JSON naming a dataset, or multipart with the CSV inline)."""
    return await _start_job(request, session, runtime, principal, idempotency_key, EVALUATE_REQUEST)


async def _start_job(
    request: Request,
    session: Session,
    runtime: ApiRuntime,
    principal: Principal,
    key: str | None,
    job_request: JobRequest,
) -> JobRead:
    if is_multipart(request):
        upload = await read_inline_upload(request, job_request.form, runtime.settings.max_upload_bytes)
        return await run_in_threadpool(
            _start_with_upload, session, runtime, principal, key, job_request, upload
        )
    try:
        payload = loads_finite(await request.body())
    except NonFiniteNumber:
        raise non_finite_error() from None
    except ValueError:  # also JSONDecodeError and UnicodeDecodeError
        raise InvalidRequest("the body must be JSON or a multipart form", code="invalid_body") from None
    body = _validated(job_request.schema, payload)
    return await run_in_threadpool(_start, session, runtime, principal, key, job_request, body)


def _validated(schema: type[BodyT], payload: Any) -> BodyT:
    try:
        return schema.model_validate(payload)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_input=False)) from None


def _create_once(
    session: Session,
    runtime: ApiRuntime,
    principal: Principal,
    key: str | None,
    job_request: JobRequest,
    body: BaseModel,
) -> tuple[Job, bool]:
    def create() -> tuple[Job, bool]:
        return job_request.create(session, runtime.settings, body, principal.key_id, key)

    try:
        return create()
    except IntegrityError:
        # Two requests with one Idempotency-Key raced: the other one created the job.
        session.rollback()
        if key is None:
            raise
        return create()


def _start(
    session: Session,
    runtime: ApiRuntime,
    principal: Principal,
    key: str | None,
    job_request: JobRequest,
    body: BaseModel,
) -> JobRead:
    job, created = _create_once(session, runtime, principal, key, job_request, body)
    return commit_and_enqueue(session, runtime, job, created)


def _start_with_upload(
    session: Session,
    runtime: ApiRuntime,
    principal: Principal,
    key: str | None,
    job_request: JobRequest,
    upload: InlineUpload,
) -> JobRead:
    # The form is checked before the CSV is parsed and stored; the dataset id is ours to fill in.
    body = _validated(job_request.schema, {**upload.fields, job_request.dataset_field: INLINE_PLACEHOLDER})
    dataset, dataset_created = register_dataset(session, runtime.settings, upload.content, upload.filename)
    body = body.model_copy(update={job_request.dataset_field: dataset.id})
    try:
        job, created = _create_once(session, runtime, principal, key, job_request, body)
    except Exception:
        _forget_upload(session, runtime, dataset, dataset_created)
        raise
    if not created:
        # An Idempotency-Key replay: the job already exists, so this upload stores nothing either.
        _forget_upload(session, runtime, dataset, dataset_created)
    return commit_and_enqueue(session, runtime, job, created)


def _forget_upload(session: Session, runtime: ApiRuntime, dataset: Dataset, created: bool) -> None:
    """A rejected request stores nothing: not the dataset row (rolled back) and not the file."""
    session.rollback()
    if created:
        forget_dataset_file(session, runtime.settings, dataset)


@router.get("", response_model=ListResponse[JobRead], responses=responses())
def list_jobs(
    session: SessionDep,
    _: TrainerDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ListResponse[JobRead]:
    """List jobs, newest first, optionally filtered by status and kind."""
    page = JobRepository(session).list(status=status_filter, kind=kind, offset=offset, limit=limit)
    return ListResponse(
        data=[job_read(job) for job in page.items], count=page.count, offset=offset, limit=limit
    )


@router.get("/{job_id}", response_model=JobRead, responses=responses(404))
def read_job(job_id: str, session: SessionDep, _: TrainerDep) -> JobRead:
    """A job's status, progress, metrics and result."""
    return job_read(get_job(session, job_id))


@router.get("/{job_id}/events", response_model=ListResponse[JobEventRead], responses=responses(404))
def list_job_events(
    job_id: str,
    session: SessionDep,
    _: TrainerDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
) -> ListResponse[JobEventRead]:
    """State changes and per-epoch metrics of a job, oldest first."""
    get_job(session, job_id)
    page = JobEventRepository(session).list(job_id, offset, limit)
    data = [JobEventRead.model_validate(event) for event in page.items]
    return ListResponse(data=data, count=page.count, offset=offset, limit=limit)


@router.post("/{job_id}/cancel", response_model=JobRead, responses=responses(404, 409))
def cancel(job_id: str, session: SessionDep, _: TrainerDep) -> JobRead:
    """Cancel a job: a queued one never starts, a running one stops at its next step."""
    job = cancel_job(session, job_id)
    session.commit()
    return job_read(job)
