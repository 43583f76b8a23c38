"""Request bodies: the key is checked before any of the body is read, and the body is counted as it
streams in against its route's limit.

This is ASGI middleware, not a dependency: FastAPI reads and parses a JSON or form body before a
route's dependencies run, so a dependency could only refuse a body it had already spooled. A declared
Content-Length over the limit is refused before the app starts; a chunked body (no Content-Length) is
refused as soon as the bytes read pass the limit, and the rest is never read.
"""

from __future__ import annotations

from dataclasses import dataclass

from anyio import to_thread
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from core.db.models import Role
from core.errors import PayloadTooLarge, ServiceUnavailable, Unauthorized
from core.services.auth import Principal, authenticate, authorize
from core.services.datasets import check_storage_room
from core.settings import Settings
from ml.errors import UserError

# Where the middleware leaves the key it checked, so the route's dependency does not look it up again.
PRINCIPAL_SCOPE_KEY = "notetune.principal"
# Room for a multipart form's boundaries and text fields beside the file.
FORM_OVERHEAD_BYTES = 1024 * 1024
# Paths of the JSON API: each needs a key. (/healthz, the docs and any page routes do not.)
API_PREFIXES = ("/datasets", "/jobs", "/models", "/evaluations", "/predict", "/keys", "/metrics", "/version")


# The web pages: a body (a form) is read only from a signed-in session, except the sign-in form itself.
PAGES_PREFIX = "/ui"
PAGES_OPEN_FORMS = ("/ui/sign-in", "/ui/language")
# The page session cookie's field that holds a signed-in browser's session token (api/ui/security.py).
SESSION_TOKEN_FIELD = "sid"


@dataclass(frozen=True)
class BodyRule:
    limit_bytes: int
    needs_key: bool
    role: Role | None = None  # checked before the body too, where the route is known
    needs_session: bool = False  # a page form: the signed session must name a key (checked again later)
    stores_upload: bool = False  # a notes file: it must fit the organisation's share of the store


def body_rule(settings: Settings, method: str, path: str, multipart: bool) -> BodyRule:
    """The limit, and who may send a body at all, for one request."""
    upload_limit = settings.max_upload_bytes + FORM_OVERHEAD_BYTES
    json_limit = settings.max_json_body_bytes
    needs_key = path.rstrip("/").startswith(API_PREFIXES)
    if method == "POST":
        route = path.rstrip("/")
        if route == "/predict":
            return BodyRule(settings.predict_body_limit, True, Role.predictor)
        if route == "/datasets":
            return BodyRule(upload_limit, True, Role.trainer, stores_upload=True)
        if route in ("/jobs/finetune", "/jobs/evaluate"):
            return BodyRule(
                upload_limit if multipart else json_limit, True, Role.trainer, stores_upload=multipart
            )
        if route == "/keys":
            return BodyRule(json_limit, True, Role.admin)
    route = path.rstrip("/")
    if route.startswith(PAGES_PREFIX) and route not in PAGES_OPEN_FORMS:
        return BodyRule(upload_limit if multipart else json_limit, False, needs_session=True)
    return BodyRule(json_limit, needs_key)


def has_body(headers: Headers) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("", "0")


def declared_length(headers: Headers) -> int | None:
    value = headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


class BodyTooLarge(PayloadTooLarge):
    code = "payload_too_large"

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            f"the request body is larger than the limit of {limit_bytes} bytes for this endpoint",
            details={"limit_bytes": limit_bytes},
        )


class KeyCheckUnavailable(ServiceUnavailable):
    code = "auth_unavailable"


class RequestBodyGuard:
    """Key first, then a counted body: an unauthenticated caller cannot make the server read, parse or
    spool a large body, and nobody can send more than the route's limit."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        multipart = headers.get("content-type", "").startswith("multipart/form-data")
        rule = body_rule(self.settings, scope["method"], scope["path"], multipart)
        try:
            if rule.needs_key and has_body(headers):
                scope[PRINCIPAL_SCOPE_KEY] = await self._checked_key(scope, headers, rule)
            if rule.needs_session and has_body(headers) and not _signed_in(scope):
                raise Unauthorized("sign in before sending a form", code="not_signed_in")
            declared = declared_length(headers)
            if declared is not None and declared > rule.limit_bytes:
                raise BodyTooLarge(rule.limit_bytes)
        except UserError as error:
            await _refusal(error)(scope, receive, send)
            return
        await CountedBody(self.app, rule.limit_bytes)(scope, receive, send)

    async def _checked_key(self, scope: Scope, headers: Headers, rule: BodyRule) -> Principal:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        plaintext = token.strip() if scheme.lower() == "bearer" else None
        database = scope["app"].state.runtime.database

        settings, declared = self.settings, declared_length(headers)

        def look_up() -> Principal:
            with database.transaction() as session:
                principal = authenticate(session, plaintext)
                if rule.role is not None:
                    principal = authorize(principal, rule.role)
                if rule.stores_upload and declared is not None:
                    # Refused before the body is read; the upload is checked again on its real size.
                    file_bytes = max(0, declared - FORM_OVERHEAD_BYTES)
                    check_storage_room(session, settings, principal.organisation_id, file_bytes)
                return principal

        try:
            principal = await to_thread.run_sync(look_up)
        except UserError:
            raise
        except Exception:
            raise KeyCheckUnavailable("the API key cannot be checked now; retry later") from None
        return principal


def _signed_in(scope: Scope) -> bool:
    """The signed session cookie (decoded by the session middleware, outside this one) holds a session
    token (checked against its row by the page's dependency)."""
    session = scope.get("session")
    return isinstance(session, dict) and isinstance(session.get(SESSION_TOKEN_FIELD), str)


class CountedBody:
    """Counts the bytes the app reads; past the limit the read fails, and whatever response the app
    then makes of that failure is replaced by the 413."""

    def __init__(self, app: ASGIApp, limit_bytes: int) -> None:
        self.app, self.limit_bytes = app, limit_bytes
        self.received = 0
        self.exceeded = False
        self.responded = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_receive() -> Message:
            if self.exceeded:
                raise BodyTooLarge(self.limit_bytes)
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit_bytes:
                    self.exceeded = True
                    raise BodyTooLarge(self.limit_bytes)
            return message

        async def guarded_send(message: Message) -> None:
            if not self.exceeded:
                await send(message)
            elif not self.responded:
                self.responded = True
                await _refusal(BodyTooLarge(self.limit_bytes))(scope, receive, send)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not self.exceeded:
                raise
        if self.exceeded and not self.responded:
            self.responded = True
            await _refusal(BodyTooLarge(self.limit_bytes))(scope, receive, send)


def _refusal(error: UserError):
    headers = {"WWW-Authenticate": "Bearer"} if error.status_code == 401 else None
    if error.status_code == 503:
        headers = {"Retry-After": str(getattr(error, "retry_after_s", 5))}
    return error_response(error.status_code, error.code, error.message, error.details, headers)
