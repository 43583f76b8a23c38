"""What a worker reads and records while it runs a job: its input files, claim, progress, the outcome.

Each function is one step of a run and is called inside its own short transaction by the worker,
so the API sees progress as it happens. Every write is conditional on the run still owning the
job (same attempt, still running): a run that was reaped or cancelled cannot overwrite the outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import Dataset, Evaluation, Job, JobStatus, Model
from core.db.repositories import (
    DatasetRepository,
    EvaluationRepository,
    JobEventRepository,
    JobRunRepository,
    ModelRepository,
)
from core.errors import Conflict
from core.services.jobs import json_safe
from core.settings import Settings
from core.storage import artifact_store

# Manifest entries that summarise how well a model did; stored on the job and on the model row.
METRIC_KEYS = (
    "validation_metrics",
    "comparison",
    "baseline",
    "forgetting_check",
    "calibration",
    "best_epoch",
    "epochs_run",
    "stopped_early",
    "threshold",
    "threshold_note",
    "temperature",
    "trainable_parameters",
    "adalora_ranks",
    "interpolation",
)


def _shown_data_summary(manifest: dict) -> dict:
    """The manifest's data record without `path`: where the worker read the notes is the store's
    business (a continued fine-tune finds them by dataset id), not an API client's."""
    return {key: value for key, value in (manifest.get("data") or {}).items() if key != "path"}


@dataclass(frozen=True)
class FinetuneInputs:
    train_csv: Path
    parent_dir: Path | None  # None for a first fine-tune
    parent_train_csv: Path | None  # None when there is no parent, or its dataset row is gone


@dataclass(frozen=True)
class ModelToEvaluate:
    name: str
    model_id: str | None
    model_dir: Path | None  # None = the untrained base model
    threshold: float | None  # the request's threshold; None = the model's stored one
    kind: str = "model"  # "baseline": the TF-IDF baseline stored in model_dir


@dataclass(frozen=True)
class EvaluationInputs:
    test_csv: Path
    models: list[ModelToEvaluate]
    n_resamples: int
    seed: int
    subgroup_columns: list[str]


@dataclass(frozen=True)
class RunState:
    status: JobStatus
    attempt: int
    cancel_requested: bool

    def owned_by(self, attempt: int) -> bool:
        return self.status == JobStatus.running and self.attempt == attempt


# The phase a run reports from the moment it is claimed, before it has anything else to say.
STARTING = "starting"


def phase_record(phase: str) -> dict[str, Any]:
    return {"phase": phase}


def claim(session: Session, job_id: str, worker: str) -> Job | None:
    """queued -> running with attempt + 1; None when the job is not queued (a redelivery, a cancel)."""
    now = utcnow()
    jobs = JobRunRepository(session)
    if not jobs.claim(job_id, worker, now, phase_record(STARTING)):
        return None
    job = jobs.refreshed(job_id)
    assert job is not None
    JobEventRepository(session).add(
        job_id, "state", attempt=job.attempt, data={"status": "running", "worker": worker}
    )
    return job


def queued_job(session: Session, job_id: str) -> Job | None:
    job = JobRunRepository(session).refreshed(job_id)
    return job if job is not None and job.status == JobStatus.queued and not job.cancel_requested else None


def claim_fairest(session: Session, worker: str) -> Job | None:
    """Claim the queued job whose organisation's turn it is (JobRunRepository.fairest_queued); None
    when nothing is queued. A message names a job, but a worker takes it as a turn: every queued
    job has a message of its own (sent at submit, re-sent by the reaper and the monitor, and sent
    again when another job took its turn: worker/execution.py give_back_the_turn), so each message
    claims at most one job and none is left behind. Of two workers racing for a job, the loser
    tries the next."""
    for job_id in JobRunRepository(session).fairest_queued():
        job = claim(session, job_id, worker)
        if job is not None:
            return job
    return None


def run_state(session: Session, job_id: str) -> RunState | None:
    state = JobRunRepository(session).run_state(job_id)
    return RunState(*state) if state is not None else None


