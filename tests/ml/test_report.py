import csv
import io
import json

import numpy as np
import pytest

from ml.errors import UserError
from ml.metrics import (
    CALIBRATION_NAMES,
    DECISION_THRESHOLDS,
    METRIC_NAMES,
    binary_metrics,
    calibration_fit,
    net_benefit,
)
from ml.report import (
    CONFIDENT_ERRORS_SHOWN,
    FORGETTING_METRICS,
    MIN_SUBGROUP_ROWS,
    NOTE_LENGTH,
    ModelOutput,
    column_grouping,
    evaluate_outputs,
    forgetting_check,
    note_length_grouping,
    report_to_csv,
)
from ml.stats import (
    BootstrapResamples,
    bootstrap_ci,
    calibration_samples,
    delong_test,
    paired_bootstrap_difference,
    percentile_ci,
)
from ml.vocabulary import REPORT_TABLES

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


# ---------------------------------------------------------------------------- TRIPOD+AI report items

ORIGINAL_CSV_COLUMNS = ["model", "model_id", "threshold_kind", "threshold", "n", "positives"]
ORIGINAL_CSV_COLUMNS += ["tn", "fp", "fn", "tp"]
ORIGINAL_CSV_COLUMNS += [f"{name}{suffix}" for name in METRIC_NAMES for suffix in ("", "_ci_lo", "_ci_hi")]


def test_each_model_has_calibration_intercept_and_slope_with_bootstrap_cis():
    labels, outputs = _data()
    report = evaluate_outputs(labels, outputs, n_resamples=N_RESAMPLES, seed=2)
    for entry, output in zip(report["models"], outputs, strict=True):
        calibration = entry["calibration"]
        point = calibration_fit(labels, output.prob)
        assert calibration["brier"] == entry["at_0_5"]["brier"]
        assert calibration["ece"] == entry["at_0_5"]["ece"]
        assert calibration["ci"]["brier"] == entry["at_0_5"]["ci"]["brier"]
        samples = calibration_samples(labels, output.prob, BootstrapResamples(labels, N_RESAMPLES, 2))
        for name in CALIBRATION_NAMES:
            assert calibration[name] == point[name]
            low, high = calibration["ci"][name]
            assert low <= calibration[name] <= high
            assert [low, high] == percentile_ci(samples[name], 0.05)


def test_one_class_data_leaves_calibration_undefined_with_reasons():
    labels = np.zeros(40, dtype=int)
    _, outputs = _data(n=40, models=1)
    calibration = evaluate_outputs(labels, outputs, n_resamples=50)["models"][0]["calibration"]
    assert calibration["calibration_slope"] is None and calibration["ci"]["calibration_slope"] is None
    assert "one class" in calibration["undefined"]["calibration_intercept"]


def test_decision_curve_per_model_with_treat_all_and_treat_none():
    labels, outputs = _data()
    curve = evaluate_outputs(labels, outputs, n_resamples=50)["decision_curve"]
    assert curve["thresholds"] == list(DECISION_THRESHOLDS)
    assert "0.05" in curve["method"] and "0.50" in curve["method"] and "Vickers" in curve["method"]
    prevalence = labels.mean()
    assert curve["treat_all"] == pytest.approx(
        [prevalence - (1 - prevalence) * pt / (1 - pt) for pt in DECISION_THRESHOLDS]
    )
    assert curve["treat_none"] == [0.0] * len(DECISION_THRESHOLDS)
    for entry, output in zip(curve["models"], outputs, strict=True):
        assert entry["name"] == output.name and entry["model_id"] == output.model_id
        assert entry["net_benefit"] == net_benefit(labels, output.prob)


def test_subgroups_by_column_with_too_small_groups_marked():
    labels, outputs = _data(n=300, models=2)
    # Ward A: most notes; ward B: too few for a subgroup; ward C: enough notes but no deaths.
    groups = ["B"] * 10 + ["A"] * 290
    for index in np.flatnonzero(labels == 0)[-40:]:
        groups[index] = "C"
    report = evaluate_outputs(labels, outputs, n_resamples=100, groupings=[column_grouping("ward", groups)])
    [section] = report["subgroups"]["by"]
    assert report["subgroups"]["min_rows"] == MIN_SUBGROUP_ROWS and section["column"] == "ward"
    by_value = {group["value"]: group for group in section["groups"]}
    assert list(by_value) == ["A", "B", "C"]
    assert by_value["B"]["n"] == 10 and by_value["B"]["models"] == []
    assert "fewer than" in by_value["B"]["too_small"]
    assert by_value["C"]["positives"] == 0 and "one class" in by_value["C"]["too_small"]
    ward_a = by_value["A"]
    members = np.asarray(groups) == "A"
    assert ward_a["too_small"] is None and ward_a["n"] == int(members.sum())
    for entry, output in zip(ward_a["models"], outputs, strict=True):
        point = binary_metrics(labels[members], output.prob[members], output.threshold)
        for name in ("roc_auc", "sensitivity", "specificity"):
            assert entry[name] == point[name]
            low, high = entry["ci"][name]
            assert low <= high
        # The CI comes from resampling within the group: the same as bootstrapping the group alone.
        alone = bootstrap_ci(labels[members], output.prob[members], output.threshold, n_resamples=100)
        assert entry["ci"]["roc_auc"] == alone["roc_auc"]


