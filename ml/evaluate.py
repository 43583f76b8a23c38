"""Compare models on new labelled notes: score each model once, then report with confidence."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.architectures import resolve_base_model
from ml.baseline import load_baseline
from ml.data import DatasetSummary, LabeledNotes, inspect_csv, read_group_columns
from ml.errors import Cancelled, UserError
from ml.model_cache import ModelCache
from ml.report import Grouping, ModelOutput, column_grouping, evaluate_outputs, note_length_grouping
from ml.vocabulary import DEFAULT_POOLING, MAX_MODELS
from models_store.layout import WEIGHTS_HASHED, weights_sha256


@dataclass(frozen=True)
class EvaluationModel:
    name: str
    model_id: str | None
    model_dir: Path | None  # None = the untrained base model
    threshold: float | None = None  # the caller's decision threshold; None = the model's stored one
    kind: str = "model"  # "model", or "baseline": the TF-IDF baseline stored in model_dir


@dataclass
class EvaluationHooks:
    # Asked before each model and once after the last, so a cancel lands between two models.
    should_stop: Callable[[], bool] | None = None


class EvaluationCancelled(Cancelled):
    """The caller asked to stop (should_stop returned True); no report was made."""


def score_models(
    texts: list[str],
    models: list[EvaluationModel],
    *,
    cache: ModelCache,
    base_model: str | None = None,
    hooks: EvaluationHooks | None = None,
) -> list[ModelOutput]:
    """P(died) per note for each model (temperature applied), with each model's threshold."""
    should_stop = (hooks or EvaluationHooks()).should_stop or (lambda: False)
    outputs = []
    for model in models:
        if should_stop():
            raise EvaluationCancelled()
        probabilities, stored_threshold = _scores(model, texts, cache, base_model)
        threshold = stored_threshold if model.threshold is None else model.threshold
        outputs.append(ModelOutput(model.name, model.model_id, probabilities, threshold))
    if should_stop():
        raise EvaluationCancelled()
    return outputs


def _scores(
    model: EvaluationModel, texts: list[str], cache: ModelCache, base_model: str | None
) -> tuple[np.ndarray, float]:
    """P(died) per note and the stored threshold, of the network or of its TF-IDF baseline."""
    if model.kind == "baseline":
        assert model.model_dir is not None, "a baseline belongs to a fine-tuned model's directory"
        baseline = load_baseline(model.model_dir)
        return baseline.predict_proba(texts), baseline.threshold
    scored = cache.score(model.model_dir, texts, base_model=base_model)
    return scored.probabilities, scored.threshold


def evaluate_models(
    test_csv: Path | bytes,
    models: list[EvaluationModel],
    *,
    cache: ModelCache,
    base_model: str | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    hooks: EvaluationHooks | None = None,
    subgroup_columns: Sequence[str] = (),
) -> tuple[dict, dict[str, np.ndarray]]:
    """(report, arrays): the JSON report, and y_true plus each model's probabilities for plots.

    The report's subgroups are always by note length and also by each of `subgroup_columns`, extra
    categorical columns of the test CSV."""
    if not 1 <= len(models) <= MAX_MODELS:
        raise UserError(f"an evaluation compares 1 to {MAX_MODELS} models, got {len(models)}")
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise UserError("model names in one evaluation must be unique")
    base_model = resolve_base_model(base_model)
    raw = test_csv if isinstance(test_csv, bytes) else Path(test_csv).read_bytes()
    notes, summary = inspect_csv(raw, base_model=base_model)
    # Read before scoring, so a missing or unusable column fails fast.
    groupings = subgroup_groupings(raw, notes, subgroup_columns)
    outputs = score_models(notes.texts, models, cache=cache, base_model=base_model, hooks=hooks)
    report = evaluate_outputs(notes.labels, outputs, n_resamples=n_resamples, seed=seed, groupings=groupings)
    report["data"] = summary.to_dict()
    report["data_checks"] = data_checks(summary)
    report["base_model_weights"] = model_weights(None, base_model)
    for entry, model in zip(report["models"], models, strict=True):
        entry["threshold_source"] = "stored" if model.threshold is None else "request"
        entry["weights"] = model_weights(model.model_dir, base_model)
        entry["kind"] = model.kind
    return report, plot_arrays(notes.labels, outputs)


def subgroup_groupings(raw: bytes, notes: LabeledNotes, columns: Sequence[str]) -> list[Grouping]:
    """Note length tertiles (in characters: the same for every model, whatever its tokenizer), then
    each requested column."""
    groupings = [note_length_grouping([len(text) for text in notes.texts])]
    if columns:
        values = read_group_columns(raw, columns)
        groupings += [column_grouping(column, values[column]) for column in columns]
    return groupings


def data_checks(summary: DatasetSummary) -> dict:
    """The notes a reviewer should know about, by row number: truncated notes, and empty ones."""
    unit = "tokens of a note's longest sentence" if DEFAULT_POOLING == "sentences" else "tokens per note"
    return {
        "truncated": {
            "count": summary.truncated_at_max_length,
            "rows": summary.truncated_rows,
            "rows_listed": f"the first {len(summary.truncated_rows)} of {summary.truncated_at_max_length}",
            "max_length": summary.max_length,
            "measured_in": f"{unit} ({DEFAULT_POOLING} pooling)",
        },
        "empty_notes": {
            "count": 0,
            "note": "a test CSV with an empty note is refused when it is read (error empty_text)",
        },
    }


def model_weights(model_dir: Path | None, base_model: str) -> dict:
    """Which weights were scored: a sha256 of the model directory's weight files, or for the base model
    (model_dir None) of its checkpoint's; a base model that is no local directory is hashed by name."""
    directory = Path(model_dir) if model_dir is not None else Path(base_model)
    digest = weights_sha256(directory) if directory.is_dir() else None
    if digest is not None:
        return {"sha256": digest, "hashed": WEIGHTS_HASHED}
    if model_dir is None:
        name_digest = hashlib.sha256(base_model.encode("utf-8")).hexdigest()
        return {"sha256": name_digest, "hashed": "sha256 of the base model's name (no local weight files)"}
    return {"sha256": None, "hashed": "no weight files found in the model directory"}


def plot_arrays(labels: np.ndarray, outputs: list[ModelOutput]) -> dict[str, np.ndarray]:
    """What an evaluation saves (np.savez) so its plots can be drawn later without the notes."""
    arrays = {"y_true": labels, **{f"prob:{o.name}": o.prob for o in outputs}}
    arrays.update({f"threshold:{o.name}": np.asarray([o.threshold]) for o in outputs})
    return arrays


def arrays_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The arrays as one .npz file's bytes (what `plot_arrays` returns, ready to store)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def outputs_from_arrays(arrays: dict[str, np.ndarray], report: dict) -> tuple[np.ndarray, list[ModelOutput]]:
    """Rebuild plot inputs from saved arrays (np.load of what evaluate_models returned)."""
    outputs = [
        ModelOutput(
            entry["name"],
            entry.get("model_id"),
            np.asarray(arrays[f"prob:{entry['name']}"]),
            float(np.asarray(arrays[f"threshold:{entry['name']}"])[0]),
        )
        for entry in report["models"]
    ]
    return np.asarray(arrays["y_true"]), outputs
