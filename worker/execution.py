"""Running one job inside a worker: claim, train with heartbeats and progress, record the outcome.

Note text never leaves this module in a log line, an error message or a task argument: errors are
stored as a one-line message chosen here, and logged tracebacks keep the stack without the message.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from core.db.models import Job
from core.db.repositories import DatasetRepository, ModelRepository
from core.services import runs
from core.services.jobs import progress_record
from ml.errors import UserError
from worker.runtime import WorkerRuntime

if TYPE_CHECKING:  # imported lazily at run time: they load torch
    from ml.evaluate import EvaluationModel
    from ml.report import ModelOutput

log = logging.getLogger("notetune.worker")

STOP_CHECK_INTERVAL_S = 0.5
PROGRESS_WRITE_INTERVAL_S = 1.0
MAX_ERROR_CHARS = 500


def safe_error_message(error: BaseException, job_id: str, attempt: int) -> str:
    if isinstance(error, UserError):
        message = getattr(error, "message", None) or str(error)
        return " ".join(message.split())[:MAX_ERROR_CHARS]
    return (
        f"the job failed with {type(error).__name__} on attempt {attempt}; "
        f"the worker log has the stack for job {job_id}"
    )


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
    """The training hooks: progress to the database, and 'stop' when cancelled or no longer ours."""

    def __init__(self, runtime: WorkerRuntime, job_id: str, attempt: int) -> None:
        self.runtime, self.job_id, self.attempt = runtime, job_id, attempt
        self._last_check = 0.0
        self._last_write = 0.0
        self._stop = False

    def should_stop(self) -> bool:
        now = time.monotonic()
        if self._stop or now - self._last_check < STOP_CHECK_INTERVAL_S:
            return self._stop
        self._last_check = now
        with self.runtime.database.session() as session:
            state = runs.run_state(session, self.job_id)
        self._stop = state is None or state.cancel_requested or not state.owned_by(self.attempt)
        return self._stop

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
        epoch_metrics = None
        if is_epoch_end:
            epoch_metrics = {"epoch": progress.epoch, "epochs": progress.epochs, "loss": progress.loss}
            epoch_metrics["validation"] = progress.metrics
        with self.runtime.database.transaction() as session:
            runs.record_progress(session, self.job_id, self.attempt, record, epoch_metrics)


@dataclass(frozen=True)
class FinetuneInputs:
    job: Job
    train_csv: Path
    parent_dir: Path | None
    parent_train_csv: Path | None


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
        except Exception as error:
            from ml.finetune import TrainingCancelled

            if isinstance(error, TrainingCancelled | EvaluationCancelled):
                _finish_cancelled(runtime, job, attempt)
            else:
                log_failure(job_id, attempt, error)
                _finish_failed(runtime, job, attempt, safe_error_message(error, job_id, attempt))


def _finish_failed(runtime: WorkerRuntime, job: Job, attempt: int, error: str) -> None:
    _remove_outputs(runtime, job)
    with runtime.database.transaction() as session:
        recorded = runs.record_failure(session, job.id, attempt, error)
        if not recorded:
            recorded = runs.record_cancelled_if_requested(session, job.id, attempt)
    log.info("job %s attempt %d failed (recorded: %s)", job.id, attempt, recorded)


def _finish_cancelled(runtime: WorkerRuntime, job: Job, attempt: int) -> None:
    _remove_outputs(runtime, job)
    with runtime.database.transaction() as session:
        recorded = runs.record_cancelled(session, job.id, attempt)
    log.info("job %s attempt %d stopped (cancelled recorded: %s)", job.id, attempt, recorded)


def _remove_outputs(runtime: WorkerRuntime, job: Job) -> None:
    if job.output_model_id:
        runtime.store.remove(job.output_model_id)


def finetune_body(runtime: WorkerRuntime, job: Job) -> None:
    from ml.config import TrainConfig
    from ml.finetune import TrainHooks, finetune

    inputs = _finetune_inputs(runtime, job)
    assert job.output_model_id is not None and job.method is not None and job.stage is not None
    # An earlier attempt that died mid-write may have left a temporary directory behind.
    runtime.store.remove(job.output_model_id)
    out_dir = runtime.store.path_for(job.output_model_id)
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
        hooks=TrainHooks(on_progress=watcher.on_progress, should_stop=watcher.should_stop),
    )
    relative_path = str(out_dir.relative_to(runtime.store.root))
    with runtime.database.transaction() as session:
        recorded = runs.record_finetune_success(session, job, job.attempt, manifest, relative_path)
    if recorded:
        log.info("job %s attempt %d succeeded: model %s", job.id, job.attempt, job.output_model_id)
        return
    # Cancelled after the last step, or reaped: no model row, so the files go too.
    runtime.store.remove(job.output_model_id)
    with runtime.database.transaction() as session:
        cancelled = runs.record_cancelled_if_requested(session, job.id, job.attempt)
    log.info(
        "job %s attempt %d finished training but was not recorded (cancelled: %s)",
        job.id,
        job.attempt,
        cancelled,
    )


def _finetune_inputs(runtime: WorkerRuntime, job: Job) -> FinetuneInputs:
    data_root = runtime.settings.data_dir.resolve()
    with runtime.database.session() as session:
        datasets, models = DatasetRepository(session), ModelRepository(session)
        train = datasets.get(job.train_dataset_id or "")
        if train is None:
            raise LookupError("training dataset row is missing")
        parent_dir = parent_train_csv = None
        if job.parent_model_id is not None:
            parent = models.get(job.parent_model_id)
            if parent is None:
                raise LookupError("parent model row is missing")
            parent_dir = runtime.store.root / parent.path
            parent_data = datasets.get(parent.train_dataset_id) if parent.train_dataset_id else None
            parent_train_csv = data_root / parent_data.path if parent_data is not None else None
        return FinetuneInputs(job, data_root / train.path, parent_dir, parent_train_csv)


@dataclass(frozen=True)
class EvaluatedModel:
    model: EvaluationModel
    threshold_override: float | None


class EvaluationCancelled(Exception):
    """Raised between two models when the job was cancelled (or is no longer this run's)."""


def evaluation_body(runtime: WorkerRuntime, job: Job) -> None:
    """Score the test set one model at a time (stopping between models if cancelled), then store the
    report and the arrays the plots are drawn from."""
    from ml.data import inspect_csv
    from ml.evaluate import plot_arrays
    from ml.modeling import resolve_base_model
    from ml.report import evaluate_outputs

    test_csv, models = _evaluation_inputs(runtime, job)
    base_model = resolve_base_model(job.base_model)
    notes, summary = inspect_csv(test_csv, base_model=base_model)
    outputs = _scored_outputs(runtime, job, notes.texts, models, base_model)
    options = job.evaluation_options or {}
    report = evaluate_outputs(
        notes.labels,
        outputs,
        n_resamples=int(options.get("n_resamples", 1000)),
        seed=int(options.get("seed", 0)),
    )
    report["data"] = summary.to_dict()
    for entry, model in zip(report["models"], models, strict=True):
        entry["threshold_source"] = "stored" if model.threshold_override is None else "request"
    _store_evaluation(runtime, job, report, plot_arrays(notes.labels, outputs))


def _scored_outputs(
    runtime: WorkerRuntime, job: Job, texts: list[str], models: list[EvaluatedModel], base_model: str
) -> list[ModelOutput]:
    """One ModelOutput per model, with the request's threshold where it overrides the stored one."""
    from ml.evaluate import score_models
    from ml.model_cache import ModelCache

    cache = ModelCache(max_models=len(models))
    outputs = []
    for evaluated in models:
        if _stop_requested(runtime, job):
            raise EvaluationCancelled
        [output] = score_models(texts, [evaluated.model], cache=cache, base_model=base_model)
        if evaluated.threshold_override is not None:
            output = replace(output, threshold=evaluated.threshold_override)
        outputs.append(output)
    if _stop_requested(runtime, job):
        raise EvaluationCancelled
    return outputs


def _stop_requested(runtime: WorkerRuntime, job: Job) -> bool:
    with runtime.database.session() as session:
        state = runs.run_state(session, job.id)
    return state is None or state.cancel_requested or not state.owned_by(job.attempt)


def _evaluation_inputs(runtime: WorkerRuntime, job: Job) -> tuple[Path, list[EvaluatedModel]]:
    from ml.evaluate import EvaluationModel

    with runtime.database.session() as session:
        test = DatasetRepository(session).get(job.test_dataset_id or "")
        if test is None:
            raise LookupError("test dataset row is missing")
        models = []
        for entry in job.evaluation_models or []:
            model_dir = None
            if entry.get("model_id"):
                row = ModelRepository(session).get(entry["model_id"])
                if row is None:
                    raise LookupError("an evaluated model row is missing")
                model_dir = runtime.store.root / row.path
            model = EvaluationModel(name=entry["name"], model_id=entry.get("model_id"), model_dir=model_dir)
            models.append(EvaluatedModel(model, entry.get("threshold_override")))
        return runtime.settings.data_dir.resolve() / test.path, models


def _store_evaluation(runtime: WorkerRuntime, job: Job, report: dict, arrays: dict[str, np.ndarray]) -> None:
    evaluation_id = uuid.uuid4().hex
    relative = f"evaluations/{evaluation_id}.npz"
    target = runtime.settings.data_dir.resolve() / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp.npz")
    np.savez(temporary, **arrays)
    temporary.replace(target)
    with runtime.database.transaction() as session:
        recorded = runs.record_evaluation_success(session, job, job.attempt, evaluation_id, report, relative)
    if not recorded:
        target.unlink(missing_ok=True)
        with runtime.database.transaction() as session:
            runs.record_cancelled_if_requested(session, job.id, job.attempt)
