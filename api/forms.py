"""Uploaded files, and multipart job requests: a CSV in the `file` field, the other request fields
as form fields.

A form carries only strings, so structured fields arrive as JSON text (`hyperparameters`,
`thresholds`) and a list either as JSON text or as the same field repeated (`models`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from api.strict_json import NonFiniteNumber, loads_finite, non_finite_error
from core.errors import InvalidRequest
from core.services.datasets import check_upload_size
from core.services.submissions import Upload

MAX_FORM_FIELDS = 40  # room for a repeated `models` field (up to 8) beside the others


@dataclass(frozen=True)
class FormShape:
    """How one endpoint's form fields are read."""

    file_description: str  # what the `file` field holds, for the error when it is missing
    object_fields: tuple[str, ...] = ()  # JSON objects in a text field
    list_fields: tuple[str, ...] = ()  # a JSON list in one field, or the field repeated


@dataclass(frozen=True)
class InlineUpload:
    file: Upload
    fields: dict[str, Any]


def read_upload(upload: UploadFile, limit: int) -> bytes:
    """Read at most limit + 1 bytes, so an oversized upload is refused without holding it all."""
    content = upload.file.read(limit + 1)
    check_upload_size(len(content), limit)
    return content


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


async def read_inline_upload(request: Request, shape: FormShape, max_bytes: int) -> InlineUpload:
    form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest(
            f"the form needs a 'file' field with the {shape.file_description}", code="file_required"
        )
    content = await run_in_threadpool(read_upload, upload, max_bytes)
    return InlineUpload(Upload(content, upload.filename), form_fields(form, shape))


def form_fields(form: FormData, shape: FormShape) -> dict[str, Any]:
    """The non-file fields as a request body would have them; empty fields count as absent."""
    fields: dict[str, Any] = {}
    for key in dict.fromkeys(form.keys()):
        values = [value for value in form.getlist(key) if isinstance(value, str) and value != ""]
        if key == "file" or not values:
            continue
        if key in shape.list_fields:
            fields[key] = _list_field(key, values)
        elif key in shape.object_fields:
            fields[key] = _json_field(key, values[-1], dict, "a JSON object")
        else:
            fields[key] = values[-1]
    return fields


def _list_field(key: str, values: list[str]) -> list[Any]:
    if len(values) == 1 and values[0].lstrip().startswith("["):
        return _json_field(key, values[0], list, "a JSON list or a repeated field")
    return values


def _json_field(key: str, text: str, expected: type, described: str) -> Any:
    try:
        value = loads_finite(text)
    except NonFiniteNumber:
        raise non_finite_error(key) from None
    except ValueError:
        value = None
    if not isinstance(value, expected):
        raise InvalidRequest(f"the '{key}' form field must be {described}", code=f"invalid_{key}")
    return value
