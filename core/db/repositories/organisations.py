"""Organisations and their API keys (looked up by hash before the organisation is known)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from core.db.models import (
    ApiKey,
    Organisation,
    Role,
)
from core.db.repositories.base import OwnedRepository, Page, page_of


@dataclass
class OrganisationRepository:
    session: Session

    def add(self, organisation: Organisation) -> Organisation:
        self.session.add(organisation)
        self.session.flush()
        return organisation

    def by_name(self, name: str) -> Organisation | None:
        return self.session.scalar(select(Organisation).where(Organisation.name == name))

    def get(self, organisation_id: str) -> Organisation | None:
        return self.session.get(Organisation, organisation_id)


@dataclass
class KeyLookup:
    """Keys across organisations: authentication finds a key (and so its organisation) by its hash."""

    session: Session

    def active_by_hash(self, key_hash: str) -> ApiKey | None:
        return self.session.scalar(
            select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )

    def count_active(self) -> int:
        return self.session.scalar(select(func.count()).where(ApiKey.revoked_at.is_(None))) or 0


class ApiKeyRepository(OwnedRepository):
    row_type = ApiKey

    def list(self, offset: int, limit: int) -> Page[ApiKey]:
        return page_of(
            self.session, self._owned(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)), offset, limit
        )

    def lock_active_admins(self) -> list[str]:
        """Ids of the organisation's active admin keys, row-locked until the transaction ends
        (PostgreSQL), so two concurrent revocations cannot both see another admin left."""
        query = (
            self._owned(select(ApiKey.id))
            .where(ApiKey.role == Role.admin, ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.id)
            .with_for_update()
        )
        return list(self.session.scalars(query).all())

    def revoke(self, key_id: str, now: datetime, *, keep_one_admin: bool = True) -> bool:
        """Revoke an active key; with keep_one_admin, never the organisation's last active admin key.

        The guard is part of the UPDATE itself, so it holds where row locks do not (SQLite ignores
        FOR UPDATE, and its driver reads outside a transaction): the database's single writer checks
        and revokes in one step."""
        conditions = [ApiKey.id == key_id, ApiKey.revoked_at.is_(None)]
        if keep_one_admin:
            other = aliased(ApiKey)
            another_admin = exists().where(
                other.role == Role.admin,
                other.revoked_at.is_(None),
                other.id != key_id,
                other.organisation_id == ApiKey.organisation_id,
            )
            conditions.append(or_(ApiKey.role != Role.admin, another_admin))
        result = self.session.execute(self._owned(update(ApiKey).where(*conditions)).values(revoked_at=now))
        return result.rowcount == 1

    def active(self, key_id: str) -> ApiKey | None:
        return self.session.scalar(
            self._owned(select(ApiKey))
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .execution_options(populate_existing=True)
        )
