from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.deps import RuntimeDep, SessionDep, TrainerDep
from api.routes.datasets import read_upload
from api.schemas.common import ListResponse, responses
from api.schemas.jobs import EvaluateCreate, FinetuneCreate, JobEventRead, JobRead
from core.db.base import utcnow
from core.db.models import Job, JobKind, JobStatus
from core.db.repositories import JobEventRepository, JobRepository
from core.errors import InvalidRequest, ServiceError
from core.services.auth import Principal
from core.services.datasets import dataset_file, register_dataset
from core.services.evaluations import EvaluationSpec, create_evaluation_job
from core.services.jobs import FinetuneSpec, cancel_job, create_finetune_job, get_job

log = logging.getLogger("notetune.api")
router = APIRouter(prefix="/jobs", tags=["jobs"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Repeat a POST with the same key to get the same job back instead of a second one.",
    ),
]


class QueueUnavailable(ServiceError):
    status_code = 503
    code = "queue_unavailable"


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


@router.post(
    "/finetune",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses=responses(404, 409, 413, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": FinetuneCreate.model_json_schema(),
                    "examples": {
                        "first": {
                            "summary": "First fine-tune of the base model",
                            "value": {
                                "train_dataset_id": "3f1c...",
                                "method": "lora",
                                "hyperparameters": {"epochs": 8},
                            },
                        },
                        "second": {
                            "summary": "Second fine-tune continuing a model (method inherited)",
                            "value": {"train_dataset_id": "9ab2...", "parent_model_id": "77de..."},
                        },
                    },
                },
                "multipart/form-data": {"schema": FINETUNE_FORM_SCHEMA},
            },
        }
    },
)
async def start_finetune(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    principal: TrainerDep,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Start a fine-tune: JSON naming an uploaded dataset, or a multipart form with the CSV inline."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=20)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("the form needs a 'file' field with the training CSV", code="file_required")
        content = await run_in_threadpool(read_upload, upload, runtime.settings.max_upload_bytes)
        fields = _form_fields({key: value for key, value in form.items() if key != "file"})
        return await run_in_threadpool(
            _finetune_with_upload,
            session,
            runtime,
            principal,
            fields,
            content,
            upload.filename,
            idempotency_key,
        )
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("the body must be JSON or a multipart form", code="invalid_body") from None
    body = _validated(FinetuneCreate, payload)
    return await run_in_threadpool(_finetune, session, runtime, principal, body, idempotency_key)


def _validated(schema: type[FinetuneCreate], payload: Any) -> FinetuneCreate:
    try:
        return schema.model_validate(payload)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_input=False)) from None


def _form_fields(form: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        key: value for key, value in form.items() if isinstance(value, str) and value != ""
    }
    if "hyperparameters" in fields:
        try:
            fields["hyperparameters"] = json.loads(fields["hyperparameters"])
        except json.JSONDecodeError:
            raise InvalidRequest(
                "the 'hyperparameters' form field must be a JSON object", code="invalid_hyperparameters"
            ) from None
    return fields


def _spec(body: FinetuneCreate) -> FinetuneSpec:
    return FinetuneSpec(
        train_dataset_id=body.train_dataset_id,
        method=body.method,
        parent_model_id=body.parent_model_id,
        base_model=body.base_model,
        hyperparameters=body.hyperparameters,
        name=body.name,
    )


def _create(session: Session, runtime: RuntimeDep, principal: Principal, spec: FinetuneSpec, key: str | None):
    try:
        return create_finetune_job(
            session, runtime.settings, spec, api_key_id=principal.key_id, idempotency_key=key
        )
    except IntegrityError:
        # Two requests with one Idempotency-Key raced: the other one created the job.
        session.rollback()
        if key is None:
            raise
        return create_finetune_job(
            session, runtime.settings, spec, api_key_id=principal.key_id, idempotency_key=key
        )


def _finetune(
    session: Session, runtime: RuntimeDep, principal: Principal, body: FinetuneCreate, key: str | None
):
    job, created = _create(session, runtime, principal, _spec(body), key)
    return commit_and_enqueue(session, runtime, job, created)


def _finetune_with_upload(
    session: Session,
    runtime: RuntimeDep,
    principal: Principal,
    fields: dict[str, Any],
    content: bytes,
    filename: str | None,
    key: str | None,
) -> JobRead:
    dataset, dataset_created = register_dataset(session, runtime.settings, content, filename)
    body = _validated(FinetuneCreate, {**fields, "train_dataset_id": dataset.id})
    try:
        job, created = _create(session, runtime, principal, _spec(body), key)
    except Exception:
        # A rejected request stores nothing: not the row (rolled back) and not the file.
        session.rollback()
        if dataset_created:
            dataset_file(runtime.settings, dataset).unlink(missing_ok=True)
        raise
    return commit_and_enqueue(session, runtime, job, created)


@router.post(
    "/evaluate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses=responses(404, 409, 503),
)
def start_evaluation(
    body: EvaluateCreate,
    session: SessionDep,
    runtime: RuntimeDep,
    principal: TrainerDep,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Evaluate models on a held-out test set (bootstrap CIs, DeLong/McNemar comparisons, plots)."""
    spec = EvaluationSpec(
        test_dataset_id=body.test_dataset_id,
        model_ids=list(body.model_ids),
        n_resamples=body.n_resamples,
        seed=body.seed,
        name=body.name,
    )
    job, created = create_evaluation_job(
        session, runtime.settings, spec, api_key_id=principal.key_id, idempotency_key=idempotency_key
    )
    return commit_and_enqueue(session, runtime, job, created)


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
