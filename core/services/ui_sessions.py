"""Browser sessions of the web pages: a row per signed-in browser (`ui_sessions`). The cookie holds a
random token and never the key; the row holds the token's SHA-256, the key's id and when it ends. The
row and the key are read again on every request, so signing out or revoking the key ends the session
at once, for every copy of the cookie."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import ApiKey, Role, UiSession
from core.services.auth import Principal


def open_session(session: Session, principal: Principal, max_age_s: int) -> str:
    """A new session for this key; returns the token for the cookie (the caller commits). The key's
    ended and expired sessions go at the same time, so the table holds live sessions only."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.execute(
        delete(UiSession).where(
            UiSession.key_id == principal.key_id,
            or_(UiSession.ended_at.is_not(None), UiSession.expires_at <= now),
        )
    )
    session.add(
        UiSession(
            token_sha256=_digest(token),
            key_id=principal.key_id,
            created_at=now,
            expires_at=now + timedelta(seconds=max_age_s),
        )
    )
    return token


def principal_for_session(session: Session, token: str) -> Principal | None:
    """The signed-in key, or None when the session ended, expired or its key is unknown or revoked."""
    row = session.execute(
        select(ApiKey)
        .join(UiSession, UiSession.key_id == ApiKey.id)
        .where(
            UiSession.token_sha256 == _digest(token),
            UiSession.ended_at.is_(None),
            UiSession.expires_at > utcnow(),
            ApiKey.revoked_at.is_(None),
        )
    ).scalar_one_or_none()
    if row is None:
        return None
    return Principal(key_id=row.id, role=Role(row.role), name=row.name, organisation_id=row.organisation_id)


def end_session(session: Session, token: str) -> None:
    """The session ends for every copy of its cookie (the caller commits)."""
    session.execute(
        update(UiSession).where(UiSession.token_sha256 == _digest(token)).values(ended_at=utcnow())
    )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
