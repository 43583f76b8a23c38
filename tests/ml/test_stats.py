import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ml.metrics import METRIC_NAMES, binary_metrics
from ml.stats import (
    bootstrap_ci,
    delong_test,
    mcnemar_test,
    metric_samples,
    paired_bootstrap_difference,
    stratified_bootstrap_indices,
)


def _two_models(n: int = 400, seed: int = 0, rounding: int | None = None):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    signal = 2 * labels - 1
    shared = rng.normal(0, 1, n)
    prob_a = 1 / (1 + np.exp(-(shared + 0.8 * signal + rng.normal(0, 0.7, n))))
    prob_b = 1 / (1 + np.exp(-(shared + 1.2 * signal + rng.normal(0, 0.7, n))))
    if rounding is not None:
        prob_a, prob_b = np.round(prob_a, rounding), np.round(prob_b, rounding)
    return labels, prob_a, prob_b


# ------------------------------------------------------------------------------------------ bootstrap


def test_stratified_indices_keep_class_counts_and_positions():
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 1, 0, 0])
    indices = stratified_bootstrap_indices(labels, n_resamples=50, seed=1)
    assert indices.shape == (50, 10)
    # Every resample keeps each position's class, hence the class counts.
    np.testing.assert_array_equal(labels[indices], np.broadcast_to(labels, (50, 10)))
    assert (labels[indices].sum(axis=1) == 3).all()
    # It does resample (some rows repeat a note).
    assert any(len(set(row)) < 10 for row in indices)


def test_stratified_indices_are_deterministic_per_seed():
    labels = [0, 1] * 20
    first = stratified_bootstrap_indices(labels, 20, seed=7)
    np.testing.assert_array_equal(first, stratified_bootstrap_indices(labels, 20, seed=7))
    assert not np.array_equal(first, stratified_bootstrap_indices(labels, 20, seed=8))


def test_stratified_indices_with_one_class():
    indices = stratified_bootstrap_indices([1, 1, 1], 5, seed=0)
    assert indices.shape == (5, 3) and set(indices.ravel()) <= {0, 1, 2}


def test_batched_resample_metrics_equal_binary_metrics_on_each_resample():
    labels, probs, _ = _two_models(n=150, rounding=1)  # rounding makes ties for AUC and AP
    indices = stratified_bootstrap_indices(labels, 7, seed=3)
    at_half, at_low = metric_samples(labels, probs, [0.5, 0.2], indices)
    for row, resample in enumerate(indices):
        for threshold, samples in ((0.5, at_half), (0.2, at_low)):
            expected = binary_metrics(labels[resample], probs[resample], threshold)
            for name in METRIC_NAMES:
                assert samples[name][row] == pytest.approx(expected[name], abs=1e-12), (name, row)


def test_bootstrap_ci_is_deterministic_and_seed_dependent():
    labels, probs, _ = _two_models()
    first = bootstrap_ci(labels, probs, 0.4, n_resamples=300, seed=5)
    assert first == bootstrap_ci(labels, probs, 0.4, n_resamples=300, seed=5)
    assert first != bootstrap_ci(labels, probs, 0.4, n_resamples=300, seed=6)


def test_bootstrap_ci_contains_point_estimates():
    labels, probs, _ = _two_models()
    point = binary_metrics(labels, probs, 0.4)
    intervals = bootstrap_ci(labels, probs, 0.4, n_resamples=500, seed=0)
    assert set(intervals) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        low, high = intervals[name]
        assert low <= point[name] <= high, name
        assert low < high, name


def test_bootstrap_ci_none_where_undefined():
    intervals = bootstrap_ci([0, 0, 0, 0, 0], [0.1, 0.2, 0.3, 0.6, 0.7], 0.5, n_resamples=50)
    for name in ("roc_auc", "pr_auc", "recall", "sensitivity"):
        assert intervals[name] is None
    assert intervals["specificity"] is not None and intervals["brier"] is not None


def test_paired_difference_is_b_minus_a_with_ci():
    labels, prob_a, prob_b = _two_models()
    result = paired_bootstrap_difference(labels, prob_a, prob_b, 0.5, 0.4, n_resamples=300, seed=2)
    a, b = binary_metrics(labels, prob_a, 0.5), binary_metrics(labels, prob_b, 0.4)
    assert set(result) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        entry = result[name]
        assert entry["a"] == a[name] and entry["b"] == b[name]
        assert entry["difference"] == pytest.approx(b[name] - a[name])
        low, high = entry["ci"]
        assert low <= entry["difference"] <= high, name


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    labels, prob_a, _ = _two_models(n=100)
    result = paired_bootstrap_difference(labels, prob_a, prob_a, 0.5, 0.5, n_resamples=100)
    for name in METRIC_NAMES:
        assert result[name]["difference"] == 0.0 and result[name]["ci"] == [0.0, 0.0]


