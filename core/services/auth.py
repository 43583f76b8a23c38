"""API keys: generated once, stored as SHA-256 hashes, each with one role."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import ApiKey, Role
from core.db.repositories import ApiKeyRepository, Page
from core.errors import Conflict, Forbidden, NotFound, Unauthorized

KEY_PREFIX = "ntk_"
# Which roles each role may act as: an admin can do everything, a trainer can also predict.
GRANTS: dict[Role, frozenset[Role]] = {
    Role.admin: frozenset({Role.admin, Role.trainer, Role.predictor}),
    Role.trainer: frozenset({Role.trainer, Role.predictor}),
    Role.predictor: frozenset({Role.predictor}),
}


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: Role
    name: str


def hash_key(plaintext: str) -> str:
    # The key is 256 random bits, so a plain SHA-256 (no salt, no stretching) cannot be brute-forced.
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def create_key(session: Session, role: Role, name: str = "") -> tuple[ApiKey, str]:
    """Returns the row and the plaintext key; the plaintext is not stored anywhere."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        role=Role(role), name=name, key_hash=hash_key(plaintext), prefix=plaintext[:12], created_at=utcnow()
    )
    ApiKeyRepository(session).add(key)
    return key, plaintext


def create_first_admin_key(session: Session) -> str | None:
    """On a service with no active key, an admin key (its plaintext), so someone can log in at all."""
    if ApiKeyRepository(session).count_active() > 0:
        return None
    _, plaintext = create_key(session, Role.admin, "first admin (notetune serve)")
    return plaintext


def authenticate(session: Session, plaintext: str | None) -> Principal:
    if not plaintext:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
    key = ApiKeyRepository(session).active_by_hash(hash_key(plaintext))
    if key is None:
        raise Unauthorized("the API key is not valid or has been revoked", code="invalid_api_key")
    return Principal(key_id=key.id, role=Role(key.role), name=key.name)


def authorize(principal: Principal, required: Role) -> Principal:
    if required not in GRANTS[principal.role]:
        raise Forbidden(
            f"this endpoint needs a key with role '{required}'; this key has role '{principal.role}'",
            code="insufficient_role",
        )
    return principal


def list_keys(session: Session, offset: int, limit: int) -> Page[ApiKey]:
    return ApiKeyRepository(session).list(offset, limit)


def revoke_key(session: Session, key_id: str) -> None:
    keys = ApiKeyRepository(session)
    # PostgreSQL: concurrent revocations queue behind these row locks. SQLite ignores them; there the
    # guard inside the UPDATE (one writer at a time) is what keeps the last admin key.
    keys.lock_active_admins()
    if keys.revoke(key_id, utcnow(), keep_one_admin=True):
        return
    if keys.active(key_id) is not None:
        # Without an admin key nobody could create or revoke keys again through the API.
        raise Conflict(
            "this is the last active admin key; create another admin key before revoking it",
            code="last_admin_key",
        )
    raise NotFound("no active API key with this id", code="api_key_not_found")
