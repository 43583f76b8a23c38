"""Shapes shared by every resource: the error body and paginated lists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


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
