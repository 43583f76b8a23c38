"""A job's run once a worker holds it: read the inputs, call ml, publish what it made, record the
outcome, clean up after a failure or a cancel. All of it is here, in one place.

The worker keeps what only a worker process can do (worker/execution.py): claim the job, keep its
heartbeat, watch for a cancel, and turn an exception into a message fit to store. It hands each run
a `RunContext` (the database, the settings, the store) and `RunHooks` (its cancel watcher and
progress writer); the steps of a run that touch the database are in core/services/runs.py.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError

from core.db.models import Job, JobStatus
from core.db.session import Database
from core.services import runs
from core.settings import Settings
from models_store.artifacts import ArtifactStore
from models_store.errors import StoreError

log = logging.getLogger("notetune.worker")

# How long a finished run keeps trying to record its outcome while the database is unreachable.
RECORD_RETRY_S = (1.0, 2.0, 4.0, 8.0)


class RunContext(Protocol):
    """What a run uses (a worker's runtime is one)."""

    settings: Settings
    database: Database
    store: ArtifactStore


class RunHooks(Protocol):
    """A run's link to its worker: 'stop' when cancelled or no longer this run's; progress and phases."""

    def should_stop(self) -> bool: ...

    def on_phase(self, phase: str) -> None: ...

    def on_progress(self, progress: Any) -> None: ...


def run_finetune(context: RunContext, job: Job, hooks: RunHooks) -> None:
    """Train the job's model into this attempt's own directory, then record and publish it in one
    transaction; a run that no longer holds the job (cancelled after the last step, or reaped)
    removes its own files and nothing else."""
    from ml.finetune import TrainHooks, finetune

    with context.database.session() as session:
        inputs = runs.finetune_inputs(session, context.settings, job)
    assert job.output_model_id is not None and job.method is not None and job.stage is not None
    # Each attempt writes a directory of its own: a reaped attempt that is still alive cannot
    # overwrite or delete what this one writes, nor this one what it writes.
    out_dir = context.store.attempt_dir(job.output_model_id, job.attempt)
    context.store.discard_attempt(job.output_model_id, job.attempt)
    manifest = finetune(
        inputs.train_csv,
        runs.run_config(job),
        out_dir,
        model_id=job.output_model_id,
        base_model=job.base_model,
        parent_dir=inputs.parent_dir,
        parent_train_csv=inputs.parent_train_csv,
        hooks=TrainHooks(
            on_progress=hooks.on_progress, should_stop=hooks.should_stop, on_phase=hooks.on_phase
        ),
    )
    if _record_finetune(context, job, manifest):
        log.info("job %s attempt %d succeeded: model %s", job.id, job.attempt, job.output_model_id)
        return
    context.store.discard_attempt(job.output_model_id, job.attempt)
    cancelled = _record_cancel_if_requested(context, job)
    log.info(
        "job %s attempt %d finished training but was not recorded (cancelled: %s)",
        job.id,
        job.attempt,
        cancelled,
    )


def _record_finetune(context: RunContext, job: Job, manifest: dict) -> bool:
    """Record the success and publish the model, in one transaction; retried while the database is
    unreachable, since a finished run is worth keeping. True when the job is this attempt's success."""
    store, model_id, attempt = context.store, job.output_model_id, job.attempt
    assert model_id is not None
    # Durable where every host can read it, and named by no row yet: invisible until the commit.
    model_key = store.stage_model(model_id, attempt)
    for pause in (*RECORD_RETRY_S, None):
        try:
            with context.database.transaction() as session:
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
            if _committed_despite_error(context, job):
                return True


def _committed_despite_error(context: RunContext, job: Job) -> bool:
    """After a failed commit: True if it went through after all. Otherwise what the transaction
    published goes back to being this attempt's own before the next try."""
    try:
        with context.database.session() as session:
            state = runs.run_state(session, job.id)
    except DBAPIError:
        return False
    if state is not None and state.status == JobStatus.succeeded and state.attempt == job.attempt:
        return True
    assert job.output_model_id is not None
    if state is not None and state.owned_by(job.attempt):
        context.store.unpublish_model(job.output_model_id, job.attempt)
    return False


class EvaluationPhases:
    """Evaluation phases from `EvaluationHooks.should_stop`, which ml asks before each model and once
    after the last: 'scoring <name>' for each model, then 'computing the report'."""

    def __init__(self, hooks: RunHooks, model_names: list[str]) -> None:
        self.hooks, self.names, self._asked = hooks, model_names, 0

    def should_stop(self) -> bool:
        index, self._asked = self._asked, self._asked + 1
        stop = self.hooks.should_stop()
        if not stop:
            phase = f"scoring {self.names[index]}" if index < len(self.names) else "computing the report"
            self.hooks.on_phase(phase)
        return stop


def run_evaluation(context: RunContext, job: Job, hooks: RunHooks) -> None:
    """Score the test set one model at a time (stopping between models if cancelled), then store the
    report and the arrays the plots are drawn from."""
    from ml.evaluate import EvaluationHooks, EvaluationModel, evaluate_models
    from ml.model_cache import ModelCache

    with context.database.session() as session:
        inputs = runs.evaluation_inputs(session, context.settings, job)
    models = [
        EvaluationModel(
            model.name, model.model_id, model.model_dir, threshold=model.threshold, kind=model.kind
        )
        for model in inputs.models
    ]
    phases = EvaluationPhases(hooks, [model.name for model in models])
    hooks.on_phase("preparing data")
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
    _store_evaluation(context, job, report, arrays)


def _store_evaluation(context: RunContext, job: Job, report: dict, arrays: dict[str, Any]) -> None:
    from ml.evaluate import arrays_bytes

    evaluation_id = uuid.uuid4().hex
    relative = f"evaluations/{evaluation_id}.npz"
    context.store.put_bytes(relative, arrays_bytes(arrays))
    with context.database.transaction() as session:
        recorded = runs.record_evaluation_success(session, job, job.attempt, evaluation_id, report, relative)
    if not recorded:
        context.store.delete_file(relative)
        _record_cancel_if_requested(context, job)


def finish_failed(context: RunContext, job: Job, attempt: int, error: str) -> bool:
    """Record the failure (or the cancel that explains it); returns whether it was recorded."""
    with context.database.transaction() as session:
        recorded = runs.record_failure(session, job.id, attempt, error)
        if not recorded:
            recorded = runs.record_cancelled_if_requested(session, job.id, attempt)
    _remove_outputs(context, job, attempt, job_ended=recorded)
    return recorded


def finish_cancelled(context: RunContext, job: Job, attempt: int) -> bool:
    with context.database.transaction() as session:
        recorded = runs.record_cancelled(session, job.id, attempt)
    _remove_outputs(context, job, attempt, job_ended=recorded)
    return recorded


def _remove_outputs(context: RunContext, job: Job, attempt: int, *, job_ended: bool) -> None:
    """A run that ended the job (it held it) clears every attempt's files: no attempt can publish any
    more. A run that no longer held the job removes only its own: the model may be another attempt's."""
    if not job.output_model_id:
        return
    try:
        if job_ended:
            context.store.remove_model(job.output_model_id)
        else:
            context.store.discard_attempt(job.output_model_id, attempt)
    except StoreError as error:  # the store is down: the sweeper removes them once it is back
        log.warning("job %s: its files were not removed (%s)", job.id, error.code)


def _record_cancel_if_requested(context: RunContext, job: Job) -> bool:
    """A run that finished but was not recorded: it ends as cancelled if that is why."""
    with context.database.transaction() as session:
        return runs.record_cancelled_if_requested(session, job.id, job.attempt)
