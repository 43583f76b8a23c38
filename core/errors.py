"""Domain errors that carry their HTTP status: the API has one handler that turns them into JSON.

Messages are written for the person calling the API and never include note text.
"""

from __future__ import annotations

import re
from typing import Any

_REFERENCE = re.compile(r"^[0-9a-f]{32}$")  # the shape of every id this service issues


def safe_ref(value: object) -> str:
    """An id from a request, echoed only when it has the shape of our ids (free text never is)."""
    return value if isinstance(value, str) and _REFERENCE.match(value) else "(not an id)"


class ServiceError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.details = details or {}


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class InvalidRequest(ServiceError):
    status_code = 422
    code = "invalid_request"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"
