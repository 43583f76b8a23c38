"""Engine and session factory, created lazily: in the API lifespan, and in each worker process after fork."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker


def _enable_sqlite_concurrency(dbapi_connection: Any, _record: Any) -> None:
    # The API and a worker process share the embedded SQLite file: WAL lets readers run beside the
    # writer, and the busy timeout makes a writer wait for the lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # A deleted row's text is overwritten, not left in a free page where a copy of the file shows it.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def checkpoint_sqlite(session: Session) -> None:
    """Embedded mode: copy the write-ahead log into the database file and empty it, so the old page
    images it holds (with a deleted row's text) go too. Best effort: a reader may hold part of it
    back until the next checkpoint. Nothing to do on PostgreSQL (see the README on VACUUM)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _enable_sqlite_concurrency)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


@dataclass
class Database:
    url: str
    _engine: Engine | None = field(default=None, init=False, repr=False)
    _factory: sessionmaker[Session] | None = field(default=None, init=False, repr=False)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.url)
            self._factory = sessionmaker(self._engine, expire_on_commit=False)
        return self._engine

    def session(self) -> Session:
        self.engine  # noqa: B018 (creates the factory on first use)
        assert self._factory is not None
        return self._factory()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any exception."""
        with self.session() as session, session.begin():
            yield session

    def dispose(self, *, close: bool = True) -> None:
        """Drop the engine; close=False in a forked child, whose inherited connections belong to the
        parent (closing them would end the parent's sessions)."""
        if self._engine is not None:
            self._engine.dispose(close=close)
        self._engine, self._factory = None, None
