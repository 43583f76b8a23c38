"""PNG plots of an evaluation: ROC, precision-recall, confusion matrices, calibration, decision curve.

Each call builds its own matplotlib Figure on an Agg canvas and never touches pyplot, so nothing leaks
between calls or threads.
"""

from __future__ import annotations

import io
import math
import textwrap

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml.errors import UserError
from ml.metrics import (
    DECISION_THRESHOLDS,
    DEFAULT_ECE_BINS,
    ONE_CLASS_REASON,
    as_labels,
    as_probabilities,
    binary_metrics,
    net_benefit,
    roc_points,
)
from ml.report import ModelOutput
from ml.vocabulary import PLOT_KINDS

DPI = 100
PIXEL_RANGE = (200, 4000)
_NAME_CHARS = 32
# Average width of a 10 pt character at 100 dpi: the first guess at how many fit on a title line.
_TITLE_CHAR_PX = 8
_MIN_TITLE_CHARS = 6
_CLASS_NAMES = ("survived (0)", "died (1)")


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1] + "…"


def _colour(index: int):
    return colormaps["tab10"](index % 10)


def _one_class_message(axes) -> None:
    axes.text(0.5, 0.5, f"Undefined: {ONE_CLASS_REASON}", ha="center", va="center", transform=axes.transAxes)


def _unit_axes(axes, xlabel: str, ylabel: str, title: str) -> None:
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)


def _draw_roc(figure: Figure, labels: np.ndarray, outputs: list[ModelOutput]) -> None:
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="black", alpha=0.6, label="chance")
    if labels.min() == labels.max():
        _one_class_message(axes)
    else:
        for index, output in enumerate(outputs):
            points = roc_points(labels, output.prob)
            auc = binary_metrics(labels, output.prob)["roc_auc"]
            axes.plot(
                np.concatenate([[0.0], points["fpr"]]),
                np.concatenate([[0.0], points["tpr"]]),
                color=_colour(index),
                label=f"{_short(output.name)} (AUC {auc:.3f})",
            )
    title = f"ROC curve (n={labels.size}, died={int(labels.sum())})"
    _unit_axes(axes, "False positive rate (1 - specificity)", "True positive rate (sensitivity)", title)
    axes.legend(loc="lower right")


def _draw_pr(figure: Figure, labels: np.ndarray, outputs: list[ModelOutput]) -> None:
    axes = figure.add_subplot()
    n_pos = int(labels.sum())
    prevalence = n_pos / labels.size
    axes.axhline(prevalence, linestyle="--", color="black", alpha=0.6, label=f"prevalence ({prevalence:.3f})")
    if labels.min() == labels.max():
        _one_class_message(axes)
    else:
        for index, output in enumerate(outputs):
            points = roc_points(labels, output.prob)
            recall = points["tp"] / n_pos
            precision = points["tp"] / (points["tp"] + points["fp"])
            average_precision = binary_metrics(labels, output.prob)["pr_auc"]
            # Steps drawn "pre" match average precision: precision at each score covers the recall it adds.
            axes.step(
                np.concatenate([[0.0], recall]),
                np.concatenate([[1.0], precision]),
                where="pre",
                color=_colour(index),
                label=f"{_short(output.name)} (AP {average_precision:.3f})",
            )
    title = f"Precision-recall curve (n={labels.size}, died={n_pos})"
    _unit_axes(axes, "Recall (sensitivity)", "Precision (positive predictive value)", title)
    axes.legend(loc="best")


def _wrapped_name(name: str, chars: int) -> str:
    """The name in at most two lines of `chars` characters, cut with an ellipsis if longer."""
    lines = textwrap.wrap(name, chars, break_long_words=True) or [""]
    if len(lines) > 2:
        lines = [lines[0], lines[1][: chars - 1] + "…"]
    return "\n".join(lines)


def _set_panel_title(axes, name: str, threshold: float, max_px: float) -> None:
    """Title wrapped narrower until it fits its panel, so neighbouring titles never overlap (a character
    count alone is not enough: "W" is twice as wide as "i")."""
    renderer = axes.figure.canvas.get_renderer()
    chars = max(_MIN_TITLE_CHARS, int(max_px / _TITLE_CHAR_PX))
    while True:
        title = axes.set_title(f"{_wrapped_name(name, chars)}\nthreshold {threshold:.3f}", fontsize=10)
        if chars <= _MIN_TITLE_CHARS or title.get_window_extent(renderer).width <= max_px:
            return
        chars = max(_MIN_TITLE_CHARS, int(chars * 0.8))


def _grid_shape(panels: int) -> tuple[int, int]:
    columns = panels if panels <= 3 else math.ceil(panels / 2)
    return math.ceil(panels / columns), columns


