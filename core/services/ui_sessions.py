"""Browser sessions of the web pages: the session names an API key by its id, never holds the key,
and the key is looked up again on every request, so revoking it ends the session at once."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.db.models import ApiKey, Role
from core.services.auth import Principal


def principal_for_key_id(session: Session, key_id: str) -> Principal | None:
    """The signed-in key, or None when it is unknown or revoked."""
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        return None
    return Principal(key_id=key.id, role=Role(key.role), name=key.name, organisation_id=key.organisation_id)
