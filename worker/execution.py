"""Running one job inside a worker: claim it, run it under a heartbeat and a cancel watcher, and turn
any exception into a recorded outcome. The run itself (inputs, ml, publish, record) is
core/services/orchestration.py.

Note text never leaves this module in a log line, an error message or a task argument: errors are
stored as a one-line message chosen here, and logged tracebacks keep the stack without the message.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError

from core.db.models import Job, JobKind
from core.services import orchestration, runs
from core.services.jobs import progress_record
from ml.errors import Cancelled, UserError
from models_store.errors import StoreError
from worker.runtime import WorkerRuntime

log = logging.getLogger("notetune.worker")

STOP_CHECK_INTERVAL_S = 0.5
PROGRESS_WRITE_INTERVAL_S = 1.0
MAX_ERROR_CHARS = 500
OUT_OF_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def safe_error_message(error: BaseException, job_id: str, attempt: int) -> str:
    if isinstance(error, UserError | StoreError):
        message = getattr(error, "message", None) or str(error)
        return " ".join(message.split())[:MAX_ERROR_CHARS]
    if out_of_space(error):
        return (
            f"the worker ran out of disk space (or past its file size limit) while writing on attempt "
            f"{attempt}; nothing was kept: free space in the model store and submit the job again"
        )
    return (
        f"the job failed with {type(error).__name__} on attempt {attempt}; "
        f"the worker log has the stack for job {job_id}"
    )


def out_of_space(error: BaseException) -> bool:
    """A full disk or a file size limit, also when a library reports it in its own exception type
    (safetensors raises its own error carrying the OS error's text)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in OUT_OF_SPACE:
            return True
        if any(os.strerror(code) in str(seen) for code in OUT_OF_SPACE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def log_failure(job_id: str, attempt: int, error: BaseException) -> None:
    # The stack frames show where it failed; the exception message is left out, as it may quote data.
    frames = "".join(traceback.format_tb(error.__traceback__))
    log.error("job %s attempt %d failed with %s\n%s", job_id, attempt, type(error).__name__, frames)


class JobHeartbeat:
    """Keeps heartbeat_at fresh from a thread, so a slow step is not taken for a dead worker."""

    def __init__(self, runtime: WorkerRuntime, job_id: str, attempt: int) -> None:
        self.runtime, self.job_id, self.attempt = runtime, job_id, attempt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> JobHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.runtime.settings.heartbeat_interval_s):
            try:
                with self.runtime.database.transaction() as session:
                    runs.heartbeat(session, self.job_id, self.attempt)
            except Exception as error:
                log.warning("heartbeat for job %s failed (%s)", self.job_id, type(error).__name__)


class RunWatcher:
    """A run's hooks: progress to the database, and 'stop' when cancelled or no longer ours."""

    def __init__(self, runtime: WorkerRuntime, job_id: str, attempt: int) -> None:
        self.runtime, self.job_id, self.attempt = runtime, job_id, attempt
        self._last_check = 0.0
        self._last_write = 0.0
        self._stop = False
        # The latest step figures, kept while later phases (assessing, saving) are reported.
        self._record: dict = runs.phase_record(runs.STARTING)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if self._stop or now - self._last_check < STOP_CHECK_INTERVAL_S:
            return self._stop
        self._last_check = now
        try:
            with self.runtime.database.session() as session:
                self._stop = runs.stop_requested(session, self.job_id, self.attempt)
        except DBAPIError as error:
            # A database restart must not end a healthy run: ask again at the next check.
            log.warning("job %s: could not check for a cancel (%s)", self.job_id, type(error).__name__)
        return self._stop

    def on_phase(self, phase: str) -> None:
        self._record = {**self._record, **runs.phase_record(phase)}
        record = self._record
        self._write(lambda session: runs.record_phase(session, self.job_id, self.attempt, record))

    def _write(self, write: Callable) -> None:
        try:
            with self.runtime.database.transaction() as session:
                write(session)
        except DBAPIError as error:
            log.warning("job %s: progress not recorded (%s)", self.job_id, type(error).__name__)

    def on_progress(self, progress) -> None:
        is_epoch_end = progress.event == "epoch_end"
        last_step = progress.step >= progress.total_steps
        now = time.monotonic()
        if not (is_epoch_end or last_step or now - self._last_write >= PROGRESS_WRITE_INTERVAL_S):
            return
        self._last_write = now
        record = progress_record(
            epoch=progress.epoch,
            epochs=progress.epochs,
            step=progress.step,
            total_steps=progress.total_steps,
            elapsed_s=progress.elapsed_s,
            loss=progress.loss,
        )
        record = self._record = {**record, "phase": self._record.get("phase")}
        epoch_metrics = None
        if is_epoch_end:
            epoch_metrics = {"epoch": progress.epoch, "epochs": progress.epochs, "loss": progress.loss}
            epoch_metrics["validation"] = progress.metrics
        self._write(
            lambda session: runs.record_progress(session, self.job_id, self.attempt, record, epoch_metrics)
        )


def take_turn(runtime: WorkerRuntime, job_id: str, worker: str) -> None:
    """What a job's message does: claim the queued job whose organisation's turn it is (that one or
    another, runs.claim_fairest) and run it."""
    with runtime.database.transaction() as session:
        job = runs.claim_fairest(session, worker)
    if job is None:
        log.info("message for job %s: no job is queued (already taken, finished or cancelled)", job_id)
        return
    if job.id != job_id:
        log.info("message for job %s: job %s has the turn", job_id, job.id)
        give_back_the_turn(runtime, job_id)
    run_claimed(runtime, job, worker, BODIES[job.kind])


def give_back_the_turn(runtime: WorkerRuntime, job_id: str) -> None:
    """The message's own job, still queued, gets a new message: the job that took this turn may have
    had none (a message lost, a job put back in the queue by hand), and no job may be left waiting
    for a message that will not come. A message too many finds nothing queued and does nothing."""
    with runtime.database.session() as session:
        job = runs.queued_job(session, job_id)
    if job is None:
        return
    try:
        runtime.queue.enqueue(job)
    except Exception as error:  # the monitor re-sends messages of jobs that waited too long
        log.warning("could not send job %s a new message (%s)", job_id, type(error).__name__)


def run_job(
    runtime: WorkerRuntime, job_id: str, worker: str, body: Callable[[WorkerRuntime, Job], None]
) -> None:
    """Claim this one job (when it is still queued) and run `body` for it."""
    with runtime.database.transaction() as session:
        job = runs.claim(session, job_id, worker)
    if job is None:
        log.info("job %s is not queued (already taken, finished or cancelled): nothing to do", job_id)
        return
    run_claimed(runtime, job, worker, body)


def run_claimed(
    runtime: WorkerRuntime, job: Job, worker: str, body: Callable[[WorkerRuntime, Job], None]
) -> None:
    """Run `body` under a heartbeat and turn any exception into a recorded outcome."""
    job_id = job.id
    attempt = job.attempt
    log.info("job %s attempt %d started on %s", job_id, attempt, worker)
    with JobHeartbeat(runtime, job_id, attempt):
        try:
            body(runtime, job)
        except SoftTimeLimitExceeded:
            limit = runtime.settings.job_soft_time_limit_s
            _finish_failed(
                runtime, job, attempt, f"the job ran past its time limit of {limit} s and was stopped"
            )
        except Cancelled:  # its hooks said stop: a cancel, or the job is no longer this run's
            _finish_cancelled(runtime, job, attempt)
        except Exception as error:
            log_failure(job_id, attempt, error)
            _finish_failed(runtime, job, attempt, safe_error_message(error, job_id, attempt))


def _finish_failed(runtime: WorkerRuntime, job: Job, attempt: int, error: str) -> None:
    recorded = orchestration.finish_failed(runtime, job, attempt, error)
    log.info("job %s attempt %d failed (recorded: %s)", job.id, attempt, recorded)


def _finish_cancelled(runtime: WorkerRuntime, job: Job, attempt: int) -> None:
    recorded = orchestration.finish_cancelled(runtime, job, attempt)
    log.info("job %s attempt %d stopped (cancelled recorded: %s)", job.id, attempt, recorded)


def finetune_body(runtime: WorkerRuntime, job: Job) -> None:
    orchestration.run_finetune(runtime, job, RunWatcher(runtime, job.id, job.attempt))


def evaluation_body(runtime: WorkerRuntime, job: Job) -> None:
    orchestration.run_evaluation(runtime, job, RunWatcher(runtime, job.id, job.attempt))


BODIES: dict[JobKind, Callable[[WorkerRuntime, Job], None]] = {
    JobKind.finetune: finetune_body,
    JobKind.evaluate: evaluation_body,
}
