"""A function run every few seconds in a daemon thread of its own, its failures logged and survived."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("notetune")


class Periodically:
    def __init__(self, name: str, action: Callable[[], object], interval_s: float) -> None:
        self.name, self.action, self.interval_s = name, action, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"notetune-{name}", daemon=True)

    def start(self) -> Periodically:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.action()
            except Exception as error:  # the database or the store may be briefly unreachable
                log.warning("%s failed (%s)", self.name, type(error).__name__)
