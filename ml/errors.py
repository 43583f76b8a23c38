"""The one family of errors that mean "the person asked for something we cannot do".

Every layer raises a `UserError` (or a subclass) for a caller's mistake; its message is written for
that person and never quotes a note. The API maps the family to HTTP in one handler (api/errors.py),
the worker stores the message as the job's error, the CLI prints it and exits 2. Anything that is
not a `UserError` is our bug: logged as type and stack, answered with a generic message.

It lives in `ml` because `ml` imports nothing of ours, and every other layer may import `ml`.
"""

from __future__ import annotations

from typing import Any


class Cancelled(Exception):
    """The caller asked a long run (training, evaluation) to stop; nothing was written."""


class UserError(ValueError):
    """A caller's mistake: `code` is stable, `message` is for a person, `details` is structured."""

    status_code = 422
    code = "invalid_request"

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code
        self.details = details or {}
