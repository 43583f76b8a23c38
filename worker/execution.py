"""Running one job inside a worker: claim, run under a heartbeat with progress, record the outcome.

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
import uuid
from collections.abc import Callable

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError

from core.db.models import Job, JobStatus
from core.services import runs
from core.services.jobs import progress_record
from ml.errors import Cancelled, UserError
from models_store.errors import StoreError
from worker.runtime import WorkerRuntime

log = logging.getLogger("notetune.worker")

STOP_CHECK_INTERVAL_S = 0.5
PROGRESS_WRITE_INTERVAL_S = 1.0
MAX_ERROR_CHARS = 500
# How long a finished run keeps trying to record its outcome while the database is unreachable.
RECORD_RETRY_S = (1.0, 2.0, 4.0, 8.0)
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


class EvaluationPhases:
    """Evaluation phases from `EvaluationHooks.should_stop`, which ml asks before each model and once
    after the last: 'scoring <name>' for each model, then 'computing the report'."""

    def __init__(self, watcher: RunWatcher, model_names: list[str]) -> None:
        self.watcher, self.names, self._asked = watcher, model_names, 0

    def should_stop(self) -> bool:
        index, self._asked = self._asked, self._asked + 1
        stop = self.watcher.should_stop()
        if not stop:
            phase = f"scoring {self.names[index]}" if index < len(self.names) else "computing the report"
            self.watcher.on_phase(phase)
        return stop


def run_job(
    runtime: WorkerRuntime, job_id: str, worker: str, body: Callable[[WorkerRuntime, Job], None]
) -> None:
    """Claim the job, run `body` under a heartbeat, and turn any exception into a recorded outcome."""
    with runtime.database.transaction() as session:
        job = runs.claim(session, job_id, worker)
    if job is None:
        log.info("job %s is not queued (already taken, finished or cancelled): nothing to do", job_id)
        return
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
    with runtime.database.transaction() as session:
        recorded = runs.record_failure(session, job.id, attempt, error)
        if not recorded:
            recorded = runs.record_cancelled_if_requested(session, job.id, attempt)
    _remove_outputs(runtime, job, attempt, job_ended=recorded)
    log.info("job %s attempt %d failed (recorded: %s)", job.id, attempt, recorded)


def _finish_cancelled(runtime: WorkerRuntime, job: Job, attempt: int) -> None:
    with runtime.database.transaction() as session:
        recorded = runs.record_cancelled(session, job.id, attempt)
    _remove_outputs(runtime, job, attempt, job_ended=recorded)
    log.info("job %s attempt %d stopped (cancelled recorded: %s)", job.id, attempt, recorded)


def _remove_outputs(runtime: WorkerRuntime, job: Job, attempt: int, *, job_ended: bool) -> None:
    """A run that ended the job (it held it) clears every attempt's files: no attempt can publish any
    more. A run that no longer held the job removes only its own: the model may be another attempt's."""
    if not job.output_model_id:
        return
    try:
        if job_ended:
            runtime.store.remove_model(job.output_model_id)
        else:
            runtime.store.discard_attempt(job.output_model_id, attempt)
    except StoreError as error:  # the store is down: the sweeper removes them once it is back
        log.warning("job %s: its files were not removed (%s)", job.id, error.code)


def finetune_body(runtime: WorkerRuntime, job: Job) -> None:
    from ml.config import TrainConfig
    from ml.finetune import TrainHooks, finetune

    with runtime.database.session() as session:
        inputs = runs.finetune_inputs(session, runtime.settings, job)
    assert job.output_model_id is not None and job.method is not None and job.stage is not None
    # Each attempt writes a directory of its own: a reaped attempt that is still alive cannot
    # overwrite or delete what this one writes, nor this one what it writes.
    out_dir = runtime.store.attempt_dir(job.output_model_id, job.attempt)
    runtime.store.discard_attempt(job.output_model_id, job.attempt)
    watcher = RunWatcher(runtime, job.id, job.attempt)
    config = TrainConfig.for_stage(job.stage, job.method, job.hyperparameters)
    manifest = finetune(
        inputs.train_csv,
        config,
        out_dir,
        model_id=job.output_model_id,
        base_model=job.base_model,
        parent_dir=inputs.parent_dir,
        parent_train_csv=inputs.parent_train_csv,
        hooks=TrainHooks(
            on_progress=watcher.on_progress, should_stop=watcher.should_stop, on_phase=watcher.on_phase
        ),
    )
    if _record_finetune(runtime, job, manifest):
        log.info("job %s attempt %d succeeded: model %s", job.id, job.attempt, job.output_model_id)
        return
    # Cancelled after the last step, or reaped: this attempt's files go, and nothing else.
    runtime.store.discard_attempt(job.output_model_id, job.attempt)
    cancelled = _record_cancel_if_requested(runtime, job)
    log.info(
        "job %s attempt %d finished training but was not recorded (cancelled: %s)",
        job.id,
        job.attempt,
        cancelled,
    )