def stop_requested(session: Session, job_id: str, attempt: int) -> bool:
    """True when the run should stop: the job was cancelled, or it is no longer this attempt's."""
    state = run_state(session, job_id)
    return state is None or state.cancel_requested or not state.owned_by(attempt)


def heartbeat(session: Session, job_id: str, attempt: int) -> bool:
    """Stamped with the database's clock (the reaper's cut-off uses the same clock)."""
    return JobRunRepository(session).heartbeat(job_id, attempt)


def record_phase(session: Session, job_id: str, attempt: int, progress: dict[str, Any]) -> bool:
    """A new phase: the progress (its "phase" and the latest step figures, if any) and an event, so
    the job's timeline shows how long each phase took."""
    if not JobRunRepository(session).set_progress(job_id, attempt, json_safe(progress), utcnow()):
        return False
    JobEventRepository(session).add(job_id, "phase", attempt=attempt, data={"phase": progress.get("phase")})
    return True


def record_progress(
    session: Session,
    job_id: str,
    attempt: int,
    progress: dict[str, Any],
    epoch_metrics: dict[str, Any] | None = None,
) -> bool:
    if not JobRunRepository(session).set_progress(job_id, attempt, json_safe(progress), utcnow()):
        return False
    if epoch_metrics is not None:
        JobEventRepository(session).add(job_id, "epoch", attempt=attempt, data=json_safe(epoch_metrics))
    return True


def training_metrics(manifest: dict[str, Any]) -> dict[str, Any]:
    return json_safe({key: manifest[key] for key in METRIC_KEYS if key in manifest})


def record_finetune_success(
    session: Session,
    job: Job,
    attempt: int,
    manifest: dict[str, Any],
    model_path: str,
    publish: Callable[[], None] = lambda: None,
) -> bool:
    """running -> succeeded and the model row, together; False if the run no longer owns the job or a
    cancel was requested (even after the last step: the caller then records the cancel).

    `publish` puts the model's files in place. It runs only once this attempt has won the job, and
    before the commit: on PostgreSQL the job's row stays locked until then, so no reaper or other
    attempt can act on the job meanwhile, and a failed publish rolls the success back."""
    metrics = training_metrics(manifest)
    if not _succeed(session, job.id, attempt, metrics):
        return False
    assert job.output_model_id is not None
    ModelRepository(session, job.organisation_id).add(
        Model(
            id=job.output_model_id,
            name=job.name,
            job_id=job.id,
            parent_id=job.parent_model_id,
            method=manifest["method"],
            stage=int(manifest["stage"]),
            base_model=manifest["base_model"],
            path=model_path,
            train_dataset_id=job.train_dataset_id,
            hyperparameters=json_safe(manifest["hyperparameters"]),
            data_summary=json_safe(_shown_data_summary(manifest)),
            metrics=metrics,
            threshold=float(manifest["threshold"]),
            temperature=manifest.get("temperature"),
            manifest=json_safe(manifest),
            created_at=utcnow(),
        )
    )
    JobEventRepository(session).add(job.id, "state", attempt=attempt, data={"status": "succeeded"})
    session.flush()
    publish()
    return True


def record_evaluation_success(
    session: Session, job: Job, attempt: int, evaluation_id: str, report: dict[str, Any], arrays_path: str
) -> bool:
    summary = {"evaluation_id": evaluation_id}
    if not _succeed(session, job.id, attempt, summary):
        return False
    assert job.test_dataset_id is not None
    EvaluationRepository(session, job.organisation_id).add(
        Evaluation(
            id=evaluation_id,
            job_id=job.id,
            test_dataset_id=job.test_dataset_id,
            report=json_safe(report),
            arrays_path=arrays_path,
            created_at=utcnow(),
        )
    )
    JobEventRepository(session).add(job.id, "state", attempt=attempt, data={"status": "succeeded"})
    return True


def _succeed(session: Session, job_id: str, attempt: int, metrics: dict[str, Any]) -> bool:
    return JobRunRepository(session).finish(
        job_id, attempt, JobStatus.succeeded, utcnow(), unless_cancel_requested=True, metrics=metrics
    )


