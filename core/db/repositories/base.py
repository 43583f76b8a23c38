"""Pages, the job states that count as active, and `OwnedRepository`: every organisation-owned
repository builds on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.db.models import (
    JobStatus,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    count: int


ACTIVE = (JobStatus.queued, JobStatus.running)


def page_of(session: Session, query: Any, offset: int, limit: int) -> Page[Any]:
    count = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    items = session.scalars(query.offset(offset).limit(limit)).all()
    return Page(items=items, count=count)


class OwnedRepository:
    """One organisation's rows of `row_type`; every statement goes through `_owned`."""

    row_type: ClassVar[Any]

    def __init__(self, session: Session, organisation_id: str) -> None:
        if not organisation_id:
            raise ValueError("an owned repository needs the organisation it acts for")
        self.session, self.organisation_id = session, organisation_id

    def _owned(self, statement: Any, *, deleted: bool | None = False) -> Any:
        """The statement limited to this organisation's rows; live ones only unless `deleted` is
        None (live and tombstones) or True (tombstones only)."""
        statement = statement.where(self.row_type.organisation_id == self.organisation_id)
        if deleted is not None and hasattr(self.row_type, "deleted_at"):
            column = self.row_type.deleted_at
            statement = statement.where(column.is_not(None) if deleted else column.is_(None))
        return statement

    def add(self, row: Any) -> Any:
        row.organisation_id = self.organisation_id
        self.session.add(row)
        self.session.flush()
        return row

    def get(self, row_id: str, *, lock: bool = False) -> Any:
        """A live row; with `lock`, held until the transaction ends (FOR SHARE on PostgreSQL), so a
        concurrent deletion waits for it, and a request that uses the row waits for a deletion."""
        query = self._owned(select(self.row_type).where(self.row_type.id == row_id))
        if lock:
            query = query.with_for_update(read=True)
        return self.session.scalar(query)

    def get_for_update(self, row_id: str) -> Any:
        query = self._owned(select(self.row_type).where(self.row_type.id == row_id)).with_for_update()
        return self.session.scalar(query.execution_options(populate_existing=True))

    def all_for_update(self, row_ids: Sequence[str]) -> list[Any]:
        """The live rows among these ids, locked until the transaction ends, in id order (so two
        deletions lock in one order and cannot deadlock)."""
        if not row_ids:
            return []
        query = self._owned(select(self.row_type).where(self.row_type.id.in_(list(row_ids))))
        return list(self.session.scalars(query.order_by(self.row_type.id).with_for_update()).all())

    def tombstone(self, row_id: str) -> Any:
        return self.session.scalar(
            self._owned(select(self.row_type).where(self.row_type.id == row_id), deleted=True)
        )

    def tombstones(self, row_ids: Sequence[str]) -> dict[str, datetime]:
        """deleted_at of each of these ids that is one of this organisation's tombstones."""
        if not row_ids:
            return {}
        query = self._owned(
            select(self.row_type.id, self.row_type.deleted_at).where(self.row_type.id.in_(list(row_ids))),
            deleted=True,
        )
        return {row_id: deleted_at for row_id, deleted_at in self.session.execute(query).all()}

    def _set_deleted(self, row_ids: Sequence[str], now: datetime, **cleared: Any) -> list[str]:
        """Tombstone the live rows among these ids; returns the ids it turned into tombstones."""
        if not row_ids:
            return []
        live = self._owned(select(self.row_type.id).where(self.row_type.id.in_(list(row_ids))))
        ids = list(self.session.scalars(live).all())
        if ids:
            self.session.execute(
                self._owned(update(self.row_type).where(self.row_type.id.in_(ids))).values(
                    deleted_at=now, **cleared
                )
            )
        return ids
