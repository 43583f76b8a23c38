"""A thread in the worker's main process: reports the worker alive, reaps jobs of dead workers, and
sweeps leftovers (worker/sweeper.py).

Reaping from every worker (not one scheduler) keeps the system free of a single point of failure:
the compare-and-set in the job state machine makes concurrent reapers safe.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from core.db.base import utcnow
from core.db.models import Job
from core.db.repositories import WorkerRepository
from core.queue import JobQueue
from core.services.jobs import queued_jobs_to_resend, reap_stale_jobs
from worker.runtime import WorkerRuntime
from worker.sweeper import sweep

log = logging.getLogger("notetune.worker.monitor")


class WorkerMonitor:
    def __init__(self, runtime: WorkerRuntime, queue: JobQueue, name: str) -> None:
        self.runtime = runtime
        self.queue = queue
        self.name = name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="notetune-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            with self.runtime.database.transaction() as session:
                WorkerRepository(session).remove(self.name)
        except Exception as error:
            log.warning("could not remove the worker heartbeat row (%s)", type(error).__name__)

    def _loop(self) -> None:
        settings = self.runtime.settings
        next_reap = next_sweep = 0.0
        while not self._stop.is_set():
            try:
                self._beat()
                if time.monotonic() >= next_reap:
                    self.reap_once()
                    next_reap = time.monotonic() + settings.reaper_interval_s
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + settings.sweep_interval_s
                    sweep(self.runtime)
            except Exception as error:
                # The database may be briefly unreachable; keep trying rather than die silently.
                log.warning("worker monitor step failed (%s)", type(error).__name__)
            self._stop.wait(settings.heartbeat_interval_s)

    def _beat(self) -> None:
        with self.runtime.database.transaction() as session:
            WorkerRepository(session).beat(self.name, socket.gethostname(), os.getpid(), utcnow())

    def reap_once(self) -> None:
        with self.runtime.database.transaction() as session:
            result = reap_stale_jobs(session, self.runtime.settings)
            waiting = queued_jobs_to_resend(session, self.runtime.settings)
        # Enqueue only after the commit that put the jobs back to queued.
        for job in result.requeued:
            log.warning("job %s lost its worker; re-queued after attempt %d", job.id, job.attempt)
            self._send(job)
        for job in waiting:
            log.warning("job %s has waited in the queue too long; sending its message again", job.id)
            self._send(job)
        for job in result.failed:
            log.warning("job %s lost its worker on its last attempt (%d); marked failed", job.id, job.attempt)
            if job.output_model_id:
                self.runtime.store.remove(job.output_model_id)
        for job in result.cancelled:
            if job.output_model_id:
                self.runtime.store.remove(job.output_model_id)

    def _send(self, job: Job) -> None:
        """One job's message; a failure is logged and left to the next periodic re-send."""
        try:
            self.queue.enqueue(job)
        except Exception as error:
            log.warning("could not send job %s to the queue (%s)", job.id, type(error).__name__)
