"""What a worker process needs, built lazily once per process (after the prefork pool has forked)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from functools import cached_property

from core.db.session import Database
from core.queue import JobQueue
from core.settings import Settings
from core.storage import artifact_store
from models_store.artifacts import ArtifactStore


@dataclass
class WorkerRuntime:
    settings: Settings
    database: Database = field(init=False)
    store: ArtifactStore = field(init=False)

    def __post_init__(self) -> None:
        self.settings.ensure_directories()
        self.database = Database(self.settings.sqlalchemy_url)
        self.store = artifact_store(self.settings)

    @cached_property
    def queue(self) -> JobQueue:
        """For a message a run sends itself (worker/execution.py take_turn)."""
        return JobQueue.from_settings(self.settings)

    def sweep_partial_models(self) -> int:
        """Remove partial model writes that no live worker can still be writing: a write happens inside
        a job, and no job runs past its hard time limit."""
        return self.store.sweep_partials(older_than_s=self.settings.job_hard_time_limit_s)


class RuntimeHolder:
    """One runtime per process; `reset` after fork so a child never reuses its parent's connections."""

    def __init__(self) -> None:
        self._runtime: WorkerRuntime | None = None
        self._pid: int | None = None

    def get(self) -> WorkerRuntime:
        if self._runtime is not None and self._pid != os.getpid():
            self.reset()
        if self._runtime is None:
            self._runtime = WorkerRuntime(Settings())
            self._pid = os.getpid()
        return self._runtime

    def reset(self) -> None:
        if self._runtime is not None:
            # Inherited through fork: drop the pool without closing the parent's connections.
            self._runtime.database.dispose(close=self._pid == os.getpid())
        self._runtime, self._pid = None, None


def worker_name(hostname: str | None = None) -> str:
    return f"{hostname or socket.gethostname()}:{os.getpid()}"
