"""Evaluation reports: metrics with bootstrap CIs for 1-8 models, comparisons, forgetting check, CSV export.

Input is already-computed probabilities (ModelOutput); nothing here touches models, files or the database.
All models are scored on the same bootstrap resamples (one seed), so CIs and paired differences are
reproducible and comparable. Beside the metrics, a report carries what a clinical reviewer reads
(TRIPOD+AI): calibration intercept and slope, a decision curve, subgroup performance and the most
confident errors, the last listed by CSV row number only (never a note's text).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ml.errors import UserError
from ml.metrics import (
    CALIBRATION_NAMES,
    DECISION_THRESHOLDS,
    METRIC_NAMES,
    ONE_CLASS_REASON,
    as_labels,
    as_probabilities,
    as_threshold,
    binary_metrics,
    calibration_fit,
    net_benefit,
)
from ml.stats import (
    BootstrapResamples,
    calibration_samples,
    ci_table,
    delong_test,
    difference_table,
    mcnemar_test,
    metric_samples,
)
from ml.vocabulary import MAX_MODELS, REPORT_TABLES

ALPHA = 0.05
FORGETTING_METRICS = ("roc_auc", "f1", "sensitivity", "specificity", "accuracy")
THRESHOLD_KINDS = {"at_0_5": "0.5", "at_threshold": "decision"}
# A spreadsheet treats a cell starting with one of these as a formula (CSV injection).
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# Below this many notes (or with one class) a subgroup's AUC and its CI say nothing: it is marked too small.
MIN_SUBGROUP_ROWS = 30
SUBGROUP_METRICS = ("roc_auc", "sensitivity", "specificity")
NOTE_LENGTH = "note_length"
# False positives and false negatives listed per model, the most confident first.
CONFIDENT_ERRORS_SHOWN = 10
DECISION_CURVE_METHOD = (
    "net benefit = TP/n - FP/n * pt / (1 - pt) (Vickers & Elkin 2006) at threshold probabilities pt from "
    f"{DECISION_THRESHOLDS[0]:.2f} to {DECISION_THRESHOLDS[-1]:.2f} in steps of "
    f"{DECISION_THRESHOLDS[1] - DECISION_THRESHOLDS[0]:.2f} (fixed); a note counts as positive when its "
    "probability >= pt; treat all = prevalence - (1 - prevalence) * pt / (1 - pt), treat none = 0"
)
SUBGROUP_METHOD = (
    "per group: ROC AUC, and sensitivity and specificity at each model's decision threshold, with "
    "percentile CIs from a bootstrap stratified by class within the group (the report's resample count "
    f"and seed); a group with fewer than {MIN_SUBGROUP_ROWS} notes or one class is marked too small"
)
ROW_NUMBERS = "1-based data rows of the test CSV (the header excluded), as in its validation messages"


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


@dataclass(frozen=True)
class Grouping:
    """One way to split the test notes into subgroups: each note's group, in the notes' order."""

    column: str  # the CSV column, or NOTE_LENGTH
    groups: list[str]  # per note
    order: list[str]  # the groups in the order the report lists them
    basis: dict = field(default_factory=dict)  # how the groups were formed, for the reader


def column_grouping(column: str, values: Sequence[str]) -> Grouping:
    """Groups by the values of an extra CSV column (ml.data.read_group_columns)."""
    return Grouping(column, list(values), sorted(set(values)), {"groups_from": "values of the column"})


def note_length_grouping(characters: Sequence[int]) -> Grouping:
    """Tertiles of note length in characters: short <= first cut point < medium <= second < long."""
    lengths = np.asarray(characters, dtype=np.int64)
    low, high = (int(value) for value in np.quantile(lengths, [1 / 3, 2 / 3], method="lower"))
    names = [
        f"short (<= {low} characters)",
        f"medium ({low + 1}-{high} characters)",
        f"long (> {high} characters)",
    ]
    groups = [names[0] if length <= low else names[1] if length <= high else names[2] for length in lengths]
    basis = {"groups_from": "tertiles of note length", "unit": "characters", "cut_points": [low, high]}
    return Grouping(NOTE_LENGTH, groups, names, basis)


def _model_entry(labels: np.ndarray, scored: _ScoredModel, indices: BootstrapResamples) -> dict:
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
    entry["calibration"] = _calibration_entry(labels, scored, indices)
    entry["confident_errors"] = _confident_errors(labels, scored)
    return entry


def _calibration_entry(labels: np.ndarray, scored: _ScoredModel, indices: BootstrapResamples) -> dict:
    """Brier and ECE (threshold-free, as in at_0_5) beside the calibration intercept and slope."""
    threshold_free = scored.points["at_0_5"]
    point = calibration_fit(labels, scored.probs)
    samples = calibration_samples(labels, scored.probs, indices)
    return {
        "brier": threshold_free["brier"],
        "ece": threshold_free["ece"],
        **point,
        "ci": {
            "brier": _threshold_free_ci(scored, "brier"),
            "ece": _threshold_free_ci(scored, "ece"),
            **ci_table(point, samples, ALPHA, CALIBRATION_NAMES),
        },
    }


def _threshold_free_ci(scored: _ScoredModel, name: str) -> list[float] | None:
    return ci_table(scored.points["at_0_5"], scored.samples["at_0_5"], ALPHA, (name,))[name]


def _confident_errors(labels: np.ndarray, scored: _ScoredModel) -> dict:
    """The false positives with the highest and the false negatives with the lowest probability, at
    the model's decision threshold, by row number (ROW_NUMBERS): a reviewer opens the CSV to read them."""
    threshold = float(scored.output.threshold)
    predicted = scored.probs >= threshold
    false_positives = np.flatnonzero(predicted & (labels == 0))
    false_negatives = np.flatnonzero(~predicted & (labels == 1))
    most_confident_fp = false_positives[np.argsort(-scored.probs[false_positives], kind="stable")]
    most_confident_fn = false_negatives[np.argsort(scored.probs[false_negatives], kind="stable")]

    def listed(indices: np.ndarray) -> list[dict]:
        return [
            {"row": int(index) + 1, "label": int(labels[index]), "probability": float(scored.probs[index])}
            for index in indices[:CONFIDENT_ERRORS_SHOWN]
        ]

    return {
        "threshold": threshold,
        "false_positives": listed(most_confident_fp),
        "false_positive_count": int(false_positives.size),
        "false_negatives": listed(most_confident_fn),
        "false_negative_count": int(false_negatives.size),
    }


