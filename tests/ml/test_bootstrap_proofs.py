"""Proofs that the reports' bootstrap intervals are what they say: the same numbers as a plain loop
over the same resamples with scikit-learn's metrics, and 95% intervals that cover a known true AUC
about 95% of the time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import norm
from sklearn.metrics import f1_score, recall_score, roc_auc_score

from ml.report import ModelOutput, evaluate_outputs, forgetting_check
from ml.stats import BootstrapResamples, bootstrap_ci

RESAMPLES = 300
SEED = 5


def resample_indices(labels: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    return np.concatenate([block for _, block in BootstrapResamples(labels, n_resamples, seed).blocks()])


def percentile_interval(values: list[float]) -> list[float]:
    return list(np.percentile(values, [2.5, 97.5]))


def scored_data(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two models' probabilities, rounded so that ties occur (the AUC's mid-rank case)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    prob_a = np.round(expit(rng.normal(1.0 * labels, 1.0)), 2)
    prob_b = np.round(expit(rng.normal(1.4 * labels, 1.0)), 2)
    return labels, prob_a, prob_b


def test_report_intervals_equal_a_plain_loop_over_the_same_resamples():
    labels, prob_a, prob_b = scored_data()
    threshold_a, threshold_b = 0.55, 0.6
    report = evaluate_outputs(
        labels,
        [ModelOutput("a", None, prob_a, threshold_a), ModelOutput("b", None, prob_b, threshold_b)],
        n_resamples=RESAMPLES,
        seed=SEED,
    )
    indices = resample_indices(labels, RESAMPLES, SEED)
    assert indices.shape == (RESAMPLES, labels.size)
    assert all(np.array_equal(labels[row], labels) for row in indices), "resamples keep each row's class"

    def per_resample(metric, prob, threshold=None):
        scores = prob if threshold is None else (prob >= threshold).astype(int)
        return [metric(labels[row], scores[row]) for row in indices]

    auc_a, auc_b = per_resample(roc_auc_score, prob_a), per_resample(roc_auc_score, prob_b)
    f1_a = per_resample(f1_score, prob_a, threshold_a)
    f1_b = per_resample(f1_score, prob_b, threshold_b)
    sens_b_half = per_resample(recall_score, prob_b, 0.5)
    model_a, model_b = report["models"]
    assert model_a["at_threshold"]["ci"]["roc_auc"] == pytest.approx(percentile_interval(auc_a), abs=1e-12)
    assert model_b["at_0_5"]["ci"]["roc_auc"] == pytest.approx(percentile_interval(auc_b), abs=1e-12)
    assert model_a["at_threshold"]["ci"]["f1"] == pytest.approx(percentile_interval(f1_a), abs=1e-12)
    assert model_b["at_threshold"]["ci"]["f1"] == pytest.approx(percentile_interval(f1_b), abs=1e-12)
    assert model_b["at_0_5"]["ci"]["sensitivity"] == pytest.approx(
        percentile_interval(sens_b_half), abs=1e-12
    )
    assert model_a["at_threshold"]["roc_auc"] == pytest.approx(roc_auc_score(labels, prob_a), abs=1e-12)

    # Paired differences (b - a) are taken resample by resample, on the same resamples.
    differences = report["comparisons"][0]["differences"]
    paired_auc = percentile_interval(np.subtract(auc_b, auc_a))
    assert differences["roc_auc"]["ci"] == pytest.approx(paired_auc, abs=1e-12)
    assert differences["f1"]["ci"] == pytest.approx(percentile_interval(np.subtract(f1_b, f1_a)), abs=1e-12)

    # The forgetting check reads the same resamples of the same seed.
    check = forgetting_check(
        labels, prob_a, prob_b, threshold_a, threshold_b, n_resamples=RESAMPLES, seed=SEED
    )
    assert check["differences"]["roc_auc"]["ci"] == pytest.approx(paired_auc, abs=1e-12)


def binormal_replicate(rng: np.random.Generator, n_pos: int, n_neg: int, separation: float):
    """Negatives score N(0, 1), positives N(separation, 1); squashed to (0, 1), which keeps the order."""
    labels = np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]
    scores = np.r_[rng.normal(separation, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]
    return labels, expit(scores)


def test_95_percent_intervals_cover_the_true_auc_and_sensitivity_about_95_percent_of_the_time():
    """Binormal scores: true AUC = Phi(d / sqrt 2); at threshold t (on the squashed scale) the true
    sensitivity is P(N(d, 1) >= logit t) = 1 - Phi(logit t - d)."""
    separation, threshold = 1.2, 0.6
    true_auc = norm.cdf(separation / math.sqrt(2))
    true_sensitivity = norm.sf(math.log(threshold / (1 - threshold)) - separation)
    rng = np.random.default_rng(2024)
    replicates = 200
    covered = {"roc_auc": 0, "sensitivity": 0}
    for replicate in range(replicates):
        labels, prob = binormal_replicate(rng, n_pos=70, n_neg=130, separation=separation)
        ci = bootstrap_ci(labels, prob, threshold, n_resamples=200, seed=replicate)
        covered["roc_auc"] += ci["roc_auc"][0] <= true_auc <= ci["roc_auc"][1]
        covered["sensitivity"] += ci["sensitivity"][0] <= true_sensitivity <= ci["sensitivity"][1]
    for name, count in covered.items():
        # 200 replicates: the standard error of a 95% coverage is about 0.015.
        assert 0.90 <= count / replicates <= 0.99, (name, count / replicates)
