"""The store's own errors: it imports nothing of ours, so every layer above may use it.

Each carries what the layers above need to answer a person: a stable `code`, a message that names
keys and limits only (never file contents), and the HTTP status the API answers with (api/errors.py
maps the family in one handler; the worker stores the message as the job's error).
"""

from __future__ import annotations


class StoreError(Exception):
    status_code = 500
    code = "store_error"
    retry_after_s = 5

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code
        self.details: dict = {}


class InvalidKey(StoreError, ValueError):
    """An id or key that cannot name an object (separators, dots, too long)."""

    status_code = 422
    code = "invalid_request"


class ModelNotFound(StoreError, LookupError):
    """No committed model (or no object) under a key."""

    status_code = 404
    code = "model_not_found"


class ObjectMissing(StoreError, LookupError):
    """A row names an object the store does not hold (a lost volume, a manual clean-up)."""

    status_code = 503
    code = "object_missing"


class IntegrityFailure(StoreError):
    """A downloaded object's bytes differ from the sha256 recorded when it was written: never used."""

    status_code = 503
    code = "store_integrity"


class StoreUnavailable(StoreError):
    """The store did not answer in time (down, slow, unreachable, refused our credentials)."""

    status_code = 503
    code = "store_unavailable"


MODEL_FILES_MISSING = "a requested model is registered but its files are missing from the model store"