def _decision_curve(labels: np.ndarray, scored: list[_ScoredModel]) -> dict:
    thresholds = list(DECISION_THRESHOLDS)
    return {
        "thresholds": thresholds,
        "method": DECISION_CURVE_METHOD,
        "prevalence": float(labels.mean()),
        # Treating everyone is the model that gives every note probability 1: the same formula.
        "treat_all": net_benefit(labels, np.ones(labels.size), thresholds),
        "treat_none": [0.0] * len(thresholds),
        "models": [
            {
                "name": model.output.name,
                "model_id": model.output.model_id,
                "net_benefit": net_benefit(labels, model.probs, thresholds),
            }
            for model in scored
        ],
    }


def _subgroups(
    labels: np.ndarray, scored: list[_ScoredModel], groupings: Sequence[Grouping], n_resamples: int, seed: int
) -> dict:
    return {
        "min_rows": MIN_SUBGROUP_ROWS,
        "method": SUBGROUP_METHOD,
        "by": [
            {
                "column": grouping.column,
                **grouping.basis,
                "groups": [
                    _group_entry(labels, scored, np.asarray(grouping.groups) == name, name, n_resamples, seed)
                    for name in grouping.order
                ],
            }
            for grouping in groupings
        ],
    }


def _group_entry(
    labels: np.ndarray,
    scored: list[_ScoredModel],
    members: np.ndarray,
    name: str,
    n_resamples: int,
    seed: int,
) -> dict:
    group_labels = labels[members]
    entry = {"value": name, "n": int(group_labels.size), "positives": int(group_labels.sum())}
    reason = _too_small(group_labels)
    if reason is not None:
        return {**entry, "too_small": reason, "models": []}
    resamples = BootstrapResamples(group_labels, n_resamples, seed)
    models = [_group_metrics(group_labels, model, members, resamples) for model in scored]
    return {**entry, "too_small": None, "models": models}