def test_note_length_tertiles_state_their_cut_points():
    lengths = list(range(10, 100))
    grouping = note_length_grouping(lengths)
    assert grouping.column == NOTE_LENGTH and grouping.basis["unit"] == "characters"
    low, high = grouping.basis["cut_points"]
    counts = [grouping.groups.count(name) for name in grouping.order]
    assert counts == [30, 30, 30]
    pairs = list(zip(lengths, grouping.groups, strict=True))
    assert all(group == grouping.order[0] for length, group in pairs if length <= low)
    assert all(group == grouping.order[2] for length, group in pairs if length > high)
    assert str(low) in grouping.order[0] and str(high) in grouping.order[2]


def test_confident_errors_are_row_numbers_labels_and_probabilities_only():
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 0])
    probs = np.array([0.95, 0.2, 0.1, 0.9, 0.7, 0.45, 0.3, 0.99])
    report = evaluate_outputs(labels, [ModelOutput("m", "id-m", probs, 0.5)], n_resamples=20)
    errors = report["models"][0]["confident_errors"]
    assert errors["threshold"] == 0.5
    # False positives: rows 8 (0.99), 1 (0.95), 5 (0.7); false negatives: row 3 (0.1), then row 6 (0.45).
    assert errors["false_positives"] == [
        {"row": 8, "label": 0, "probability": 0.99},
        {"row": 1, "label": 0, "probability": 0.95},
        {"row": 5, "label": 0, "probability": 0.7},
    ]
    assert [error["row"] for error in errors["false_negatives"]] == [3, 6]
    assert errors["false_positive_count"] == 3 and errors["false_negative_count"] == 2
    assert set(errors["false_positives"][0]) == {"row", "label", "probability"}


def test_confident_errors_are_capped():
    labels, outputs = _data(n=300, models=1)
    errors = evaluate_outputs(labels, outputs, n_resamples=20)["models"][0]["confident_errors"]
    assert errors["false_positive_count"] > CONFIDENT_ERRORS_SHOWN
    assert len(errors["false_positives"]) == CONFIDENT_ERRORS_SHOWN
    probabilities = [error["probability"] for error in errors["false_positives"]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_models_csv_keeps_its_columns_in_order_and_adds_calibration_at_the_end():
    labels, outputs = _data()
    report = evaluate_outputs(labels, outputs, n_resamples=N_RESAMPLES)
    header = next(csv.reader(io.StringIO(report_to_csv(report))))
    assert header[: len(ORIGINAL_CSV_COLUMNS)] == ORIGINAL_CSV_COLUMNS
    assert header[len(ORIGINAL_CSV_COLUMNS) :] == [
        "calibration_intercept",
        "calibration_intercept_ci_lo",
        "calibration_intercept_ci_hi",
        "calibration_slope",
        "calibration_slope_ci_lo",
        "calibration_slope_ci_hi",
    ]
    rows = _csv_rows(report_to_csv(report, "models"))
    calibration = report["models"][1]["calibration"]
    for row in rows[2:4]:
        assert float(row["calibration_slope"]) == calibration["calibration_slope"]
        assert float(row["calibration_slope_ci_lo"]) == calibration["ci"]["calibration_slope"][0]


def test_other_csv_tables_decision_curve_subgroups_and_errors():
    labels, outputs = _data(n=300, models=2)
    groups = ["=cmd" if index % 2 else "ward A" for index in range(300)]
    report = evaluate_outputs(labels, outputs, n_resamples=50, groupings=[column_grouping("ward", groups)])
    curve = _csv_rows(report_to_csv(report, "decision_curve"))
    assert len(curve) == (2 + len(outputs)) * len(DECISION_THRESHOLDS)
    assert curve[0]["curve"] == "treat all" and float(curve[0]["threshold_probability"]) == 0.05
    model_rows = [row for row in curve if row["curve"] == "model 1"]
    assert [float(row["net_benefit"]) for row in model_rows] == net_benefit(labels, outputs[1].prob)

    subgroups = _csv_rows(report_to_csv(report, "subgroups"))
    assert {row["group"] for row in subgroups} == {"'=cmd", "ward A"}  # a group value is neutralised
    assert len(subgroups) == 2 * len(outputs)
    assert all(row["roc_auc"] and row["model"] for row in subgroups)

    errors = _csv_rows(report_to_csv(report, "confident_errors"))
    first = report["models"][0]["confident_errors"]["false_positives"][0]
    assert errors[0]["error"] == "false positive" and int(errors[0]["row"]) == first["row"]


def test_too_small_group_has_one_csv_row_without_figures():
    labels, outputs = _data(n=100, models=2)
    groups = ["small" if index < 5 else "large" for index in range(100)]
    report = evaluate_outputs(labels, outputs, n_resamples=50, groupings=[column_grouping("site", groups)])
    rows = _csv_rows(report_to_csv(report, "subgroups"))
    small = [row for row in rows if row["group"] == "small"]
    assert len(small) == 1 and "fewer than" in small[0]["too_small"] and small[0]["roc_auc"] == ""


def test_csv_tables_of_an_older_report_and_unknown_tables():
    labels, outputs = _data(models=1)
    report = evaluate_outputs(labels, outputs, n_resamples=20)
    older = {key: value for key, value in report.items() if key not in ("decision_curve", "subgroups")}
    older["models"] = [
        {key: value for key, value in model.items() if key not in ("calibration", "confident_errors")}
        for model in report["models"]
    ]
    rows = _csv_rows(report_to_csv(older))
    assert rows[0]["calibration_slope"] == "" and rows[0]["accuracy"] != ""
    for table in REPORT_TABLES[1:]:
        with pytest.raises(UserError, match="no .* table"):
            report_to_csv(older, table)
    with pytest.raises(UserError, match="unknown table"):
        report_to_csv(report, "violin")
