"""Failed authentications are throttled per client address.

ASGI middleware outside every other: it sees each response's status, so a 401 from anywhere (a wrong
or revoked bearer key, the body guard's early key check, a failed sign-in on the web pages) counts
against the address that caused it. Once an address has failed `auth_failures_per_minute` times in
its current minute, its requests that try to authenticate (carry an Authorization header, or post the
sign-in form) are answered 429 with Retry-After before any key is looked up. Requests without
credentials, and a signed-in browser's pages, go on as before.

The address is the TCP peer's (`scope["client"]`): behind a reverse proxy, run uvicorn with
`--proxy-headers` and `--forwarded-allow-ips` so that it is the caller's, not the proxy's.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from api.metrics import ServiceMetrics
from core.rate_limits import FailureWindows

SIGN_IN_PATH = "/ui/sign-in"


class AuthThrottle:
    def __init__(self, app: ASGIApp, failures: FailureWindows, metrics: ServiceMetrics) -> None:
        self.app, self.failures, self.metrics = app, failures, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = _client_address(scope)
        if _tries_to_authenticate(scope):
            wait_s = self.failures.blocked_for_s(client)
            if wait_s:
                self.metrics.auth_throttled.inc()
                await _throttled(wait_s)(scope, receive, send)
                return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.failures.record_failure(client)
                self.metrics.auth_failures.inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _tries_to_authenticate(scope: Scope) -> bool:
    if "authorization" in Headers(scope=scope):
        return True
    return scope["method"] == "POST" and scope["path"].rstrip("/") == SIGN_IN_PATH


def _throttled(wait_s: int):
    return error_response(
        429,
        "too_many_failed_authentications",
        f"too many failed authentications from this address; retry after {wait_s} s",
        {"retry_after_s": wait_s},
        {"Retry-After": str(wait_s)},
    )