def _too_small(group_labels: np.ndarray) -> str | None:
    if group_labels.size < MIN_SUBGROUP_ROWS:
        return f"too small: fewer than {MIN_SUBGROUP_ROWS} notes"
    if group_labels.min() == group_labels.max():
        return f"too small: {ONE_CLASS_REASON}"
    return None


def _group_metrics(
    group_labels: np.ndarray, model: _ScoredModel, members: np.ndarray, resamples: BootstrapResamples
) -> dict:
    probs, threshold = model.probs[members], float(model.output.threshold)
    point = binary_metrics(group_labels, probs, threshold)
    (samples,) = metric_samples(group_labels, probs, [threshold], resamples)
    return {
        "name": model.output.name,
        "model_id": model.output.model_id,
        "threshold": threshold,
        **{name: point[name] for name in SUBGROUP_METRICS},
        "ci": ci_table(point, samples, ALPHA, SUBGROUP_METRICS),
    }


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


def evaluate_outputs(
    y_true,
    outputs: list[ModelOutput],
    n_resamples: int = 1000,
    seed: int = 0,
    groupings: Sequence[Grouping] = (),
) -> dict:
    """Metrics (at 0.5 and each stored threshold) with 95% CIs, calibration intercept and slope, the most
    confident errors, a majority baseline, comparisons of every model against outputs[0] (DeLong on AUC,
    McNemar on labels, paired bootstrap differences), a decision curve, and performance per subgroup of
    each grouping. `y_true` and every output's probabilities are in the test CSV's row order."""
    labels = as_labels(y_true)
    if not 1 <= len(outputs) <= MAX_MODELS:
        raise ValueError(f"evaluate between 1 and {MAX_MODELS} models, got {len(outputs)}")
    for grouping in groupings:
        if len(grouping.groups) != labels.size:
            raise ValueError(
                f"grouping {grouping.column!r} has {len(grouping.groups)} rows for {labels.size}"
            )
    indices = BootstrapResamples(labels, n_resamples, seed)
    scored = [_score_model(labels, output, indices) for output in outputs]
    n_pos = int(labels.sum())
    return {
        "n": int(labels.size),
        "class_counts": {"0": int(labels.size - n_pos), "1": n_pos},
        "majority_baseline": _majority_baseline(labels),
        "models": [_model_entry(labels, model, indices) for model in scored],
        "comparisons": [_comparison(labels, scored[0], model) for model in scored[1:]],
        "decision_curve": _decision_curve(labels, scored),
        "subgroups": _subgroups(labels, scored, groupings, n_resamples, seed),
        "row_numbers": ROW_NUMBERS,
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
    """The models table's columns: the original ones first, in their order; calibration at the end."""
    header = ["model", "model_id", "threshold_kind", "threshold", "n", "positives", "tn", "fp", "fn", "tp"]
    for name in (*METRIC_NAMES, *CALIBRATION_NAMES):
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


def _with_ci(block: dict, names: Sequence[str]) -> list:
    """value, CI low, CI high per name; blank where the block (an older report) lacks it."""
    cells = []
    for name in names:
        ci = (block.get("ci") or {}).get(name) or [None, None]
        cells += [_number(block.get(name)), _number(ci[0]), _number(ci[1])]
    return cells


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
    return row + _with_ci(block, METRIC_NAMES) + _with_ci(model.get("calibration") or {}, CALIBRATION_NAMES)


def _models_table(report: dict) -> list[list]:
    """One row per (model, threshold kind), with CI lo/hi columns."""
    if not report.get("models"):
        raise ValueError("the report has no models to export")
    rows = [_csv_header()]
    for model in report["models"]:
        for kind in THRESHOLD_KINDS:
            rows.append(_csv_row(model, kind))
    return rows


def _decision_curve_table(report: dict) -> list[list]:
    """One row per (curve, threshold probability): treat all, treat none, then each model."""
    curve = _section(report, "decision_curve")
    rows = [["curve", "model_id", "threshold_probability", "net_benefit"]]
    curves = [("treat all", None, curve["treat_all"]), ("treat none", None, curve["treat_none"])]
    curves += [(model["name"], model["model_id"], model["net_benefit"]) for model in curve["models"]]
    for name, model_id, values in curves:
        for threshold, value in zip(curve["thresholds"], values, strict=True):
            rows.append([_neutralised(name), _neutralised(model_id), threshold, _number(value)])
    return rows


def _subgroups_table(report: dict) -> list[list]:
    """One row per (grouping, group, model); a group too small to judge has one row without figures."""
    header = ["column", "group", "n", "positives", "too_small", "model", "model_id", "threshold"]
    for name in SUBGROUP_METRICS:
        header += [name, f"{name}_ci_lo", f"{name}_ci_hi"]
    rows = [header]
    for grouping in _section(report, "subgroups")["by"]:
        for group in grouping["groups"]:
            start = [
                _neutralised(grouping["column"]),
                _neutralised(group["value"]),
                group["n"],
                group["positives"],
                _neutralised(group["too_small"]),
            ]
            if not group["models"]:
                rows.append(start + [""] * (len(header) - len(start)))
            for model in group["models"]:
                identity = [_neutralised(model["name"]), _neutralised(model["model_id"]), model["threshold"]]
                rows.append(start + identity + _with_ci(model, SUBGROUP_METRICS))
    return rows


def _confident_errors_table(report: dict) -> list[list]:
    """One row per listed error: the model, the kind of error, its rank, the CSV row number."""
    rows = [["model", "model_id", "error", "rank", "row", "label", "probability"]]
    for model in report.get("models") or []:
        errors = model.get("confident_errors")
        if errors is None:
            raise _missing_table("confident_errors")
        for kind, listed in (
            ("false positive", errors["false_positives"]),
            ("false negative", errors["false_negatives"]),
        ):
            for rank, error in enumerate(listed, start=1):
                identity = [_neutralised(model["name"]), _neutralised(model["model_id"])]
                rows.append(identity + [kind, rank, error["row"], error["label"], error["probability"]])
    return rows


def _section(report: dict, name: str) -> dict:
    if name not in report:
        raise _missing_table(name)
    return report[name]


def _missing_table(name: str) -> UserError:
    return UserError(
        f"this report has no {name} table: it was made before reports had one", code="report_table_missing"
    )


_TABLES = {
    "models": _models_table,
    "decision_curve": _decision_curve_table,
    "subgroups": _subgroups_table,
    "confident_errors": _confident_errors_table,
}


def report_to_csv(report: dict, table: str = "models") -> str:
    """One table of an evaluate_outputs report as CSV (REPORT_TABLES): "models" (one row per model and
    threshold kind, with CI lo/hi columns), or the decision curve, the subgroups or the confident errors."""
    if table not in _TABLES:
        raise UserError(f"unknown table {str(table)[:40]!r}: choose one of {', '.join(REPORT_TABLES)}")
    buffer = io.StringIO()
    csv.writer(buffer).writerows(_TABLES[table](report))
    return buffer.getvalue()
