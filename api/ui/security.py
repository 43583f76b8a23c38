"""Signing in to the pages: a server-side session in a signed cookie, CSRF tokens, roles.

The cookie (Starlette's SessionMiddleware: signed with itsdangerous, HttpOnly, SameSite=Strict, an
expiry, Secure when configured, path /ui) holds the id of the API key that signed in, a CSRF token
and the chosen language: never the key itself. The key row is read again on every request
(core.services.ui_sessions), so a revoked key loses its pages at once.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import Depends, Request
from starlette.middleware.sessions import SessionMiddleware

from api.deps import RuntimeDep, SessionDep, require
from api.ui.i18n import N_
from core.db.models import Role
from core.errors import Forbidden
from core.services.auth import Principal
from core.services.ui_sessions import principal_for_key_id
from core.settings import Settings

COOKIE_NAME = "notetune_ui"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
MAX_FORM_FIELDS = 100  # every hyperparameter of the advanced section, and the other fields
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SignInRequired(Exception):
    """No valid session: the page answers with the way to the sign-in page."""


class CsrfRefused(Forbidden):
    code = "csrf_token_invalid"


def add_session_middleware(app, settings: Settings) -> None:
    # Without a configured secret, one per process: sessions then end when the API restarts.
    secret = settings.ui_session_secret
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret.get_secret_value() if secret else secrets.token_urlsafe(32),
        session_cookie=COOKIE_NAME,
        max_age=settings.ui_session_max_age_s,
        path="/ui",
        same_site="strict",
        https_only=settings.ui_https_only,
    )


def csrf_token(request: Request) -> str:
    """This session's CSRF token, made on its first page."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def start_session(request: Request, principal: Principal) -> None:
    """A fresh session for the key that signed in (a token planted before sign-in is not kept)."""
    language = request.session.get("lang")
    request.session.clear()
    request.session.update({"key_id": principal.key_id, "csrf": secrets.token_urlsafe(32)})
    if language:
        request.session["lang"] = language


def end_session(request: Request) -> None:
    language = request.session.get("lang")
    request.session.clear()
    if language:
        request.session["lang"] = language


async def check_csrf(request: Request) -> None:
    """Every POST of the pages carries the session's token (a form field, or a header from htmx)."""
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("multipart/form-data", "application/x-www-form-urlencoded")
    ):
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
        field = form.get(CSRF_FIELD)
        sent = field if isinstance(field, str) else None
    expected = request.session.get("csrf")
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfRefused(
            N_("this form is missing its security token or it has expired; reload the page and try again")
        )


def signed_in(request: Request, session: SessionDep) -> Principal:
    key_id = request.session.get("key_id")
    return _checked(request, principal_for_key_id(session, key_id) if isinstance(key_id, str) else None)


def signed_in_briefly(request: Request, runtime: RuntimeDep) -> Principal:
    """For a page that waits a while (predict): the key check returns its connection at once."""
    key_id = request.session.get("key_id")
    if not isinstance(key_id, str):
        return _checked(request, None)
    with runtime.database.transaction() as session:
        return _checked(request, principal_for_key_id(session, key_id))


def _checked(request: Request, principal: Principal | None) -> Principal:
    if principal is None:
        request.session.pop("key_id", None)
        raise SignInRequired
    request.state.principal = principal
    return principal


SignedInDep = Annotated[Principal, Depends(signed_in)]
TrainerPageDep = Annotated[Principal, Depends(require(Role.trainer, signed_in))]
PredictorPageDep = Annotated[Principal, Depends(require(Role.predictor, signed_in))]
BriefPredictorPageDep = Annotated[Principal, Depends(require(Role.predictor, signed_in_briefly))]
