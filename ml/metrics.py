"""Binary classification metrics, decision thresholds and temperature scaling (pure numpy/scipy).

Labels: 1 = died (the positive class), 0 = survived. A note is predicted positive iff prob >= threshold.
Everything returned is JSON-serialisable: undefined values are None with a reason, never NaN or inf.

The metric arithmetic lives in batched functions (`ranking_metrics_batch`, `threshold_metrics_batch`,
`calibration_batch`) that work on a (resamples, n) matrix of probabilities; `binary_metrics` and
`calibration_fit` run them on a single row, so the point estimates and the bootstrap in `ml.stats` can
never disagree.
"""

from __future__ import annotations

import math
import re

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit

from ml.config import THRESHOLD_MODES_HELP

METRIC_NAMES = (
    "accuracy",
    "precision",
    "recall",
    "sensitivity",
    "specificity",
    "f1",
    "roc_auc",
    "pr_auc",
    "brier",
    "ece",
)
# Calibration intercept (calibration-in-the-large) and slope: a logistic regression of the labels on
# logit(p), as TRIPOD+AI asks next to the Brier score and ECE.
CALIBRATION_NAMES = ("calibration_intercept", "calibration_slope")
TEMPERATURE_BOUNDS = (0.05, 20.0)
DEFAULT_ECE_BINS = 10
# Probabilities are clipped before the logit, so a score of exactly 0 or 1 stays finite.
CALIBRATION_CLIP = 1e-6
# Threshold probabilities of the decision curve: 0.05 to 0.50 in steps of 0.05 (the range a mortality
# triage would use; fixed for now, not a request option).
DECISION_THRESHOLDS = tuple(round(0.05 * step, 2) for step in range(1, 11))

ONE_CLASS_REASON = "only one class in the labels"
_UNDEFINED_REASONS = {
    "precision": "no predicted positives",
    "recall": "no positive labels",
    "sensitivity": "no positive labels",
    "specificity": "no negative labels",
    "f1": "no positive labels and no predicted positives",
    "roc_auc": ONE_CLASS_REASON,
    "pr_auc": ONE_CLASS_REASON,
}
CONSTANT_SCORES_REASON = "every note has the same probability, so the slope is undefined"
NO_FIT_REASON = "the logistic fit does not converge (the scores separate the classes perfectly)"
# Newton steps of the calibration fits: a fit that has not settled by then has no finite optimum.
_NEWTON_STEPS = 50
_NEWTON_HALVINGS = 30
_NEWTON_TOLERANCE = 1e-9
# Each part matches in one way only, so a long run of digits cannot make the match backtrack.
_SENSITIVITY_MODE = re.compile(r"^sensitivity>=((?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:e-?[0-9]+)?)$")
# Counts computed as k/n can land a hair below the target (0.7 vs 7/10 in binary); never pick a lower
# threshold because of rounding.
_SENSITIVITY_TOLERANCE = 1e-12


# ----------------------------------------------------------------------------------------------- inputs


def as_labels(y_true) -> np.ndarray:
    """1-D int array of 0/1 labels; ValueError (with counts only, never values) otherwise."""
    labels = np.asarray(y_true)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError("labels are empty: need at least one example")
    as_float = labels.astype(float)
    if not np.all((as_float == 0) | (as_float == 1)):
        raise ValueError("labels must be 0 (survived) or 1 (died)")
    return as_float.astype(np.int64)


