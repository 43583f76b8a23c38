import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ml.metrics import (
    CONSTANT_SCORES_REASON,
    DECISION_THRESHOLDS,
    METRIC_NAMES,
    NO_FIT_REASON,
    ONE_CLASS_REASON,
    THRESHOLD_MODES_HELP,
    binary_metrics,
    calibration_batch,
    calibration_fit,
    calibration_report,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    net_benefit,
    parse_threshold_mode,
    softmax_probability,
)

# 4 positives, 6 negatives. At 0.5: predicted [1,1,1,0 | 1,0,0,0,0,0] -> tp=3, fn=1, fp=1, tn=5.
LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PROBS = [0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.4, 0.05, 0.15]


def test_binary_metrics_match_hand_computed_confusion_matrix():
    result = binary_metrics(LABELS, PROBS, 0.5)
    assert result["confusion"] == {"tn": 5, "fp": 1, "fn": 1, "tp": 3}
    assert result["n"] == 10 and result["positives"] == 4 and result["threshold"] == 0.5
    assert result["accuracy"] == pytest.approx(8 / 10)
    assert result["precision"] == pytest.approx(3 / 4)
    assert result["recall"] == pytest.approx(3 / 4)
    assert result["sensitivity"] == result["recall"]
    assert result["specificity"] == pytest.approx(5 / 6)
    assert result["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # Positive 0.3 outranks 4 of the 6 negatives, the other three outrank all: 22 of 24 pairs.
    assert result["roc_auc"] == pytest.approx(22 / 24)
    # Ranked: + + + - - + ...; precision at each positive is 1, 1, 1, 4/6.
    assert result["pr_auc"] == pytest.approx((1 + 1 + 1 + 4 / 6) / 4)
    squared_errors = [0.01, 0.04, 0.09, 0.49, 0.36, 0.04, 0.01, 0.16, 0.0025, 0.0225]
    assert result["brier"] == pytest.approx(sum(squared_errors) / 10)
    assert result["undefined"] == {}


def test_binary_metrics_at_other_threshold():
    # At 0.35: predicted [1,1,1,0 | 1,0,0,1,0,0] -> tp=3, fn=1, fp=2, tn=4.
    result = binary_metrics(LABELS, PROBS, 0.35)
    assert result["confusion"] == {"tn": 4, "fp": 2, "fn": 1, "tp": 3}
    assert result["precision"] == pytest.approx(3 / 5)
    assert result["specificity"] == pytest.approx(4 / 6)
    assert result["f1"] == pytest.approx(6 / 9)


def test_prediction_is_positive_when_probability_equals_threshold():
    result = binary_metrics([1, 0], [0.5, 0.4999], 0.5)
    assert result["confusion"] == {"tn": 1, "fp": 0, "fn": 0, "tp": 1}


def test_no_predicted_positives_gives_none_with_reason_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = binary_metrics(LABELS, PROBS, 0.95)
    assert result["confusion"] == {"tn": 6, "fp": 0, "fn": 4, "tp": 0}
    assert result["precision"] is None
    assert result["undefined"]["precision"] == "no predicted positives"
    assert result["recall"] == 0.0 and result["f1"] == 0.0


def test_one_class_gives_none_with_reasons_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = binary_metrics([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], 0.5)
    assert result["roc_auc"] is None and result["pr_auc"] is None
    assert result["undefined"]["roc_auc"] == "only one class in the labels"
    assert result["undefined"]["pr_auc"] == "only one class in the labels"
    assert result["recall"] is None and result["undefined"]["recall"] == "no positive labels"
    assert result["sensitivity"] is None
    assert result["precision"] is None and result["f1"] is None
    assert result["specificity"] == 1.0 and result["accuracy"] == 1.0
    for name in METRIC_NAMES:
        value = result[name]
        assert value is None or math.isfinite(value)


def test_only_positive_labels_leave_specificity_undefined():
    result = binary_metrics([1, 1], [0.2, 0.9], 0.5)
    assert result["specificity"] is None and result["undefined"]["specificity"] == "no negative labels"
    assert result["recall"] == pytest.approx(1 / 2)


def test_ranking_metrics_match_sklearn_with_ties():
    rng = np.random.default_rng(3)
    labels = (rng.random(300) < 0.3).astype(int)
    probs = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 1)  # rounding makes many ties
    result = binary_metrics(labels, probs)
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert result["pr_auc"] == pytest.approx(average_precision_score(labels, probs), abs=1e-12)