def _record_finetune(runtime: WorkerRuntime, job: Job, manifest: dict) -> bool:
    """Record the success and publish the model, in one transaction; retried while the database is
    unreachable, since a finished run is worth keeping. True when the job is this attempt's success."""
    store, model_id, attempt = runtime.store, job.output_model_id, job.attempt
    assert model_id is not None
    # Durable where every host can read it, and named by no row yet: invisible until the commit.
    model_key = store.stage_model(model_id, attempt)
    for pause in (*RECORD_RETRY_S, None):
        try:
            with runtime.database.transaction() as session:
                return runs.record_finetune_success(
                    session,
                    job,
                    attempt,
                    manifest,
                    model_key,
                    publish=lambda: store.publish_model(model_id, attempt),
                )
        except DBAPIError as error:
            if pause is None:
                raise
            log.warning("job %s: recording the result failed (%s); retrying", job.id, type(error).__name__)
            time.sleep(pause)
            if _committed_despite_error(runtime, job):
                return True


def _committed_despite_error(runtime: WorkerRuntime, job: Job) -> bool:
    """After a failed commit: True if it went through after all. Otherwise a model directory the
    transaction published goes back to this attempt's own directory before the next try."""
    try:
        with runtime.database.session() as session:
            state = runs.run_state(session, job.id)
    except DBAPIError:
        return False
    if state is not None and state.status == JobStatus.succeeded and state.attempt == job.attempt:
        return True
    assert job.output_model_id is not None
    if state is not None and state.owned_by(job.attempt):
        runtime.store.unpublish_model(job.output_model_id, job.attempt)
    return False


def evaluation_body(runtime: WorkerRuntime, job: Job) -> None:
    """Score the test set one model at a time (stopping between models if cancelled), then store the
    report and the arrays the plots are drawn from."""
    from ml.evaluate import EvaluationHooks, EvaluationModel, evaluate_models
    from ml.model_cache import ModelCache

    with runtime.database.session() as session:
        inputs = runs.evaluation_inputs(session, runtime.settings, job)
    models = [
        EvaluationModel(
            model.name, model.model_id, model.model_dir, threshold=model.threshold, kind=model.kind
        )
        for model in inputs.models
    ]
    watcher = RunWatcher(runtime, job.id, job.attempt)
    phases = EvaluationPhases(watcher, [model.name for model in models])
    watcher.on_phase("preparing data")
    report, arrays = evaluate_models(
        inputs.test_csv,
        models,
        cache=ModelCache(max_models=len(models)),
        base_model=job.base_model,
        n_resamples=inputs.n_resamples,
        seed=inputs.seed,
        hooks=EvaluationHooks(should_stop=phases.should_stop),
        subgroup_columns=inputs.subgroup_columns,
    )
    _store_evaluation(runtime, job, report, arrays)


def _store_evaluation(runtime: WorkerRuntime, job: Job, report: dict, arrays: dict[str, np.ndarray]) -> None:
    from ml.evaluate import arrays_bytes

    evaluation_id = uuid.uuid4().hex
    relative = f"evaluations/{evaluation_id}.npz"
    runtime.store.put_bytes(relative, arrays_bytes(arrays))
    with runtime.database.transaction() as session:
        recorded = runs.record_evaluation_success(session, job, job.attempt, evaluation_id, report, relative)
    if not recorded:
        runtime.store.delete_file(relative)
        _record_cancel_if_requested(runtime, job)


def _record_cancel_if_requested(runtime: WorkerRuntime, job: Job) -> bool:
    """A run that finished but was not recorded: it ends as cancelled if that is why."""
    with runtime.database.transaction() as session:
        return runs.record_cancelled_if_requested(session, job.id, job.attempt)
