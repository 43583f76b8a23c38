"""One error shape for every response: {"error": {"code", "message", "details"}}.

FastAPI's default 422 echoes the offending input back (`input` in each error), which could be a
clinical note: the handler here keeps only where and why. Unhandled exceptions become a plain 500
and are logged as type and stack only, never with their message or the request body.
"""

from __future__ import annotations

import logging
import re
import traceback
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from python_multipart.multipart import DEFAULT_MAX_HEADER_SIZE as MULTIPART_MAX_HEADER_BYTES
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.services.models import public_base_model, without_server_paths
from ml.errors import UserError
from models_store.errors import StoreError

log = logging.getLogger("notetune.api")


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def _status_code_name(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


async def _user_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, UserError | StoreError)
    headers = None
    if error.status_code == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif error.status_code in (429, 503):
        headers = {"Retry-After": str(getattr(error, "retry_after_s", 5))}
    # A base model's server path (the packaged MiniLM's, inside the virtual environment) stays here.
    message, details = public_base_model(error.message), without_server_paths(error.details)
    return error_response(error.status_code, error.code, message, details, headers)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    messages = {404: "no such endpoint or resource", 405: "this method is not allowed on this endpoint"}
    message = messages.get(error.status_code) or HTTPStatus(error.status_code).phrase
    headers = error.headers
    if error.status_code == 400:
        # Starlette's and FastAPI's answer to a body they cannot parse (not UTF-8 JSON, a broken
        # multipart form): the same 422 as any other body that is not what the endpoint reads.
        if _part_headers_too_long(error):
            return error_response(
                422,
                "part_headers_too_long",
                f"a part of the multipart form has headers longer than {MULTIPART_MAX_HEADER_BYTES} bytes: "
                "most often a file name that long; shorten the file name",
                {"limit_bytes": MULTIPART_MAX_HEADER_BYTES},
            )
        return error_response(422, "invalid_body", "the body cannot be parsed as JSON or a multipart form")
    if error.status_code == 405:
        documented = allowed_methods(request)
        if documented:
            headers = {**(headers or {}), "Allow": ", ".join(documented)}
    return error_response(error.status_code, _status_code_name(error.status_code), message, headers=headers)


def _part_headers_too_long(error: BaseException) -> bool:
    """Whether python-multipart gave up on a part's header line (its only limit on a file name)."""
    cause: BaseException | None = error
    while cause is not None:
        if "Maximum header size exceeded" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def allowed_methods(request: Request) -> list[str]:
    """The documented methods on this path (Starlette names only the first route's). A fixed path beats
    a template, as in routing: /jobs/finetune allows POST, though /jobs/{job_id} has the same shape."""
    segments = request.url.path.rstrip("/").split("/")
    matches = [
        (template.count("{"), operations)
        for template, operations in request.app.openapi()["paths"].items()
        if _same_shape(template.split("/"), segments)
    ]
    fewest = min((templated for templated, _ in matches), default=0)
    return sorted({method.upper() for templated, ops in matches if templated == fewest for method in ops})


def _same_shape(template: list[str], segments: list[str]) -> bool:
    return len(template) == len(segments) and all(
        re.fullmatch(_segment_pattern(part), segment)
        for part, segment in zip(template, segments, strict=True)
    )


def _segment_pattern(part: str) -> str:
    pieces = re.split(r"(\{[^}]+\})", part)
    return "".join("[^/]+" if piece.startswith("{") else re.escape(piece) for piece in pieces)


# Where a request part sits; every other location element must be a declared name or an index.
_REQUEST_PARTS = frozenset({"body", "query", "path", "header", "cookie"})
UNDECLARED = "<key>"


def declared_names(app: FastAPI) -> frozenset[str]:
    """Every field and parameter name the API declares (from its OpenAPI document, built once)."""
    cached = getattr(app.state, "declared_names", None)
    if cached is None:
        names: set[str] = set(_REQUEST_PARTS)
        _collect_names(app.openapi(), names)
        cached = app.state.declared_names = frozenset(names)
    return cached


def _collect_names(node: Any, names: set[str]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict):
            names.update(node["properties"])
        if "in" in node and isinstance(node.get("name"), str):  # an OpenAPI parameter
            names.add(node["name"])
        for value in node.values():
            _collect_names(value, names)
    elif isinstance(node, list):
        for value in node:
            _collect_names(value, names)


def safe_location(loc: Any, declared: frozenset[str]) -> list[str]:
    """A dict key or an unknown field name comes from the caller and may be note text: masked."""
    return [str(part) if isinstance(part, int) or part in declared else UNDECLARED for part in loc or ()]


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    declared = declared_names(request.app)
    problems = [
        {
            "location": safe_location(item.get("loc", ()), declared),
            "message": item.get("msg", ""),
            "type": item.get("type"),
        }
        for item in error.errors()
    ]
    return error_response(422, "validation_error", "the request is not valid", {"errors": problems})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(UserError, _user_error)
    # The store's errors carry their status the same way (a missing object, a damaged one, the store
    # down: 503 with Retry-After).
    app.add_exception_handler(StoreError, _user_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(UnhandledErrors)


class UnhandledErrors:
    """Answers any unhandled exception with the JSON 500, before Starlette's server-error layer
    (which would log the exception message and could expose it in debug mode)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            frames = "".join(traceback.format_tb(error.__traceback__))
            log.error(
                "unhandled %s on %s %s\n%s", type(error).__name__, scope.get("method"), _route(scope), frames
            )
            if not started:
                response = error_response(500, "internal_error", "the server failed to handle this request")
                await response(scope, receive, send)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "(unmatched route)"