@pytest.mark.parametrize(
    ("labels", "probs", "threshold"),
    [
        ([], [], 0.5),
        ([0, 2], [0.1, 0.2], 0.5),
        ([0, 1], [0.1, 1.2], 0.5),
        ([0, 1], [0.1], 0.5),
        ([0, 1], [0.1, 0.2], 2),
    ],
)
def test_invalid_inputs_raise_value_error(labels, probs, threshold):
    with pytest.raises(ValueError):
        binary_metrics(labels, probs, threshold)


def test_expected_calibration_error_hand_example():
    labels = [1, 0, 1, 0]
    probs = [0.15, 0.35, 0.65, 0.85]
    # 10 bins: each note alone, |y - p| = 0.85, 0.35, 0.35, 0.85 -> mean 2.4 / 4.
    assert expected_calibration_error(labels, probs) == pytest.approx(2.4 / 4)
    # 2 bins: [0.15, 0.35] conf 0.25 acc 0.5, [0.65, 0.85] conf 0.75 acc 0.5 -> 0.5*0.25 + 0.5*0.25.
    assert expected_calibration_error(labels, probs, n_bins=2) == pytest.approx(0.25)
    # 1 bin: conf 0.5 == acc 0.5.
    assert expected_calibration_error(labels, probs, n_bins=1) == pytest.approx(0.0)


def test_ece_puts_probability_one_in_the_last_bin():
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0


# Thresholds high -> low: 0.8 J=1/3, 0.7 J=2/3, 0.6 J=1/3, 0.4 J=2/3, 0.2 J=1/3, 0.1 J=0.
CHOICE_LABELS = [0, 0, 0, 1, 1, 1]
CHOICE_PROBS = [0.1, 0.2, 0.6, 0.4, 0.7, 0.8]


def test_choose_threshold_fixed():
    assert choose_threshold(CHOICE_LABELS, CHOICE_PROBS, "0.5") == (0.5, None)


# A chosen threshold lies midway between the score it selects and the next lower score (the same
# decisions on these notes, and none sits on the threshold).
def test_choose_threshold_youden_breaks_ties_towards_higher_threshold():
    threshold, note = choose_threshold(CHOICE_LABELS, CHOICE_PROBS, "youden")
    assert threshold == pytest.approx(0.65) and note is None  # selects 0.7; 0.6 is the next lower


@pytest.mark.parametrize("mode", ["youden", "sensitivity>=0.5", "sensitivity>=1"])
def test_no_validation_score_sits_on_the_chosen_threshold(mode):
    threshold, _ = choose_threshold(CHOICE_LABELS, CHOICE_PROBS, mode)
    assert min(abs(p - threshold) for p in CHOICE_PROBS) >= 0.04


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("sensitivity>=0.3", 0.75),  # 1/3: selects 0.8
        ("sensitivity>=0.5", 0.65),  # 2/3: selects 0.7
        ("sensitivity>=0.9", 0.3),  # 3/3: selects 0.4
        ("sensitivity>=1", 0.3),
    ],
)
def test_choose_threshold_sensitivity_picks_highest_threshold_reaching_target(mode, expected):
    threshold, note = choose_threshold(CHOICE_LABELS, CHOICE_PROBS, mode)
    assert threshold == pytest.approx(expected) and note is None
    assert binary_metrics(CHOICE_LABELS, CHOICE_PROBS, threshold)["sensitivity"] >= float(mode.split(">=")[1])


def test_choose_threshold_sensitivity_exact_fraction():
    # Positives score 0.1 .. 1.0; 7 of 10 score >= 0.4, so sensitivity>=0.7 is reached exactly there.
    labels = [1] * 10 + [0]
    probs = [round(0.1 * k, 1) for k in range(1, 11)] + [0.05]
    assert choose_threshold(labels, probs, "sensitivity>=0.7")[0] == pytest.approx(0.35)


@pytest.mark.parametrize("mode", ["youden", "sensitivity>=0.8"])
def test_choose_threshold_falls_back_with_one_class(mode):
    threshold, note = choose_threshold([1, 1, 1], [0.2, 0.6, 0.9], mode)
    assert threshold == 0.5
    assert "one class" in note


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0.5", "0.5"),
        ("0.50", "0.5"),
        (" Youden ", "youden"),
        ("sensitivity>=0.9", "sensitivity>=0.9"),
        ("Sensitivity >= 0.90", "sensitivity>=0.9"),
        ("sensitivity>=1", "sensitivity>=1"),
    ],
)
def test_parse_threshold_mode_normalises(raw, expected):
    assert parse_threshold_mode(raw) == expected


