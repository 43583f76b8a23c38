"""Shapes shared by every resource: the error body and paginated lists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from core.services.models import public_base_model

T = TypeVar("T")

# No NUL character (PostgreSQL text cannot hold one) and no unpaired surrogate (not encodable).
NO_NUL_PATTERN = "^[^\\x00]*$"


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no unpaired surrogates)") from None
    return value


# A request string that may reach the database: names, ids, base models.
Text = Annotated[str, AfterValidator(_storable), Field(json_schema_extra={"pattern": NO_NUL_PATTERN})]


# A base model as responses show it (the packaged one by name, never by its server path).
PublicBaseModel = Annotated[str, AfterValidator(public_base_model)]


def storable_json(value: Any) -> Any:
    """Every string (keys too) of a JSON value passes _storable: hyperparameters and thresholds are
    stored as JSON, which on PostgreSQL cannot hold \\u0000 either."""
    if isinstance(value, str):
        return _storable(value)
    if isinstance(value, dict):
        return {_storable(str(key)): storable_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable_json(item) for item in value]
    return value


@dataclass(frozen=True)
class PageQuery:
    """Which page of a list the request asks for."""

    offset: int
    limit: int


class ErrorDetail(BaseModel):
    code: str = Field(examples=["dataset_not_found"])
    message: str = Field(examples=["no dataset with this id"])
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: ErrorDetail


class ListResponse(BaseModel, Generic[T]):
    data: list[T]
    count: int = Field(description="Total number of items matching the filters (all pages).")
    offset: int
    limit: int

    @classmethod
    def of(cls, data: Sequence[Any], count: int, page: PageQuery) -> ListResponse[Any]:
        return cls(data=list(data), count=count, offset=page.offset, limit=page.limit)


class ReadModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or invalid API key"},
    403: {"model": ErrorBody, "description": "The key's role does not allow this"},
    422: {"model": ErrorBody, "description": "The request is not valid"},
    429: {
        "model": ErrorBody,
        "description": (
            "Over a limit of this caller (its key's prediction rate, its organisation's jobs or share of "
            "the prediction queue, its address's failed authentications); Retry-After says when to retry"
        ),
    },
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        404: "Not found",
        409: "Conflicts with the current state",
        413: "Upload too large",
        503: "A dependency is unavailable",
    }
    out = dict(ERROR_RESPONSES)
    for code in codes:
        out[code] = {"model": ErrorBody, "description": described.get(code, "Error")}
    return out