def _draw_confusion(figure: Figure, labels: np.ndarray, outputs: list[ModelOutput]) -> None:
    rows, columns = _grid_shape(len(outputs))
    grid = figure.subplots(rows, columns, squeeze=False)
    title_px = 0.8 * figure.get_figwidth() * DPI / columns
    for axes in grid.flat[len(outputs) :]:
        axes.remove()
    for axes, output in zip(grid.flat, outputs, strict=False):
        confusion = binary_metrics(labels, output.prob, output.threshold)["confusion"]
        counts = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
        axes.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, int(counts.max())))
        for (row, column), count in np.ndenumerate(counts):
            dark = count > counts.max() / 2
            axes.text(column, row, str(count), ha="center", va="center", color="white" if dark else "black")
        axes.set_xticks([0, 1], _CLASS_NAMES)
        axes.set_yticks([0, 1], _CLASS_NAMES, rotation=90, va="center")
        axes.set_xlabel("Predicted")
        axes.set_ylabel("Actual")
        _set_panel_title(axes, output.name, output.threshold, title_px)
    figure.suptitle(f"Confusion matrices at each model's decision threshold (n={labels.size})")


def _reliability_points(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean predicted probability and observed fraction died in each non-empty equal-width bin."""
    bins = np.minimum((probs * DEFAULT_ECE_BINS).astype(np.int64), DEFAULT_ECE_BINS - 1)
    counts = np.bincount(bins, minlength=DEFAULT_ECE_BINS)
    filled = counts > 0
    mean_prob = np.bincount(bins, weights=probs, minlength=DEFAULT_ECE_BINS)[filled] / counts[filled]
    observed = np.bincount(bins, weights=labels, minlength=DEFAULT_ECE_BINS)[filled] / counts[filled]
    return mean_prob, observed


def _draw_calibration(figure: Figure, labels: np.ndarray, outputs: list[ModelOutput]) -> None:
    curve_axes, count_axes = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    curve_axes.plot([0, 1], [0, 1], linestyle="--", color="black", alpha=0.6, label="perfectly calibrated")
    edges = np.linspace(0, 1, DEFAULT_ECE_BINS + 1)
    for index, output in enumerate(outputs):
        probs = np.asarray(output.prob, dtype=float)
        mean_prob, observed = _reliability_points(labels, probs)
        ece = binary_metrics(labels, probs)["ece"]
        curve_axes.plot(
            mean_prob,
            observed,
            marker="o",
            color=_colour(index),
            label=f"{_short(output.name)} (ECE {ece:.3f})",
        )
        count_axes.hist(probs, bins=edges, histtype="step", color=_colour(index))
    _unit_axes(
        curve_axes,
        "",
        "Observed fraction died",
        f"Calibration ({DEFAULT_ECE_BINS} equal-width bins, n={labels.size})",
    )
    curve_axes.legend(loc="best")
    count_axes.set_xlabel("Predicted probability of death")
    count_axes.set_ylabel("Notes")
    count_axes.grid(alpha=0.3)


def _draw_decision_curve(figure: Figure, labels: np.ndarray, outputs: list[ModelOutput]) -> None:
    axes = figure.add_subplot()
    thresholds = list(DECISION_THRESHOLDS)
    prevalence = float(labels.mean())
    treat_all = net_benefit(labels, np.ones(labels.size), thresholds)
    axes.plot(thresholds, treat_all, linestyle="--", color="grey", label="treat all")
    axes.axhline(0.0, linestyle=":", color="black", label="treat none")
    curves = [net_benefit(labels, output.prob, thresholds) for output in outputs]
    for index, (output, curve) in enumerate(zip(outputs, curves, strict=True)):
        axes.plot(thresholds, curve, marker="o", color=_colour(index), label=_short(output.name))
    # Treat all falls steeply below zero at high thresholds; a little below zero is all that matters.
    top = max(prevalence, *(max(curve) for curve in curves)) * 1.1 + 0.01
    axes.set_ylim(-0.1 * top - 0.01, top)
    axes.set_xlim(0, thresholds[-1] + 0.02)
    axes.set_xlabel("Threshold probability of death (pt)")
    axes.set_ylabel("Net benefit (TP/n - FP/n * pt / (1 - pt))")
    axes.set_title(f"Decision curve (n={labels.size}, died={int(labels.sum())})")
    axes.grid(alpha=0.3)
    axes.legend(loc="best")


_DRAWERS = {
    "roc": _draw_roc,
    "pr": _draw_pr,
    "confusion": _draw_confusion,
    "calibration": _draw_calibration,
    "decision_curve": _draw_decision_curve,
}


def _check_inputs(kind: str, labels: np.ndarray, outputs: list[ModelOutput], width_px: int, height_px: int):
    if kind not in PLOT_KINDS:
        raise UserError(f"unknown plot kind {str(kind)[:40]!r}: choose one of {', '.join(PLOT_KINDS)}")
    if not outputs:
        raise UserError("need at least one model to plot")
    low, high = PIXEL_RANGE
    if not (low <= width_px <= high and low <= height_px <= high):
        raise UserError(f"width and height must be between {low} and {high} pixels")
    for output in outputs:
        as_probabilities(output.prob, labels.size)


def plot_png(
    kind: str, y_true, outputs: list[ModelOutput], width_px: int = 900, height_px: int = 700
) -> bytes:
    """A PNG of exactly width_px x height_px: kind is one of PLOT_KINDS."""
    labels = as_labels(y_true)
    _check_inputs(kind, labels, outputs, width_px, height_px)
    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    _DRAWERS[kind](figure, labels, outputs)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