@pytest.mark.parametrize(
    "raw", ["0.7", "f1", "", "sensitivity>=0", "sensitivity>=1.5", "sensitivity>0.9", "youden2"]
)
def test_parse_threshold_mode_rejects_with_helpful_message(raw):
    with pytest.raises(ValueError) as error:
        parse_threshold_mode(raw)
    assert repr(raw) in str(error.value)
    assert THRESHOLD_MODES_HELP in str(error.value)


def test_softmax_probability_matches_softmax_and_is_stable():
    logits = np.array([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]])
    exp = np.exp(logits)
    expected = exp[:, 1] / exp.sum(axis=1)
    np.testing.assert_allclose(softmax_probability(logits), expected)
    np.testing.assert_allclose(softmax_probability(logits, 2.0), softmax_probability(logits / 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extreme = softmax_probability([[1000.0, -1000.0], [-1000.0, 1000.0]])
    np.testing.assert_array_equal(extreme, [0.0, 1.0])
    with pytest.raises(ValueError):
        softmax_probability(logits, 0.0)
    with pytest.raises(ValueError):
        softmax_probability([0.1, 0.2])


def _overconfident_logits(true_temperature: float, n: int = 20_000, seed: int = 0):
    """Labels drawn from calibrated margins; the model's logits are those margins times the temperature."""
    rng = np.random.default_rng(seed)
    margins = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-margins))).astype(int)
    logits = np.column_stack([np.zeros(n), margins * true_temperature])
    return logits, labels


@pytest.mark.parametrize("true_temperature", [2.0, 0.5])
def test_fit_temperature_recovers_known_temperature(true_temperature):
    logits, labels = _overconfident_logits(true_temperature)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.08)


def test_fit_temperature_one_class_and_clipping():
    assert fit_temperature([[0.0, 1.0], [0.0, 2.0]], [1, 1]) == 1.0
    # Perfectly separated with tiny margins: NLL keeps falling as T shrinks, so T hits the lower bound.
    assert fit_temperature([[0.0, 0.01], [0.0, -0.01]], [1, 0]) == pytest.approx(0.05)


def test_calibration_report_improves_ece_after_scaling():
    logits, labels = _overconfident_logits(3.0, n=5000)
    temperature = fit_temperature(logits, labels)
    report = calibration_report(labels, logits, temperature)
    assert set(report) == {"before", "after", "temperature"}
    assert report["temperature"] == temperature
    assert report["after"]["ece"] < report["before"]["ece"]
    assert report["after"]["brier"] < report["before"]["brier"]
    same = calibration_report(labels, logits, 1.0)
    assert same["before"] == same["after"]
    # Temperature scaling of overconfident logits moves the calibration slope from 1/3 towards 1.
    assert report["before"]["calibration_slope"] == pytest.approx(1 / 3.0, rel=0.08)
    assert report["after"]["calibration_slope"] == pytest.approx(1.0, rel=0.08)


# ------------------------------------------------------------------------------ calibration intercept/slope


def _calibrated_sample(n: int = 20_000, seed: int = 0):
    """Labels drawn with exactly the probabilities the model gives."""
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0.02, 0.98, n)
    return (rng.random(n) < probs).astype(int), probs


def _logit(probs):
    probs = np.clip(probs, 1e-6, 1 - 1e-6)
    return np.log(probs / (1 - probs))


def test_a_calibrated_sample_has_slope_one_and_intercept_zero():
    labels, probs = _calibrated_sample()
    fit = calibration_fit(labels, probs)
    assert fit["calibration_slope"] == pytest.approx(1.0, abs=0.06)
    assert fit["calibration_intercept"] == pytest.approx(0.0, abs=0.05)
    assert fit["undefined"] == {}


def test_squared_probabilities_give_a_slope_below_one_and_a_positive_intercept():
    labels, probs = _calibrated_sample()
    fit = calibration_fit(labels, probs**2)  # too low everywhere, and squeezed towards 0
    assert fit["calibration_slope"] < 0.85
    assert fit["calibration_intercept"] > 0.5