def record_cancelled_if_requested(session: Session, job_id: str, attempt: int) -> bool:
    """Ends the run as cancelled when it still owns the job and a cancel was requested."""
    state = run_state(session, job_id)
    if state is None or not state.owned_by(attempt) or not state.cancel_requested:
        return False
    return record_cancelled(session, job_id, attempt)


def record_failure(session: Session, job_id: str, attempt: int, error: str) -> bool:
    if not JobRunRepository(session).finish(job_id, attempt, JobStatus.failed, utcnow(), error=error):
        return False
    JobEventRepository(session).add(
        job_id, "state", attempt=attempt, data={"status": "failed", "error": error}
    )
    return True


def record_cancelled(session: Session, job_id: str, attempt: int) -> bool:
    if not JobRunRepository(session).finish(job_id, attempt, JobStatus.cancelled, utcnow()):
        return False
    JobEventRepository(session).add(job_id, "state", attempt=attempt, data={"status": "cancelled"})
    return True


def run_config(job: Job) -> Any:
    """The configuration (ml.config.TrainConfig) the job was resolved to at submit. A job queued before
    configurations were stored (migration 0004) has its resolved from its stage, method and settings."""
    from ml.config import TrainConfig

    assert job.method is not None and job.stage is not None
    if job.run_config is not None:
        return TrainConfig.from_dict(job.run_config)
    return TrainConfig.for_stage(job.stage, job.method, job.hyperparameters)


def finetune_inputs(session: Session, settings: Settings, job: Job) -> FinetuneInputs:
    """The files a fine-tune reads: its training CSV and, when it continues a model, the parent's.
    Everything is read as the job's organisation: a job never reads another organisation's rows."""
    store = artifact_store(settings)
    train = _readable_dataset(session, job, job.train_dataset_id, "training")
    if job.parent_model_id is None:
        return FinetuneInputs(store.file_path(train.path), None, None)
    parent = ModelRepository(session, job.organisation_id).get(job.parent_model_id)
    if parent is None:
        raise Conflict("the parent model was deleted after the job was queued", code="parent_model_deleted")
    # The parent's data feeds the forgetting check only: once deleted (or past retention) it is skipped.
    parent_data = DatasetRepository(session, job.organisation_id).get(parent.train_dataset_id or "")
    has_parent_data = parent_data is not None and parent_data.file_deleted_at is None
    return FinetuneInputs(
        store.file_path(train.path),
        store.model_dir(parent.path),
        store.file_path(parent_data.path) if has_parent_data else None,
    )


def evaluation_inputs(session: Session, settings: Settings, job: Job) -> EvaluationInputs:
    """The test CSV, each listed model's directory and threshold, and the report's options."""
    test = _readable_dataset(session, job, job.test_dataset_id, "test")
    models = [_model_to_evaluate(session, settings, job, entry) for entry in job.evaluation_models or []]
    options = job.evaluation_options or {}
    return EvaluationInputs(
        artifact_store(settings).file_path(test.path),
        models,
        n_resamples=int(options.get("n_resamples", 1000)),
        seed=int(options.get("seed", 0)),
        subgroup_columns=[str(column) for column in options.get("subgroup_columns", [])],
    )


def _readable_dataset(session: Session, job: Job, dataset_id: str | None, use: str) -> Dataset:
    dataset = DatasetRepository(session, job.organisation_id).get(dataset_id or "")
    if dataset is None:
        raise Conflict(f"the {use} dataset was deleted after the job was queued", code="dataset_deleted")
    if dataset.file_deleted_at is not None:
        raise Conflict(f"the {use} dataset's notes file was deleted", code="dataset_file_deleted")
    return dataset


def _model_to_evaluate(
    session: Session, settings: Settings, job: Job, entry: dict[str, Any]
) -> ModelToEvaluate:
    model_dir = None
    if entry.get("model_id"):
        row = ModelRepository(session, job.organisation_id).get(entry["model_id"])
        if row is None:
            raise Conflict("an evaluated model was deleted after the job was queued", code="model_deleted")
        model_dir = artifact_store(settings).model_dir(row.path)
    return ModelToEvaluate(
        entry["name"],
        entry.get("model_id"),
        model_dir,
        entry.get("threshold_override"),
        entry.get("kind", "model"),
    )
