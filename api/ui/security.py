"""Signing in to the pages: a server-side session in a signed cookie, CSRF tokens, roles.

The cookie (Starlette's SessionMiddleware: signed with itsdangerous, HttpOnly, SameSite=Strict, an
expiry, Secure when configured, path /ui) holds a session token, a CSRF token and the chosen
language: never the key itself. The session's row and its key are read again on every request
(core.services.ui_sessions), so signing out or revoking the key ends the session at once, for every
copy of the cookie.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.middleware.sessions import SessionMiddleware

from api.deps import RuntimeDep, SessionDep, require
from api.limits import SESSION_TOKEN_FIELD
from api.ui.i18n import N_
from core.db.models import Role
from core.errors import Forbidden
from core.services import ui_sessions
from core.services.auth import Principal
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


def start_session(request: Request, principal: Principal, session: Session, settings: Settings) -> None:
    """A fresh session for the key that signed in (a token planted before sign-in is not kept)."""
    token = ui_sessions.open_session(session, principal, settings.ui_session_max_age_s)
    session.commit()
    language = request.session.get("lang")
    request.session.clear()
    request.session.update({SESSION_TOKEN_FIELD: token, "csrf": secrets.token_urlsafe(32)})
    if language:
        request.session["lang"] = language


def end_session(request: Request, session: Session) -> None:
    token = request.session.get(SESSION_TOKEN_FIELD)
    if isinstance(token, str):
        ui_sessions.end_session(session, token)
        session.commit()
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
    token = request.session.get(SESSION_TOKEN_FIELD)
    principal = ui_sessions.principal_for_session(session, token) if isinstance(token, str) else None
    return _checked(request, principal)


def signed_in_briefly(request: Request, runtime: RuntimeDep) -> Principal:
    """For a page that waits a while (predict): the key check returns its connection at once."""
    token = request.session.get(SESSION_TOKEN_FIELD)
    if not isinstance(token, str):
        return _checked(request, None)
    with runtime.database.transaction() as session:
        return _checked(request, ui_sessions.principal_for_session(session, token))


def _checked(request: Request, principal: Principal | None) -> Principal:
    if principal is None:
        request.session.pop(SESSION_TOKEN_FIELD, None)
        raise SignInRequired
    request.state.principal = principal
    return principal


SignedInDep = Annotated[Principal, Depends(signed_in)]
TrainerPageDep = Annotated[Principal, Depends(require(Role.trainer, signed_in))]
PredictorPageDep = Annotated[Principal, Depends(require(Role.predictor, signed_in))]
BriefPredictorPageDep = Annotated[Principal, Depends(require(Role.predictor, signed_in_briefly))]
