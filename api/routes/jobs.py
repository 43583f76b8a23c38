from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import ApiRuntime, EventPageDep, JobId, PageDep, RuntimeDep, SessionDep, TrainerDep
from api.forms import FormShape, InlineUpload, is_multipart, read_inline_upload
from api.schemas.common import ListResponse, responses
from api.schemas.jobs import (
    EVALUATE_REQUEST_DOCS,
    FINETUNE_REQUEST_DOCS,
    EvaluateCreate,
    FinetuneCreate,
    JobEventRead,
    JobRead,
)
from api.strict_json import NonFiniteNumber, loads_finite, non_finite_error
from core.db.models import Job, JobKind, JobStatus
from core.errors import InvalidRequest
from core.services import jobs as jobs_service
from core.services.auth import Principal
from core.services.evaluations import EvaluationSpec
from core.services.jobs import FinetuneSpec
from core.services.models import requested_base_model
from core.services.submissions import JobSpec, Upload, submit_job
from core.settings import Settings

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


@dataclass(frozen=True)
class JobRequest:
    """One kind of job request: its JSON schema, the service spec it becomes, and how its form reads."""

    schema: type[BaseModel]
    spec: type[FinetuneSpec] | type[EvaluationSpec]  # has the schema's fields
    form: FormShape

    def to_spec(self, body: BaseModel, settings: Settings) -> JobSpec:
        fields = body.model_dump(exclude_unset=True)
        if fields.get("base_model") is not None:
            fields["base_model"] = requested_base_model(settings, fields["base_model"])
        return self.spec(**fields)


FINETUNE_REQUEST = JobRequest(
    schema=FinetuneCreate,
    spec=FinetuneSpec,
    form=FormShape("training CSV", object_fields=("hyperparameters",)),
)
EVALUATE_REQUEST = JobRequest(
    schema=EvaluateCreate,
    spec=EvaluationSpec,
    form=FormShape("test CSV", object_fields=("thresholds",), list_fields=("models", "subgroup_columns")),
)


@router.post(
    "/finetune",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses=responses(404, 409, 413, 503),
    openapi_extra=FINETUNE_REQUEST_DOCS,
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
    openapi_extra=EVALUATE_REQUEST_DOCS,
)
async def start_evaluation(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    principal: TrainerDep,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Compare models on a test set: JSON naming a dataset, or a multipart form with the CSV inline."""
    return await _start_job(request, session, runtime, principal, idempotency_key, EVALUATE_REQUEST)


async def _start_job(
    request: Request,
    session: Session,
    runtime: ApiRuntime,
    principal: Principal,
    key: str | None,
    job_request: JobRequest,
) -> JobRead:
    upload: Upload | None = None
    if is_multipart(request):
        inline = await read_inline_upload(request, job_request.form, runtime.settings.max_upload_bytes)
        body = _validated_form(job_request, inline)
        upload = inline.file
    else:
        body = _validated(job_request.schema, await _json_payload(request))

    def submit() -> JobRead:
        job = submit_job(
            session,
            runtime.settings,
            runtime.queue,
            job_request.to_spec(body, runtime.settings),
            organisation_id=principal.organisation_id,
            api_key_id=principal.key_id,
            idempotency_key=key,
            upload=upload,
        )
        return job_read(job)

    return await run_in_threadpool(submit)


async def _json_payload(request: Request) -> Any:
    try:
        return loads_finite(await request.body())
    except NonFiniteNumber:
        raise non_finite_error() from None
    except ValueError:  # also JSONDecodeError and UnicodeDecodeError
        raise InvalidRequest("the body must be JSON or a multipart form", code="invalid_body") from None


def _validated_form(job_request: JobRequest, inline: InlineUpload) -> BaseModel:
    # The form is checked before the CSV is parsed and stored; the dataset id is the service's to fill in.
    return _validated(
        job_request.schema, {**inline.fields, job_request.spec.dataset_field: INLINE_PLACEHOLDER}
    )


def _validated(schema: type[BodyT], payload: Any) -> BodyT:
    try:
        return schema.model_validate(payload)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_input=False)) from None


@router.get("", response_model=ListResponse[JobRead], responses=responses())
def list_jobs(
    session: SessionDep,
    principal: TrainerDep,
    page: PageDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: Annotated[JobKind | None, Query()] = None,
) -> ListResponse[JobRead]:
    """List jobs, newest first, optionally filtered by status and kind."""
    jobs = jobs_service.list_jobs(
        session,
        organisation_id=principal.organisation_id,
        status=status_filter,
        kind=kind,
        offset=page.offset,
        limit=page.limit,
    )
    return ListResponse.of([job_read(job) for job in jobs.items], jobs.count, page)


@router.get("/{job_id}", response_model=JobRead, responses=responses(404))
def read_job(job_id: JobId, session: SessionDep, principal: TrainerDep) -> JobRead:
    """A job's status, progress, metrics and result."""
    return job_read(jobs_service.get_job(session, job_id, organisation_id=principal.organisation_id))


@router.get("/{job_id}/events", response_model=ListResponse[JobEventRead], responses=responses(404))
def list_job_events(
    job_id: JobId, session: SessionDep, principal: TrainerDep, page: EventPageDep
) -> ListResponse[JobEventRead]:
    """State changes and per-epoch metrics of a job, oldest first."""
    events = jobs_service.list_job_events(
        session, job_id, page.offset, page.limit, organisation_id=principal.organisation_id
    )
    return ListResponse.of([JobEventRead.model_validate(event) for event in events.items], events.count, page)


@router.post("/{job_id}/cancel", response_model=JobRead, responses=responses(404, 409))
def cancel(job_id: JobId, session: SessionDep, principal: TrainerDep) -> JobRead:
    """Cancel a job: a queued one never starts, a running one stops at its next step."""
    job = jobs_service.cancel_job(session, job_id, organisation_id=principal.organisation_id)
    session.commit()
    return job_read(job)