def as_probabilities(prob, n: int) -> np.ndarray:
    """1-D float array of n finite probabilities in [0, 1]."""
    values = np.asarray(prob, dtype=float)
    if values.shape != (n,):
        raise ValueError(f"expected {n} probabilities, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
        raise ValueError("probabilities must be finite and within [0, 1]")
    return values


def as_threshold(threshold: float) -> float:
    value = float(threshold)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"threshold must be within [0, 1], got {value!r}")
    return value


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with NaN (no warning) where the denominator is zero."""
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


# -------------------------------------------------------------------------------------- batched metrics


def threshold_metrics_batch(y_true: np.ndarray, prob_matrix: np.ndarray, threshold: float) -> dict:
    """Confusion counts and threshold metrics per row of `prob_matrix` (rows share the labels `y_true`).

    Returns arrays of shape (rows,); undefined values are NaN.
    """
    predicted = prob_matrix >= threshold
    positive = y_true.astype(bool)
    tp = np.count_nonzero(predicted & positive, axis=1)
    fp = np.count_nonzero(predicted & ~positive, axis=1)
    n_pos = int(positive.sum())
    n_neg = y_true.size - n_pos
    fn = n_pos - tp
    tn = n_neg - fp
    recall = _divide(tp, np.full(tp.shape, n_pos))
    return {
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
        "accuracy": (tp + tn) / y_true.size,
        "precision": _divide(tp, tp + fp),
        "recall": recall,
        "sensitivity": recall,
        "specificity": _divide(tn, np.full(tn.shape, n_neg)),
        "f1": _divide(2 * tp, 2 * tp + fp + fn),
    }


def ranking_metrics_batch(
    y_true: np.ndarray, prob_matrix: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> dict:
    """Threshold-free metrics per row: ROC AUC, average precision, Brier score and ECE (NaN if undefined).

    One sort per row serves both AUC (Mann-Whitney with mid-ranks for ties) and average precision
    (precision evaluated once per distinct score, as in scikit-learn's average_precision_score).
    """
    rows, n = prob_matrix.shape
    n_pos = int(y_true.sum())
    n_neg = n - n_pos
    brier = np.mean((prob_matrix - y_true) ** 2, axis=1)
    ece = _ece_batch(y_true, prob_matrix, n_bins)
    if n_pos == 0 or n_neg == 0:
        nan = np.full(rows, np.nan)
        return {"roc_auc": nan, "pr_auc": nan.copy(), "brier": brier, "ece": ece}

    order = np.argsort(prob_matrix, axis=1)
    sorted_prob = np.take_along_axis(prob_matrix, order, axis=1)
    sorted_pos = y_true[order]
    first, last = _tie_group_bounds(sorted_prob)

    mid_rank = (first + last) / 2.0 + 1.0
    rank_sum = np.sum(mid_rank * sorted_pos, axis=1)
    roc_auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)

    # At threshold = this score: everything from the group's first position upwards is predicted positive.
    positives_below = np.cumsum(sorted_pos, axis=1) - sorted_pos
    true_positives = n_pos - np.take_along_axis(positives_below, first, axis=1)
    precision_at_score = true_positives / (n - first)
    pr_auc = np.sum(precision_at_score * sorted_pos, axis=1) / n_pos
    return {"roc_auc": roc_auc, "pr_auc": pr_auc, "brier": brier, "ece": ece}


def _tie_group_bounds(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position of each (ascending) row: the first and last index of its run of equal values."""
    rows, n = sorted_values.shape
    positions = np.broadcast_to(np.arange(n), (rows, n))
    starts = np.ones((rows, n), dtype=bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    ends = np.ones((rows, n), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, positions, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, positions, n)[:, ::-1], axis=1)[:, ::-1]
    return first, last


def _ece_batch(y_true: np.ndarray, prob_matrix: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE per row: sum over equal-width bins of |sum(y) - sum(p)| / n = weighted |accuracy - confidence|."""
    rows, n = prob_matrix.shape
    bins = np.minimum((prob_matrix * n_bins).astype(np.int64), n_bins - 1)
    flat = (bins + n_bins * np.arange(rows)[:, None]).ravel()
    label_sums = np.bincount(
        flat, weights=np.broadcast_to(y_true, (rows, n)).ravel(), minlength=rows * n_bins
    )
    prob_sums = np.bincount(flat, weights=prob_matrix.ravel(), minlength=rows * n_bins)
    gaps = np.abs(label_sums - prob_sums).reshape(rows, n_bins)
    return gaps.sum(axis=1) / n


def calibration_batch(y_true: np.ndarray, prob_matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Calibration intercept and slope per row of `prob_matrix` (NaN where undefined), unpenalised.

    Slope: the coefficient of logit(p) in a logistic regression of y on logit(p) (1 = well spread).
    Intercept: calibration-in-the-large, the intercept of a logistic regression of y with logit(p) as an
    offset (0 = on average neither too high nor too low).
    """
    rows = prob_matrix.shape[0]
    n_pos = int(y_true.sum())
    if n_pos == 0 or n_pos == y_true.size:
        return {name: np.full(rows, np.nan) for name in CALIBRATION_NAMES}
    clipped = np.clip(prob_matrix, CALIBRATION_CLIP, 1 - CALIBRATION_CLIP)
    logit = np.log(clipped) - np.log1p(-clipped)
    intercept, _ = _fit_logistic(y_true, logit, with_slope=False)
    _, slope = _fit_logistic(y_true, logit, with_slope=True)
    return {"calibration_intercept": intercept, "calibration_slope": slope}


def _fit_logistic(y_true: np.ndarray, x: np.ndarray, *, with_slope: bool) -> tuple[np.ndarray, np.ndarray]:
    """Maximum likelihood (a, b) of P(y = 1) = sigmoid(a + b * x) per row, b fixed at 1 without a slope.

    Newton's method from (0, 1), the perfectly calibrated answer, halving a step until the likelihood
    does not fall (the likelihood is concave, so this converges whenever a finite optimum exists). Rows
    that do not settle (separated classes, equal scores) are NaN.
    """
    rows = x.shape[0]
    intercept, slope = np.zeros(rows), np.ones(rows)
    settled = np.zeros(rows, dtype=bool)
    failed = np.zeros(rows, dtype=bool)
    likelihood = _log_likelihood(y_true, x, intercept, slope)
    for _ in range(_NEWTON_STEPS):
        step_a, step_b = _newton_step(y_true, x, intercept, slope, with_slope)
        failed |= ~(np.isfinite(step_a) & np.isfinite(step_b))
        active = ~(settled | failed)
        step_a, step_b = np.where(active, step_a, 0.0), np.where(active, step_b, 0.0)
        scale = np.ones(rows)
        for _ in range(_NEWTON_HALVINGS):
            trial = _log_likelihood(y_true, x, intercept + scale * step_a, slope + scale * step_b)
            worse = ~(trial >= likelihood - 1e-12 * np.abs(likelihood))
            if not worse.any():
                break
            scale = np.where(worse, scale / 2, scale)
        else:
            trial = _log_likelihood(y_true, x, intercept + scale * step_a, slope + scale * step_b)
        intercept, slope, likelihood = intercept + scale * step_a, slope + scale * step_b, trial
        settled |= active & (np.maximum(np.abs(scale * step_a), np.abs(scale * step_b)) < _NEWTON_TOLERANCE)
        if (settled | failed).all():
            break
    undefined = ~settled | failed
    return np.where(undefined, np.nan, intercept), np.where(undefined, np.nan, slope)


def _newton_step(
    y_true: np.ndarray, x: np.ndarray, intercept: np.ndarray, slope: np.ndarray, with_slope: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The Newton step (gradient solved against the Hessian) per row; non-finite where it is singular."""
    fitted = expit(intercept[:, None] + slope[:, None] * x)
    residual = y_true - fitted
    weight = fitted * (1 - fitted)
    grad_a, hess_aa = residual.sum(axis=1), weight.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if not with_slope:
            return grad_a / hess_aa, np.zeros_like(grad_a)
        grad_b = (residual * x).sum(axis=1)
        hess_ab, hess_bb = (weight * x).sum(axis=1), (weight * x * x).sum(axis=1)
        determinant = hess_aa * hess_bb - hess_ab**2
        # A determinant this small against its terms means equal scores: the slope is not identified.
        singular = determinant <= 1e-12 * hess_aa * hess_bb
        determinant = np.where(singular, np.nan, determinant)
        return (hess_bb * grad_a - hess_ab * grad_b) / determinant, (
            hess_aa * grad_b - hess_ab * grad_a
        ) / determinant


def _log_likelihood(
    y_true: np.ndarray, x: np.ndarray, intercept: np.ndarray, slope: np.ndarray
) -> np.ndarray:
    linear = intercept[:, None] + slope[:, None] * x
    return np.sum(y_true * linear - np.logaddexp(0.0, linear), axis=1)


def net_benefit_batch(y_true: np.ndarray, prob_matrix: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit (Vickers & Elkin 2006) per row and threshold probability pt, shape (rows, thresholds):
    TP/n - FP/n * pt / (1 - pt), a note counted positive iff its probability >= pt."""
    positive = y_true.astype(bool)
    predicted = prob_matrix[:, None, :] >= thresholds[None, :, None]
    tp = np.count_nonzero(predicted & positive, axis=2)
    fp = np.count_nonzero(predicted & ~positive, axis=2)
    n = y_true.size
    return tp / n - fp / n * thresholds / (1 - thresholds)


# ------------------------------------------------------------------------------------- single-sample API


def to_json_number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def binary_metrics(y_true, prob, threshold: float = 0.5) -> dict:
    """All METRIC_NAMES at `threshold`, the confusion matrix, and why any metric is undefined."""
    labels = as_labels(y_true)
    probs = as_probabilities(prob, labels.size)
    threshold = as_threshold(threshold)
    row = probs[None, :]
    values = {**threshold_metrics_batch(labels, row, threshold), **ranking_metrics_batch(labels, row)}
    result: dict = {"n": int(labels.size), "positives": int(labels.sum()), "threshold": threshold}
    undefined: dict[str, str] = {}
    for name in METRIC_NAMES:
        result[name] = to_json_number(values[name][0])
        if result[name] is None:
            undefined[name] = _UNDEFINED_REASONS[name]
    result["confusion"] = {key: int(values[key][0]) for key in ("tn", "fp", "fn", "tp")}
    result["undefined"] = undefined
    return result


def expected_calibration_error(y_true, prob, n_bins: int = DEFAULT_ECE_BINS) -> float:
    """ECE with `n_bins` equal-width bins on [0, 1] (the last bin includes 1.0)."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    labels = as_labels(y_true)
    probs = as_probabilities(prob, labels.size)
    return float(_ece_batch(labels, probs[None, :], n_bins)[0])


def calibration_fit(y_true, prob) -> dict:
    """Calibration intercept and slope (see calibration_batch), None with a reason where undefined."""
    labels = as_labels(y_true)
    probs = as_probabilities(prob, labels.size)
    values = calibration_batch(labels, probs[None, :])
    result: dict = {name: to_json_number(values[name][0]) for name in CALIBRATION_NAMES}
    result["undefined"] = {
        name: _calibration_reason(labels, probs, name) for name in CALIBRATION_NAMES if result[name] is None
    }
    return result


def _calibration_reason(labels: np.ndarray, probs: np.ndarray, name: str) -> str:
    if labels.min() == labels.max():
        return ONE_CLASS_REASON
    if name == "calibration_slope" and np.ptp(np.clip(probs, CALIBRATION_CLIP, 1 - CALIBRATION_CLIP)) == 0:
        return CONSTANT_SCORES_REASON
    return NO_FIT_REASON


def net_benefit(y_true, prob, thresholds=DECISION_THRESHOLDS) -> list[float]:
    """Net benefit of acting on the notes with probability >= pt, for each threshold probability pt."""
    labels = as_labels(y_true)
    probs = as_probabilities(prob, labels.size)
    points = np.asarray([as_threshold(value) for value in thresholds], dtype=float)
    if points.size and points.max() >= 1:
        raise ValueError("a decision-curve threshold probability must be below 1")
    return [float(value) for value in net_benefit_batch(labels, probs[None, :], points)[0]]


# ----------------------------------------------------------------------------------------- thresholds


def parse_threshold_mode(mode: str) -> str:
    """Normalise a threshold mode ("0.5", "youden", "sensitivity>=X"); ValueError for anything else."""
    text = re.sub(r"\s+", "", str(mode)).lower()
    if text == "youden":
        return "youden"
    if _is_number(text) and float(text) == 0.5:
        return "0.5"
    match = _SENSITIVITY_MODE.match(text)
    if match:
        target = float(match.group(1))
        if 0 < target <= 1:
            return f"sensitivity>={target:.12g}"
    shown = str(mode)[:60]
    raise ValueError(f"threshold mode {shown!r} is not valid; allowed forms: {THRESHOLD_MODES_HELP}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def roc_points(y_true, prob) -> dict[str, np.ndarray]:
    """ROC operating points at every distinct score, highest threshold first (no (0, 0) start point)."""
    labels = as_labels(y_true)
    probs = as_probabilities(prob, labels.size)
    thresholds = np.unique(probs)[::-1]
    n_pos = labels.sum()
    n_neg = labels.size - n_pos
    # For each threshold, how many positives/negatives score >= it.
    sorted_pos = np.sort(probs[labels == 1])
    sorted_neg = np.sort(probs[labels == 0])
    tp = n_pos - np.searchsorted(sorted_pos, thresholds, side="left")
    fp = n_neg - np.searchsorted(sorted_neg, thresholds, side="left")
    return {
        "thresholds": thresholds,
        "tpr": _divide(tp, n_pos),
        "fpr": _divide(fp, n_neg),
        "tp": tp,
        "fp": fp,
    }


def choose_threshold(y_true, prob, mode: str) -> tuple[float, str | None]:
    """Decision threshold for `mode` (see THRESHOLD_MODES_HELP) and a note when it had to fall back."""
    mode = parse_threshold_mode(mode)
    if mode == "0.5":
        return 0.5, None
    labels = as_labels(y_true)
    if labels.min() == labels.max():
        return 0.5, f"threshold mode {mode} needs both classes; {ONE_CLASS_REASON}, so 0.5 was used"
    points = roc_points(labels, prob)
    thresholds = points["thresholds"]
    if mode == "youden":
        # Youden's J scaled by n_pos * n_neg, in integers so that equal J values tie exactly; thresholds run
        # high -> low, so argmax (the first maximum) breaks ties towards the higher threshold.
        n_pos = int(labels.sum())
        scaled_youden = points["tp"] * (labels.size - n_pos) - points["fp"] * n_pos
        best = int(np.argmax(scaled_youden))
    else:
        target = float(mode.split(">=")[1])
        reaching = np.flatnonzero(points["tpr"] >= target - _SENSITIVITY_TOLERANCE)
        best = int(reaching[0])  # the lowest score always reaches sensitivity 1, so this is never empty
    return _between_scores(thresholds, best), None


def _between_scores(thresholds: np.ndarray, best: int) -> float:
    """Midway between the chosen score and the next lower one: the same decisions on these notes,
    and none of them sits on the threshold, where the last bit of another machine's arithmetic (a
    reloaded model, another thread count) would flip it."""
    chosen = float(thresholds[best])
    if not math.isfinite(chosen):
        return float(np.clip(chosen, 0.0, 1.0))
    lower = float(thresholds[best + 1]) if best + 1 < thresholds.size else 0.0
    return float(np.clip((chosen + max(lower, 0.0)) / 2.0, 0.0, 1.0))


# ---------------------------------------------------------------------------------- temperature scaling


def _as_logits(logits) -> np.ndarray:
    values = np.asarray(logits, dtype=float)
    if values.ndim != 2 or values.shape[1] != 2:
        raise ValueError(f"logits must have shape (n, 2), got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("logits must be finite")
    return values


def softmax_probability(logits, temperature: float = 1.0) -> np.ndarray:
    """P(class 1) from two-class logits at `temperature`: sigmoid((l1 - l0) / T), stable for large logits."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    values = _as_logits(logits)
    return expit((values[:, 1] - values[:, 0]) / temperature)


def _negative_log_likelihood(margins: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = margins / temperature
    # -log sigmoid(s) = logaddexp(0, -s); -log(1 - sigmoid(s)) = logaddexp(0, s)
    signed = np.where(labels == 1, -scaled, scaled)
    return float(np.mean(np.logaddexp(0.0, signed)))


def fit_temperature(logits, y_true) -> float:
    """Temperature T > 0 minimising the NLL on these data (searched over log T), clipped to the bounds."""
    values = _as_logits(logits)
    labels = as_labels(y_true)
    if values.shape[0] != labels.size:
        raise ValueError(f"got {values.shape[0]} logit rows for {labels.size} labels")
    if labels.min() == labels.max():
        return 1.0
    margins = values[:, 1] - values[:, 0]
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: _negative_log_likelihood(margins, labels, math.exp(log_t)),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.clip(math.exp(result.x), *TEMPERATURE_BOUNDS))


def calibration_report(y_true, logits, temperature) -> dict:
    """Brier score, ECE and calibration intercept and slope before (T = 1) and after temperature scaling."""
    labels = as_labels(y_true)

    def summary(t: float) -> dict:
        probs = as_probabilities(softmax_probability(logits, t), labels.size)
        scores = ranking_metrics_batch(labels, probs[None, :])
        return {
            "brier": to_json_number(scores["brier"][0]),
            "ece": to_json_number(scores["ece"][0]),
            **calibration_fit(labels, probs),
        }

    return {"before": summary(1.0), "after": summary(float(temperature)), "temperature": float(temperature)}
