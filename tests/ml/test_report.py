import csv
import io
import json

import numpy as np
import pytest

from ml.metrics import METRIC_NAMES, binary_metrics
from ml.report import (
    FORGETTING_METRICS,
    ModelOutput,
    evaluate_outputs,
    forgetting_check,
    report_to_csv,
)
from ml.stats import bootstrap_ci, delong_test, paired_bootstrap_difference

N_RESAMPLES = 200


def _data(n: int = 300, models: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    outputs = []
    for k in range(models):
        logits = rng.normal(0, 1, n) + (0.5 + 0.4 * k) * (2 * labels - 1)
        name = "base" if k == 0 else f"model {k}"
        outputs.append(
            ModelOutput(name, None if k == 0 else f"id{k}", 1 / (1 + np.exp(-logits)), 0.3 + 0.1 * k)
        )
    return labels, outputs


def test_report_has_all_keys_and_is_strict_json():
    labels, outputs = _data()
    report = evaluate_outputs(labels, outputs, n_resamples=N_RESAMPLES, seed=1)
    json.dumps(report, allow_nan=False)
    assert report["n"] == 300
    assert report["class_counts"] == {"0": int((labels == 0).sum()), "1": int(labels.sum())}
    assert report["n_resamples"] == N_RESAMPLES and report["seed"] == 1
    assert [model["name"] for model in report["models"]] == ["base", "model 1", "model 2"]
    for model, output in zip(report["models"], outputs, strict=True):
        assert model["model_id"] == output.model_id and model["threshold"] == output.threshold
        for kind, threshold in (("at_0_5", 0.5), ("at_threshold", output.threshold)):
            block = model[kind]
            assert block["threshold"] == threshold
            for name in METRIC_NAMES:
                assert block[name] == binary_metrics(labels, output.prob, threshold)[name]
                low, high = block["ci"][name]
                assert low <= high
            assert set(block["confusion"]) == {"tn", "fp", "fn", "tp"}


def test_model_cis_equal_bootstrap_ci_with_same_seed():
    labels, outputs = _data()
    report = evaluate_outputs(labels, outputs, n_resamples=N_RESAMPLES, seed=4)
    second = outputs[1]
    expected = bootstrap_ci(labels, second.prob, second.threshold, n_resamples=N_RESAMPLES, seed=4)
    assert report["models"][1]["at_threshold"]["ci"] == expected


def test_comparisons_against_first_model():
    labels, outputs = _data()
    report = evaluate_outputs(labels, outputs, n_resamples=N_RESAMPLES, seed=2)
    assert len(report["comparisons"]) == 2
    for comparison, output in zip(report["comparisons"], outputs[1:], strict=True):
        assert comparison["model"] == output.name and comparison["reference"] == "base"
        assert comparison["roc_auc"] == delong_test(labels, outputs[0].prob, output.prob)
        assert comparison["labels"]["method"] in ("exact", "chi2_cc")
        expected = paired_bootstrap_difference(
            labels, outputs[0].prob, output.prob, outputs[0].threshold, output.threshold, N_RESAMPLES, 2
        )
        assert comparison["differences"] == expected


def test_majority_baseline_predicts_the_larger_class():
    labels, outputs = _data()
    baseline = evaluate_outputs(labels, outputs[:1], n_resamples=50)["majority_baseline"]
    assert baseline["predicts"] == 0
    assert baseline["metrics"]["accuracy"] == pytest.approx((labels == 0).mean())
    assert baseline["metrics"]["precision"] is None and baseline["metrics"]["recall"] == 0.0
    flipped = evaluate_outputs(1 - labels, [ModelOutput("m", None, outputs[0].prob, 0.5)], n_resamples=50)
    assert flipped["majority_baseline"]["predicts"] == 1


def test_report_is_deterministic():
    labels, outputs = _data()
    first = evaluate_outputs(labels, outputs, n_resamples=N_RESAMPLES, seed=3)
    second = evaluate_outputs(labels, outputs, n_resamples=N_RESAMPLES, seed=3)
    assert json.dumps(first, allow_nan=False) == json.dumps(second, allow_nan=False)
    other_seed = evaluate_outputs(labels, outputs, n_resamples=N_RESAMPLES, seed=4)
    assert other_seed["models"][0]["at_0_5"]["ci"] != first["models"][0]["at_0_5"]["ci"]


def test_single_model_has_no_comparisons():
    labels, outputs = _data(models=1)
    report = evaluate_outputs(labels, outputs, n_resamples=N_RESAMPLES)
    assert report["comparisons"] == [] and len(report["models"]) == 1


def test_one_class_data_gives_none_and_reasons_instead_of_crashing():
    labels = np.zeros(40, dtype=int)
    _, outputs = _data(n=40, models=2)
    report = evaluate_outputs(labels, outputs, n_resamples=N_RESAMPLES)
    json.dumps(report, allow_nan=False)
    block = report["models"][0]["at_threshold"]
    assert block["roc_auc"] is None and block["ci"]["roc_auc"] is None
    assert block["undefined"]["roc_auc"] == "only one class in the labels"
    assert block["sensitivity"] is None and block["ci"]["sensitivity"] is None
    comparison = report["comparisons"][0]
    assert "one class" in comparison["roc_auc"]["error"]
    assert comparison["differences"]["roc_auc"] == {"a": None, "b": None, "difference": None, "ci": None}
    assert comparison["differences"]["specificity"]["ci"] is not None
    assert any("one class" in note for note in report["notes"])


@pytest.mark.parametrize("count", [0, 9])
def test_model_count_is_limited(count):
    labels, outputs = _data(models=1)
    with pytest.raises(ValueError):
        evaluate_outputs(labels, outputs * count, n_resamples=10)


def test_probabilities_of_wrong_length_are_rejected():
    labels, outputs = _data(models=1)
    with pytest.raises(ValueError):
        evaluate_outputs(labels[:-1], outputs, n_resamples=10)


def test_forgetting_check_reports_second_minus_parent():
    labels, outputs = _data(models=2)
    parent, second = outputs
    result = forgetting_check(labels, parent.prob, second.prob, parent.threshold, second.threshold, 100, 0)
    json.dumps(result, allow_nan=False)
    assert result["parent"] == binary_metrics(labels, parent.prob, parent.threshold)
    assert result["second"] == binary_metrics(labels, second.prob, second.threshold)
    assert set(result["differences"]) == set(FORGETTING_METRICS)
    for name in FORGETTING_METRICS:
        entry = result["differences"][name]
        assert entry["difference"] == pytest.approx(result["second"][name] - result["parent"][name])
        assert entry["ci"][0] <= entry["ci"][1]
    assert result["roc_auc_test"] == delong_test(labels, parent.prob, second.prob)


def test_forgetting_check_with_one_class_reports_error_for_auc_test():
    labels = np.ones(20, dtype=int)
    probs = np.linspace(0.05, 0.95, 20)
    result = forgetting_check(labels, probs, probs[::-1], 0.5, 0.5, 50, 0)
    assert "error" in result["roc_auc_test"]
    assert result["differences"]["roc_auc"]["difference"] is None


def _csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_report_to_csv_rows_and_numbers():
    labels, outputs = _data()
    report = evaluate_outputs(labels, outputs, n_resamples=N_RESAMPLES)
    rows = _csv_rows(report_to_csv(report))
    assert len(rows) == 2 * len(outputs)
    assert [(row["model"], row["threshold_kind"]) for row in rows[:2]] == [
        ("base", "0.5"),
        ("base", "decision"),
    ]
    first = report["models"][0]["at_0_5"]
    assert float(rows[0]["accuracy"]) == first["accuracy"]
    assert float(rows[0]["roc_auc_ci_lo"]) == first["ci"]["roc_auc"][0]
    assert int(rows[0]["tp"]) == first["confusion"]["tp"]
    assert rows[0]["model_id"] == ""


def test_report_to_csv_neutralises_formula_injection_and_blanks_undefined():
    labels, outputs = _data(models=3)
    hostile = [
        ModelOutput('=HYPERLINK("http://evil.example","click")', "@SUM(A1)", outputs[0].prob, 0.5),
        ModelOutput("-cmd", "+1", outputs[1].prob, 0.99),  # nothing predicted positive: precision undefined
        ModelOutput("\tname", None, outputs[2].prob, 0.5),
    ]
    rows = _csv_rows(report_to_csv(evaluate_outputs(labels, hostile, n_resamples=50)))
    assert rows[0]["model"] == "'" + hostile[0].name and rows[0]["model_id"] == "'@SUM(A1)"
    assert rows[2]["model"] == "'-cmd" and rows[2]["model_id"] == "'+1"
    assert rows[4]["model"] == "'\tname"
    stored = rows[3]
    assert stored["threshold_kind"] == "decision" and float(stored["threshold"]) == 0.99
    assert stored["precision"] == "" and stored["precision_ci_lo"] == ""
    assert float(stored["specificity"]) == 1.0


def test_report_to_csv_needs_models():
    with pytest.raises(ValueError):
        report_to_csv({"models": []})
