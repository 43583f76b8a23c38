"""Organisations and API keys: a key is generated once, stored as a SHA-256 hash, and has one role in
one organisation; everything it does, it does inside that organisation."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import DEFAULT_ORGANISATION, ApiKey, Organisation, Role
from core.db.repositories import ApiKeyRepository, KeyLookup, OrganisationRepository, Page
from core.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized

KEY_PREFIX = "ntk_"
# Which roles each role may act as: an admin can do everything, a trainer can also predict.
GRANTS: dict[Role, frozenset[Role]] = {
    Role.admin: frozenset({Role.admin, Role.trainer, Role.predictor}),
    Role.trainer: frozenset({Role.trainer, Role.predictor}),
    Role.predictor: frozenset({Role.predictor}),
}


ORGANISATION_NAME_LIMIT = 200


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: Role
    name: str
    organisation_id: str


def hash_key(plaintext: str) -> str:
    # The key is 256 random bits, so a plain SHA-256 (no salt, no stretching) cannot be brute-forced.
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def create_organisation(session: Session, name: str) -> tuple[Organisation, str]:
    """An operator's action (`notetune orgs create`): the organisation and its first admin key's
    plaintext, with which its own admin makes every other key."""
    name = " ".join(name.split())
    if not 1 <= len(name) <= ORGANISATION_NAME_LIMIT:
        raise InvalidRequest(
            f"an organisation's name has 1 to {ORGANISATION_NAME_LIMIT} characters", code="organisation_name"
        )
    organisations = OrganisationRepository(session)
    if organisations.by_name(name) is not None:
        raise Conflict("an organisation with this name exists already", code="organisation_exists")
    organisation = organisations.add(Organisation(name=name, created_at=utcnow()))
    _, plaintext = create_key(session, Role.admin, "first admin", organisation_id=organisation.id)
    return organisation, plaintext


def organisation_by_name(session: Session, name: str) -> Organisation:
    organisation = OrganisationRepository(session).by_name(name)
    if organisation is None:
        raise NotFound("no organisation with this name", code="organisation_not_found")
    return organisation


def default_organisation(session: Session) -> Organisation:
    """The organisation a single-hospital deployment uses (the migration creates it)."""
    organisations = OrganisationRepository(session)
    existing = organisations.by_name(DEFAULT_ORGANISATION)
    if existing is not None:
        return existing
    return organisations.add(Organisation(name=DEFAULT_ORGANISATION, created_at=utcnow()))


def create_key(session: Session, role: Role, name: str = "", *, organisation_id: str) -> tuple[ApiKey, str]:
    """Returns the row and the plaintext key; the plaintext is not stored anywhere."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        role=Role(role), name=name, key_hash=hash_key(plaintext), prefix=plaintext[:12], created_at=utcnow()
    )
    ApiKeyRepository(session, organisation_id).add(key)
    return key, plaintext


def create_first_admin_key(session: Session) -> str | None:
    """On a service with no active key, an admin key of the default organisation (its plaintext), so
    someone can log in at all."""
    if KeyLookup(session).count_active() > 0:
        return None
    organisation = default_organisation(session)
    _, plaintext = create_key(
        session, Role.admin, "first admin (notetune serve)", organisation_id=organisation.id
    )
    return plaintext


def authenticate(session: Session, plaintext: str | None) -> Principal:
    if not plaintext:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
    key = KeyLookup(session).active_by_hash(hash_key(plaintext))
    if key is None:
        raise Unauthorized("the API key is not valid or has been revoked", code="invalid_api_key")
    return Principal(key_id=key.id, role=Role(key.role), name=key.name, organisation_id=key.organisation_id)


def authorize(principal: Principal, required: Role) -> Principal:
    if required not in GRANTS[principal.role]:
        raise Forbidden(
            f"this endpoint needs a key with role '{required}'; this key has role '{principal.role}'",
            code="insufficient_role",
        )
    return principal


def list_keys(session: Session, offset: int, limit: int, *, organisation_id: str) -> Page[ApiKey]:
    return ApiKeyRepository(session, organisation_id).list(offset, limit)


def revoke_key(session: Session, key_id: str, *, organisation_id: str) -> None:
    keys = ApiKeyRepository(session, organisation_id)
    # PostgreSQL: concurrent revocations queue behind these row locks. SQLite ignores them; there the
    # guard inside the UPDATE (one writer at a time) is what keeps the last admin key.
    keys.lock_active_admins()
    if keys.revoke(key_id, utcnow(), keep_one_admin=True):
        return
    if keys.active(key_id) is not None:
        # Without an admin key nobody in the organisation could create or revoke keys again.
        raise Conflict(
            "this is the organisation's last active admin key; create another admin key before revoking it",
            code="last_admin_key",
        )
    raise NotFound("no active API key with this id", code="api_key_not_found")