def test_calibration_fit_matches_unpenalised_logistic_regression_by_hand():
    from scipy.optimize import brentq, minimize
    from scipy.special import expit

    rng = np.random.default_rng(3)
    probs = rng.uniform(0.01, 0.99, 400)
    labels = (rng.random(400) < probs**1.5).astype(int)
    x = _logit(probs)

    def negative_log_likelihood(params):
        linear = params[0] + params[1] * x
        return np.sum(np.logaddexp(0, linear) - labels * linear)

    slope_fit = minimize(negative_log_likelihood, [0.0, 1.0], method="BFGS", options={"gtol": 1e-10})
    # Calibration-in-the-large: the intercept a with sum(y) = sum(sigmoid(a + logit(p))).
    intercept = brentq(lambda a: labels.sum() - expit(a + x).sum(), -10, 10, xtol=1e-12)
    fit = calibration_fit(labels, probs)
    assert fit["calibration_slope"] == pytest.approx(slope_fit.x[1], abs=1e-5)
    assert fit["calibration_intercept"] == pytest.approx(intercept, abs=1e-8)


def test_probabilities_of_zero_and_one_are_clipped_before_the_logit():
    labels = [0, 1, 0, 1, 1, 0, 1, 0]
    probs = [0.0, 1.0, 0.3, 0.6, 0.4, 0.7, 0.9, 0.2]
    fit = calibration_fit(labels, probs)
    assert fit["calibration_slope"] is not None and math.isfinite(fit["calibration_slope"])
    assert fit["calibration_intercept"] is not None


def test_undefined_calibration_is_none_with_a_reason():
    one_class = calibration_fit([1, 1, 1], [0.2, 0.5, 0.9])
    assert one_class["calibration_slope"] is None and one_class["calibration_intercept"] is None
    assert one_class["undefined"] == {
        "calibration_intercept": ONE_CLASS_REASON,
        "calibration_slope": ONE_CLASS_REASON,
    }
    constant = calibration_fit([0, 1, 0, 1], [0.3] * 4)
    assert constant["calibration_slope"] is None
    assert constant["undefined"] == {"calibration_slope": CONSTANT_SCORES_REASON}
    assert constant["calibration_intercept"] == pytest.approx(math.log(0.5 / 0.5) - math.log(0.3 / 0.7))
    separated = calibration_fit([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert separated["calibration_slope"] is None
    assert separated["undefined"] == {"calibration_slope": NO_FIT_REASON}


def test_calibration_batch_rows_equal_single_fits():
    labels, probs = _calibrated_sample(n=300, seed=5)
    rng = np.random.default_rng(1)
    matrix = np.vstack([probs, probs**2, rng.uniform(0, 1, probs.size)])
    batch = calibration_batch(labels, matrix)
    for row in range(3):
        single = calibration_fit(labels, matrix[row])
        for name in ("calibration_intercept", "calibration_slope"):
            assert batch[name][row] == pytest.approx(single[name], abs=1e-12)


# ------------------------------------------------------------------------------------------ net benefit


def test_net_benefit_matches_the_hand_formula():
    labels = [1, 0, 1, 0, 0, 1, 0, 0, 0, 0]
    probs = [0.9, 0.4, 0.3, 0.2, 0.1, 0.05, 0.35, 0.6, 0.15, 0.25]
    # pt = 0.25: predicted positive 0.9, 0.4, 0.3, 0.35, 0.6, 0.25 -> TP 2, FP 4 (0.25 >= 0.25 counts).
    # pt = 0.5: 0.9, 0.6 -> TP 1, FP 1.
    values = net_benefit(labels, probs, [0.25, 0.5])
    assert values[0] == pytest.approx(2 / 10 - 4 / 10 * 0.25 / 0.75)
    assert values[1] == pytest.approx(1 / 10 - 1 / 10 * 1.0)


def test_treat_all_is_the_prevalence_formula_and_thresholds_are_the_fixed_grid():
    assert DECISION_THRESHOLDS == (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 0])
    prevalence = labels.mean()
    treat_all = net_benefit(labels, np.ones(labels.size))
    expected = [prevalence - (1 - prevalence) * pt / (1 - pt) for pt in DECISION_THRESHOLDS]
    assert treat_all == pytest.approx(expected)
    assert net_benefit(labels, np.zeros(labels.size)) == [0.0] * len(DECISION_THRESHOLDS)


def test_net_benefit_refuses_a_threshold_of_one():
    with pytest.raises(ValueError):
        net_benefit([0, 1], [0.2, 0.8], [1.0])
