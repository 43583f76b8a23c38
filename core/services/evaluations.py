"""Evaluation jobs: compare models (and the untrained base) on a held-out test set."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

from sqlalchemy.orm import Session

from core.db.models import Dataset, Evaluation, Job, JobKind, Model
from core.db.repositories import EvaluationRepository
from core.errors import InvalidRequest, NotFound, safe_ref
from core.services.datasets import dataset_file, dataset_for_job
from core.services.jobs import add_queued_job, finished_model, idempotent_replay, request_fingerprint
from core.services.models import configured_base_model
from core.settings import Settings
from core.storage import artifact_store
from ml.vocabulary import BASE, BASELINE_PREFIX, MAX_MODELS, REPORT_TABLES
from models_store.errors import ObjectMissing


@dataclass(frozen=True)
class EvaluationSpec:
    dataset_field: ClassVar[str] = "test_dataset_id"  # the field a CSV sent with the request fills in

    test_dataset_id: str
    # Model ids, BASE, or BASELINE_PREFIX + a model id (that model's TF-IDF baseline); the first is
    # the reference.
    models: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)  # replaces a listed model's stored one
    n_resamples: int = 1000
    seed: int = 0
    name: str | None = None
    # Extra categorical columns of the test CSV to report performance by (note length always is).
    subgroup_columns: list[str] = field(default_factory=list)


def create_evaluation_job(
    session: Session,
    settings: Settings,
    spec: EvaluationSpec,
    *,
    organisation_id: str,
    api_key_id: str | None,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """The organisation's evaluation job: its test set and every model it compares are its own."""
    fingerprint = request_fingerprint(JobKind.evaluate, asdict(spec))
    existing = idempotent_replay(session, organisation_id, api_key_id, idempotency_key, fingerprint)
    if existing is not None:
        return existing, False
    dataset = dataset_for_job(session, spec.test_dataset_id, organisation_id=organisation_id)
    _check_model_list(spec)
    _check_size(settings, dataset.rows, spec.n_resamples)
    _check_subgroup_columns(settings, dataset, spec.subgroup_columns)
    entries, base_models = [], set()
    for name in spec.models:
        override = spec.thresholds.get(name)
        if name == BASE:
            entries.append({"name": BASE, "model_id": None, "threshold_override": override})
            continue
        if name.startswith(BASELINE_PREFIX):
            entries.append(_baseline_entry(session, name, organisation_id, override))
            continue
        model = _evaluated_model(session, name, organisation_id)
        base_models.add(model.base_model)
        entries.append({"name": model.id, "model_id": model.id, "threshold_override": override})
    if len(base_models) > 1:
        raise InvalidRequest(
            "the models were trained from different base models; evaluate them separately",
            code="mixed_base_models",
        )
    job = add_queued_job(
        session,
        organisation_id,
        Job(
            kind=JobKind.evaluate,
            name=spec.name,
            api_key_id=api_key_id,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            base_model=next(iter(base_models)) if base_models else configured_base_model(settings),
            test_dataset_id=dataset.id,
            evaluation_models=entries,
            evaluation_options={
                "n_resamples": spec.n_resamples,
                "seed": spec.seed,
                "subgroup_columns": list(spec.subgroup_columns),
            },
            hyperparameters={},
        ),
    )
    return job, True


def _evaluated_model(session: Session, model_id: str, organisation_id: str) -> Model:
    return finished_model(
        session, model_id, organisation_id, role="an evaluated model", use="evaluated", code="model_not_ready"
    )


def _baseline_entry(session: Session, name: str, organisation_id: str, override: float | None) -> dict:
    """A model's TF-IDF baseline: the model must be one the organisation may evaluate (the same 404
    for another organisation's id as for none), and must have been saved with a baseline. A
    baseline reads the notes itself, so its model's base model does not constrain the others."""
    model = _evaluated_model(session, name.removeprefix(BASELINE_PREFIX), organisation_id)
    if not has_stored_baseline(model):
        raise InvalidRequest(
            f"model {model.id} has no stored baseline: it was trained before baselines were kept",
            code="no_stored_baseline",
            details={"model_id": model.id},
        )
    return {
        "name": BASELINE_PREFIX + model.id,
        "model_id": model.id,
        "threshold_override": override,
        "kind": "baseline",
    }


