"""What /healthz reports: the database answers, and a worker has written its heartbeat recently."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import text

from core.db.base import utcnow
from core.db.repositories import WorkerRepository
from core.db.session import Database
from core.settings import Settings


def check_database(database: Database) -> None:
    """Raises whatever the driver raises when the database cannot answer."""
    with database.session() as session:
        session.execute(text("SELECT 1"))


def live_workers(database: Database, settings: Settings) -> int:
    """Workers seen within stale_after_s: a heartbeat row works on every broker."""
    since = utcnow() - timedelta(seconds=settings.stale_after_s)
    with database.session() as session:
        return len(WorkerRepository(session).live(since))


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str | None = None


class HealthProbe:
    """Runs the checks on a timer in a thread of its own, so /healthz answers from memory in
    microseconds even while the models keep every core busy; a load balancer then sees an instance
    that is busy, not one that is down. Results older than three intervals count as a failed check."""

    def __init__(self, checks: Callable[[], dict[str, CheckResult]], interval_s: float) -> None:
        self.checks, self.interval_s = checks, interval_s
        self._latest: tuple[float, dict[str, CheckResult]] = (0.0, {})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="notetune-health", daemon=True)

    def start(self) -> HealthProbe:
        self._refresh()  # the first answer is a real one
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def latest(self) -> dict[str, CheckResult]:
        checked_at, results = self._latest
        age = time.monotonic() - checked_at
        if age > 3 * self.interval_s:
            return {**results, "checks": CheckResult(False, f"the last check ran {age:.0f} s ago")}
        return results

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._refresh()

    def _refresh(self) -> None:
        self._latest = (time.monotonic(), self.checks())
