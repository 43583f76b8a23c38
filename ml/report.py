"""Evaluation reports: metrics with bootstrap CIs for 1-8 models, comparisons, forgetting check, CSV export.

Input is already-computed probabilities (ModelOutput); nothing here touches models, files or the database.
All models are scored on the same bootstrap resamples (one seed), so CIs and paired differences are
reproducible and comparable.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from ml.metrics import (
    METRIC_NAMES,
    ONE_CLASS_REASON,
    as_labels,
    as_probabilities,
    as_threshold,
    binary_metrics,
)
from ml.stats import (
    BootstrapResamples,
    ci_table,
    delong_test,
    difference_table,
    mcnemar_test,
    metric_samples,
)
from ml.vocabulary import MAX_MODELS

ALPHA = 0.05
FORGETTING_METRICS = ("roc_auc", "f1", "sensitivity", "specificity", "accuracy")
THRESHOLD_KINDS = {"at_0_5": "0.5", "at_threshold": "decision"}
# A spreadsheet treats a cell starting with one of these as a formula (CSV injection).
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ModelOutput:
    name: str  # "base" or a model's display name
    model_id: str | None
    prob: np.ndarray  # P(died) per note, already temperature-scaled if the model has a temperature
    threshold: float  # the model's stored decision threshold


@dataclass(frozen=True)
class _ScoredModel:
    """One model's point metrics and bootstrap samples at 0.5 and at its stored threshold."""

    output: ModelOutput
    probs: np.ndarray
    points: dict[str, dict]  # THRESHOLD_KINDS key -> binary_metrics
    samples: dict[str, dict[str, np.ndarray]]  # THRESHOLD_KINDS key -> metric -> per-resample values


def _score_model(labels: np.ndarray, output: ModelOutput, indices: BootstrapResamples) -> _ScoredModel:
    probs = as_probabilities(output.prob, labels.size)
    threshold = as_threshold(output.threshold)
    at_half, at_stored = metric_samples(labels, probs, [0.5, threshold], indices)
    points = {
        "at_0_5": binary_metrics(labels, probs, 0.5),
        "at_threshold": binary_metrics(labels, probs, threshold),
    }
    return _ScoredModel(output, probs, points, {"at_0_5": at_half, "at_threshold": at_stored})


def _model_entry(scored: _ScoredModel) -> dict:
    entry = {
        "name": scored.output.name,
        "model_id": scored.output.model_id,
        "threshold": float(scored.output.threshold),
    }
    for kind in THRESHOLD_KINDS:
        entry[kind] = {
            **scored.points[kind],
            "ci": ci_table(scored.points[kind], scored.samples[kind], ALPHA),
        }
    return entry


def _delong_or_error(labels: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray) -> dict:
    try:
        return delong_test(labels, prob_a, prob_b)
    except ValueError as error:
        return {"error": str(error)}


def _comparison(labels: np.ndarray, reference: _ScoredModel, model: _ScoredModel) -> dict:
    predictions = [
        (scored.probs >= scored.output.threshold).astype(np.int64) for scored in (reference, model)
    ]
    return {
        "model": model.output.name,
        "model_id": model.output.model_id,
        "reference": reference.output.name,
        "reference_model_id": reference.output.model_id,
        "roc_auc": _delong_or_error(labels, reference.probs, model.probs),
        "labels": mcnemar_test(labels, *predictions),
        "differences": difference_table(
            reference.points["at_threshold"],
            model.points["at_threshold"],
            reference.samples["at_threshold"],
            model.samples["at_threshold"],
            ALPHA,
        ),
    }


def _majority_baseline(labels: np.ndarray) -> dict:
    # Ties go to 0 (survived), the usual majority in this data.
    predicts = int(labels.sum() > labels.size - labels.sum())
    constant = np.full(labels.size, float(predicts))
    return {"predicts": predicts, "metrics": binary_metrics(labels, constant, 0.5)}


