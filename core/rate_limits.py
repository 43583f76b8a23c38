"""Per-caller limits an API process keeps in memory: a token bucket per API key for /predict, and a
window of failed authentications per client address.

Each API process keeps its own (no shared state): with N API processes behind a load balancer a key
may score up to N times the rate, and an address may fail N times the limit. Both structures forget
their least recently used entries past `max_entries`, so a flood of made-up keys or addresses cannot
grow them without bound.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_ENTRIES = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """`rate` tokens a second per key, up to `burst`; a take that would go below zero is refused."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.rate, self.burst, self.clock, self.max_entries = rate, burst, clock, max_entries
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, amount: int) -> float:
        """0 when `amount` tokens were taken; else the seconds until they would be there (nothing is
        taken). A request larger than the burst waits for a full bucket and then takes it whole."""
        if self.rate <= 0:
            return 0.0
        amount = min(amount, self.burst)
        with self._lock:
            now = self.clock()
            bucket = self._buckets.pop(key, None) or _Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_entries:
                self._buckets.popitem(last=False)
            if bucket.tokens >= amount:
                bucket.tokens -= amount
                return 0.0
            return (amount - bucket.tokens) / self.rate


class FailureWindows:
    """Failures per client in fixed one-minute windows; a client at the limit is refused until its
    window ends."""

    def __init__(
        self,
        limit: int,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.limit, self.window_s, self.clock, self.max_entries = limit, window_s, clock, max_entries
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()  # client: (started, failures)
        self._lock = threading.Lock()

    def record_failure(self, client: str) -> None:
        with self._lock:
            started, failures = self._current(client)
            self._windows[client] = (started, failures + 1)
            while len(self._windows) > self.max_entries:
                self._windows.popitem(last=False)

    def blocked_for_s(self, client: str) -> int:
        """Seconds until this client may try again; 0 when it may now."""
        with self._lock:
            started, failures = self._current(client)
            if failures < self.limit:
                return 0
            return max(1, math.ceil(started + self.window_s - self.clock()))

    def _current(self, client: str) -> tuple[float, int]:
        now = self.clock()
        started, failures = self._windows.pop(client, (now, 0))
        if now - started >= self.window_s:
            started, failures = now, 0
        self._windows[client] = (started, failures)
        return started, failures
