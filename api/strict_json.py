"""Request JSON without NaN or Infinity: Python's json module accepts them, JSON and PostgreSQL do not."""

from __future__ import annotations

import json
from typing import Any

from core.errors import InvalidRequest


class NonFiniteNumber(ValueError):
    """The text holds NaN, Infinity or -Infinity."""


def _refuse_constant(name: str) -> Any:
    raise NonFiniteNumber(name)


def loads_finite(text: str | bytes) -> Any:
    """json.loads that refuses the non-standard constants; raises ValueError on any bad input."""
    return json.loads(text, parse_constant=_refuse_constant)


def non_finite_error(field: str | None = None) -> InvalidRequest:
    where = f"the '{field}' field" if field else "the request"
    return InvalidRequest(
        f"{where} holds NaN or Infinity, which are not JSON numbers", code="non_finite_number"
    )