def _report_notes(labels: np.ndarray, outputs: list[ModelOutput]) -> list[str]:
    notes = []
    if labels.min() == labels.max():
        notes.append(
            f"{ONE_CLASS_REASON}: ROC AUC, PR AUC and the DeLong test are undefined, and so is sensitivity "
            "or specificity"
        )
    if len(outputs) == 1:
        notes.append("one model only: no comparisons")
    return notes


def evaluate_outputs(y_true, outputs: list[ModelOutput], n_resamples: int = 1000, seed: int = 0) -> dict:
    """Metrics (at 0.5 and each stored threshold) with 95% CIs, a majority baseline, and comparisons of
    every model against outputs[0] (DeLong on AUC, McNemar on labels, paired bootstrap differences)."""
    labels = as_labels(y_true)
    if not 1 <= len(outputs) <= MAX_MODELS:
        raise ValueError(f"evaluate between 1 and {MAX_MODELS} models, got {len(outputs)}")
    indices = BootstrapResamples(labels, n_resamples, seed)
    scored = [_score_model(labels, output, indices) for output in outputs]
    n_pos = int(labels.sum())
    return {
        "n": int(labels.size),
        "class_counts": {"0": int(labels.size - n_pos), "1": n_pos},
        "majority_baseline": _majority_baseline(labels),
        "models": [_model_entry(model) for model in scored],
        "comparisons": [_comparison(labels, scored[0], model) for model in scored[1:]],
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "ci_level": 1 - ALPHA,
        "notes": _report_notes(labels, outputs),
    }


def forgetting_check(
    y_parent_val,
    prob_parent,
    prob_second,
    threshold_parent: float,
    threshold_second: float,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """How much a second fine-tune lost on its parent's validation data (differences are second - parent)."""
    labels = as_labels(y_parent_val)
    indices = BootstrapResamples(labels, n_resamples, seed)
    parent = _score_model(labels, ModelOutput("parent", None, prob_parent, threshold_parent), indices)
    second = _score_model(labels, ModelOutput("second", None, prob_second, threshold_second), indices)
    return {
        "parent": parent.points["at_threshold"],
        "second": second.points["at_threshold"],
        "differences": difference_table(
            parent.points["at_threshold"],
            second.points["at_threshold"],
            parent.samples["at_threshold"],
            second.samples["at_threshold"],
            ALPHA,
            FORGETTING_METRICS,
        ),
        "roc_auc_test": _delong_or_error(labels, parent.probs, second.probs),
        "n_resamples": int(n_resamples),
        "seed": int(seed),
    }


# --------------------------------------------------------------------------------------------- CSV


def _csv_header() -> list[str]:
    header = ["model", "model_id", "threshold_kind", "threshold", "n", "positives", "tn", "fp", "fn", "tp"]
    for name in METRIC_NAMES:
        header += [name, f"{name}_ci_lo", f"{name}_ci_hi"]
    return header


def _neutralised(text) -> str:
    """Free text for a CSV cell, prefixed with an apostrophe if a spreadsheet would run it as a formula."""
    if text is None:
        return ""
    text = str(text)
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def _number(value) -> int | float | str:
    return "" if value is None else value


def _csv_row(model: dict, kind: str) -> list:
    block = model[kind]
    confusion = block["confusion"]
    row = [
        _neutralised(model["name"]),
        _neutralised(model["model_id"]),
        THRESHOLD_KINDS[kind],
        block["threshold"],
        block["n"],
        block["positives"],
        confusion["tn"],
        confusion["fp"],
        confusion["fn"],
        confusion["tp"],
    ]
    for name in METRIC_NAMES:
        ci = block["ci"][name] or [None, None]
        row += [_number(block[name]), _number(ci[0]), _number(ci[1])]
    return row


def report_to_csv(report: dict) -> str:
    """One row per (model, threshold kind) of an evaluate_outputs report, with CI lo/hi columns."""
    if not report.get("models"):
        raise ValueError("the report has no models to export")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(_csv_header())
    for model in report["models"]:
        for kind in THRESHOLD_KINDS:
            writer.writerow(_csv_row(model, kind))
    return buffer.getvalue()