# --------------------------------------------------------------------------------------------- DeLong


def _slow_delong(labels, prob_a, prob_b):
    """DeLong, DeLong & Clarke-Pearson (1988) from pairwise structural components, O(n_pos * n_neg)."""
    labels = np.asarray(labels)
    components = []
    for probs in (np.asarray(prob_a), np.asarray(prob_b)):
        positives, negatives = probs[labels == 1], probs[labels == 0]
        psi = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
        components.append((psi.mean(axis=1), psi.mean(axis=0)))
    m, n = int(labels.sum()), int((labels == 0).sum())
    aucs = [v10.mean() for v10, _ in components]
    s10 = np.cov(np.vstack([components[0][0], components[1][0]]))
    s01 = np.cov(np.vstack([components[0][1], components[1][1]]))
    covariance = s10 / m + s01 / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    z = (aucs[1] - aucs[0]) / math.sqrt(variance)
    return aucs, z, math.erfc(abs(z) / math.sqrt(2)), math.sqrt(variance)


@pytest.mark.parametrize("rounding", [None, 2])
def test_delong_matches_slow_structural_components_and_sklearn(rounding):
    labels, prob_a, prob_b = _two_models(n=300, seed=4, rounding=rounding)
    result = delong_test(labels, prob_a, prob_b)
    (auc_a, auc_b), z, p_value, se = _slow_delong(labels, prob_a, prob_b)
    assert result["auc_a"] == pytest.approx(roc_auc_score(labels, prob_a), abs=1e-12)
    assert result["auc_b"] == pytest.approx(roc_auc_score(labels, prob_b), abs=1e-12)
    assert result["auc_a"] == pytest.approx(auc_a) and result["auc_b"] == pytest.approx(auc_b)
    assert result["difference"] == pytest.approx(auc_b - auc_a)
    assert result["z"] == pytest.approx(z, rel=1e-9)
    assert result["p_value"] == pytest.approx(p_value, rel=1e-9)
    assert result["ci"] == pytest.approx([auc_b - auc_a - 1.959963985 * se, auc_b - auc_a + 1.959963985 * se])


def test_delong_identical_models_have_p_value_one():
    labels, prob_a, _ = _two_models(n=100)
    result = delong_test(labels, prob_a, prob_a)
    assert result["difference"] == 0.0 and result["p_value"] == 1.0 and result["z"] is None


def test_delong_one_class_raises():
    with pytest.raises(ValueError, match="one class"):
        delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


# -------------------------------------------------------------------------------------------- McNemar


def _predictions_for_table(b: int, c: int, both_right: int, both_wrong: int):
    """All labels 0; A right (0) / B wrong (1) on b notes, A wrong / B right on c notes."""
    pred_a = [0] * b + [1] * c + [0] * both_right + [1] * both_wrong
    pred_b = [1] * b + [0] * c + [0] * both_right + [1] * both_wrong
    return [0] * len(pred_a), pred_a, pred_b


def test_mcnemar_exact_small_table():
    labels, pred_a, pred_b = _predictions_for_table(b=10, c=2, both_right=8, both_wrong=3)
    result = mcnemar_test(labels, pred_a, pred_b)
    # 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096.
    assert result == {
        "b": 10,
        "c": 2,
        "statistic": 2.0,
        "p_value": pytest.approx(158 / 4096),
        "method": "exact",
    }


def test_mcnemar_chi_square_with_continuity_correction():
    labels, pred_a, pred_b = _predictions_for_table(b=30, c=10, both_right=50, both_wrong=5)
    result = mcnemar_test(labels, pred_a, pred_b)
    statistic = (abs(30 - 10) - 1) ** 2 / 40  # 9.025
    assert result["method"] == "chi2_cc" and (result["b"], result["c"]) == (30, 10)
    assert result["statistic"] == pytest.approx(361 / 40)
    # Chi-square with 1 df: P(X > s) = erfc(sqrt(s / 2)).
    assert result["p_value"] == pytest.approx(math.erfc(math.sqrt(statistic / 2)))


def test_mcnemar_is_symmetric_in_direction_and_handles_no_discordance():
    labels, pred_a, pred_b = _predictions_for_table(b=2, c=10, both_right=3, both_wrong=0)
    assert mcnemar_test(labels, pred_a, pred_b)["p_value"] == pytest.approx(158 / 4096)
    no_discordance = mcnemar_test([0, 1, 1], [0, 1, 0], [0, 1, 0])
    assert no_discordance["p_value"] == 1.0 and no_discordance["b"] == no_discordance["c"] == 0


def test_mcnemar_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        mcnemar_test([0, 1], [0, 1, 1], [0, 1])
