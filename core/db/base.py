"""Declarative base: naming convention (stable constraint names for migrations) and shared column types."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData, String, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import FunctionElement

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """Identifiers are 32 hex characters: safe as directory names (the model store checks this too)."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite hands back naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class IdMixin:
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)


class CreatedAtMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class db_now(FunctionElement):  # noqa: N801 (used like a SQL function)
    """The database server's clock, optionally `seconds_ago` earlier.

    Heartbeats and the reaper's cut-off use it, so a worker whose clock is off cannot make a live job
    look dead (or a dead one alive): one clock, the database's, decides."""

    type = UTCDateTime()
    # Not cached: the offset is part of the SQL text, and statements using it are few and cheap.
    inherit_cache = False
    name = "db_now"

    def __init__(self, seconds_ago: float = 0.0) -> None:
        self.seconds_ago = float(seconds_ago)
        super().__init__()


@compiles(db_now, "postgresql")
def _db_now_postgresql(element: db_now, compiler: Any, **_: Any) -> str:
    # statement_timestamp(): a long transaction still sees the time of each statement.
    return f"(statement_timestamp() - make_interval(secs => {element.seconds_ago!r}))"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: Any, **_: Any) -> str:
    # The text SQLAlchemy stores datetimes as on SQLite (UTC, microseconds), so comparisons hold.
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', '{-element.seconds_ago!r} seconds')"
