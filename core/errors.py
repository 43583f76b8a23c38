"""Domain errors that carry their HTTP status: the API has one handler that turns them into JSON.

They extend `ml.errors.UserError`, the one family every layer raises for a condition the caller can
act on (the data and config errors of `ml` belong to it too). Messages are written for the person
calling the API and never include note text.
"""

from __future__ import annotations

import re

from ml.errors import UserError

_REFERENCE = re.compile(r"^[0-9a-f]{32}$")  # the shape of every id this service issues


def safe_ref(value: object) -> str:
    """An id from a request, echoed only when it has the shape of our ids (free text never is)."""
    return value if isinstance(value, str) and _REFERENCE.match(value) else "(not an id)"


class ServiceError(UserError):
    status_code = 400
    code = "bad_request"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"

    @classmethod
    def for_id(cls, what: str, identifier: object) -> NotFound:
        """No `what` row has this id: code `<what>_not_found`, the id echoed only if it is one of ours."""
        return cls(f"no {what} with this id", code=f"{what}_not_found", details={"id": safe_ref(identifier)})


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


class ServiceUnavailable(ServiceError):
    """A part the request needs is down or busy; the caller may retry after `retry_after_s`."""

    status_code = 503
    code = "service_unavailable"
    retry_after_s = 5


class PredictionsBusy(ServiceUnavailable):
    code = "busy"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            "the service is scoring as many notes as it can queue; retry later",
            details={"retry_after_s": retry_after_s},
        )
        self.retry_after_s = retry_after_s


class TooManyRequests(ServiceError):
    """This caller (a key, an organisation, an address) is over one of its limits; others are not
    affected. The caller may retry after `retry_after_s`."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, code: str, retry_after_s: int, limit: dict) -> None:
        super().__init__(message, code=code, details={"retry_after_s": retry_after_s, "limit": limit})
        self.retry_after_s = retry_after_s


class QueueUnavailable(ServiceUnavailable):
    code = "queue_unavailable"


class ModelUnavailable(ServiceUnavailable):
    code = "model_unavailable"
