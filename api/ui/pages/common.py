"""What every page module shares: its router, reading a form with its file, the lists for pickers."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from api.forms import read_upload
from api.ui.i18n import N_
from api.ui.rendering import PageRoute
from api.ui.security import MAX_FORM_FIELDS, check_csrf
from core.db.models import Job
from core.errors import InvalidRequest
from core.services.auth import Principal
from core.services.submissions import JobSpec, Upload, submit_job
from core.settings import Settings

BodyT = TypeVar("BodyT", bound=BaseModel)


def page_router() -> APIRouter:
    """Pages are not part of the API's schema; every POST is checked for its CSRF token."""
    return APIRouter(
        prefix="/ui", route_class=PageRoute, include_in_schema=False, dependencies=[Depends(check_csrf)]
    )


async def read_form(request: Request) -> FormData:
    return await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)


async def uploaded_file(form: FormData, settings: Settings) -> Upload | None:
    """The CSV in the form's `file` field, or None when no file was chosen."""
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None
    content = await run_in_threadpool(read_upload, upload, settings.max_upload_bytes)
    return Upload(content, upload.filename)


def text_field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value.strip() or None if isinstance(value, str) else None


# Stands in for the dataset id while the form is validated, before an uploaded CSV is stored.
INLINE_PLACEHOLDER = "inline"


def submit(
    session, runtime, principal: Principal, spec: JobSpec, upload: Upload | None, form: FormData
) -> Job:
    """Start the job exactly as the JSON API does. The form's one-time token is the request's
    Idempotency-Key, so a double click starts one job."""
    token = text_field(form, "submission")
    return submit_job(
        session,
        runtime.settings,
        runtime.queue,
        spec,
        organisation_id=principal.organisation_id,
        api_key_id=principal.key_id,
        idempotency_key=f"ui-{token}" if token else None,
        upload=upload,
    )


def validated(schema: type[BodyT], payload: dict[str, Any]) -> BodyT:
    """The form's fields through the API's request schema, so the page and the API check alike."""
    try:
        return schema.model_validate(payload)
    except ValidationError as error:
        problem = error.errors(include_input=False)[0]
        field = ".".join(str(part) for part in problem.get("loc", ()))
        raise InvalidRequest(f"{field}: {problem.get('msg', 'not valid')}", code="validation_error") from None


def dataset_or_upload(dataset_id: str | None, upload: Upload | None) -> str:
    if upload is not None:
        return INLINE_PLACEHOLDER
    if not dataset_id:
        raise InvalidRequest(N_("choose a dataset or upload a CSV file"), code="dataset_required")
    return dataset_id