def has_stored_baseline(model: Model) -> bool:
    """Models trained since baselines were kept carry one; older ones do not."""
    return "baseline" in (model.manifest or {})


def _check_model_list(spec: EvaluationSpec) -> None:
    if not 1 <= len(spec.models) <= MAX_MODELS:
        raise InvalidRequest(f"an evaluation compares 1 to {MAX_MODELS} models", code="model_count")
    if len(set(spec.models)) != len(spec.models):
        raise InvalidRequest("'models' lists a model twice", code="duplicate_model")
    unlisted = [name for name in spec.thresholds if name not in spec.models]
    if unlisted:
        raise InvalidRequest(
            "'thresholds' names a model that is not in 'models'",
            code="threshold_for_unlisted_model",
            details={"models": [_echoed(name) for name in unlisted]},
        )
    out_of_range = [name for name, value in spec.thresholds.items() if not 0.0 <= value <= 1.0]
    if out_of_range:
        raise InvalidRequest("a threshold must be between 0 and 1", code="threshold_out_of_range")


def _echoed(name: str) -> str:
    """A listed name as an error may repeat it: BASE, or an id of ours (with its baseline prefix)."""
    if name == BASE:
        return BASE
    if name.startswith(BASELINE_PREFIX):
        return BASELINE_PREFIX + safe_ref(name.removeprefix(BASELINE_PREFIX))
    return safe_ref(name)


def _check_size(settings: Settings, rows: int, n_resamples: int) -> None:
    """Rows x resamples bounds the bootstrap's time (its memory is bounded by drawing in blocks)."""
    limit = settings.max_evaluation_cells
    if rows * n_resamples > limit:
        raise InvalidRequest(
            f"an evaluation may compute at most {limit} resampled rows (rows x n_resamples, setting "
            f"NOTETUNE_MAX_EVALUATION_CELLS); this one needs {rows * n_resamples}: use fewer resamples",
            code="evaluation_too_large",
            details={"limit": limit, "rows": rows, "n_resamples": n_resamples},
        )


def _check_subgroup_columns(settings: Settings, dataset: Dataset, columns: list[str]) -> None:
    """The columns exist in the stored test CSV and hold categories: refused now, not after scoring.
    The worker reads them with the same function, so the rule cannot differ."""
    if not columns:
        return
    from ml.data import read_group_columns

    read_group_columns(dataset_file(settings, dataset), columns)


def get_evaluation(session: Session, evaluation_id: str, *, organisation_id: str) -> Evaluation:
    evaluation = EvaluationRepository(session, organisation_id).get(evaluation_id)
    if evaluation is None:
        raise NotFound.for_id("evaluation", evaluation_id)
    return evaluation


def evaluation_csv(evaluation: Evaluation, table: str = REPORT_TABLES[0]) -> str:
    """One table of the report (REPORT_TABLES) as CSV."""
    from ml.report import report_to_csv

    return report_to_csv(evaluation.report, table)


def plot_evaluation(
    session: Session,
    settings: Settings,
    evaluation_id: str,
    kind: str,
    *,
    organisation_id: str,
    width: int | None = None,
    height: int | None = None,
) -> bytes:
    """A PNG chart of the evaluated models, drawn from the scores stored beside the report."""
    import numpy as np

    from ml.evaluate import outputs_from_arrays
    from ml.plots import PIXEL_RANGE, plot_png

    size = {name: value for name, value in (("width_px", width), ("height_px", height)) if value is not None}
    low, high = PIXEL_RANGE
    if not all(low <= value <= high for value in size.values()):
        raise InvalidRequest(f"width and height must be between {low} and {high} pixels", code="plot_size")
    evaluation = get_evaluation(session, evaluation_id, organisation_id=organisation_id)
    try:
        path = artifact_store(settings).file_path(evaluation.arrays_path)
    except ObjectMissing:
        missing = "the evaluation's stored scores are missing"
        raise NotFound(missing, code="evaluation_arrays_missing") from None
    with np.load(path) as stored:
        arrays = {key: stored[key] for key in stored.files}
    y_true, outputs = outputs_from_arrays(arrays, evaluation.report)
    return plot_png(kind, y_true, outputs, **size)
