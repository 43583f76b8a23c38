"""The reviewer's report over HTTP: subgroup columns are checked before a job is queued (JSON and
multipart), and a real worker's report carries calibration, the decision curve, subgroups, weights
hashes and confident errors by row number, with the extra CSV tables and the decision-curve plot."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.service.helpers import bearer, error_of, rows_csv, stored_datasets, upload, wait_for_job

CANARY = "QUOKKA-CANARY-5150"
ROWS = 40


def ward_csv(n: int = ROWS, *, wards: int = 2) -> bytes:
    """Text,label,ward: short made-up notes, a death every third note, `wards` distinct wards."""
    rows = [
        (
            f"Note {index} {CANARY}: stage {'IV' if index % 3 == 0 else 'I'}.",
            int(index % 3 == 0),
            f"w{index % wards}",
        )
        for index in range(n)
    ]
    return rows_csv(rows, header=("Text", "label", "ward"))


@pytest.fixture(scope="module")
def ward_dataset(client, keys) -> str:
    response = upload(client, keys["trainer"], ward_csv(), "wards.csv")
    assert response.status_code in (200, 201), response.text
    return response.json()["id"]


def evaluate_count(client, trainer) -> int:
    return client.get("/jobs?kind=evaluate", headers=trainer).json()["count"]


def test_unusable_subgroup_columns_are_refused_before_a_job_is_queued(client, keys, ward_dataset):
    trainer = bearer(keys["trainer"])
    many = upload(client, keys["trainer"], ward_csv(wards=25), "many-wards.csv").json()["id"]
    six = [f"c{index}" for index in range(6)]
    cases = [
        ({"test_dataset_id": ward_dataset, "subgroup_columns": ["bed"]}, "missing_subgroup_column", "bed"),
        ({"test_dataset_id": ward_dataset, "subgroup_columns": ["Text"]}, "reserved_subgroup_column", "Text"),
        ({"test_dataset_id": many, "subgroup_columns": ["ward"]}, "too_many_subgroup_values", "ward"),
        ({"test_dataset_id": ward_dataset, "subgroup_columns": six}, "validation_error", None),
        ({"test_dataset_id": ward_dataset, "subgroup_columns": [""]}, "validation_error", None),
    ]  # fmt: skip
    before = evaluate_count(client, trainer)
    for body, code, column in cases:
        response = client.post("/jobs/evaluate", json={"models": ["base"], **body}, headers=trainer)
        assert response.status_code == 422, (body, response.text)
        error = error_of(response)
        assert error["code"] == code, body
        if column:
            assert repr(column) in error["message"] and error["details"]["column"] == column
        assert CANARY not in response.text
    assert evaluate_count(client, trainer) == before


def test_an_inline_csv_without_the_column_is_refused_and_not_stored(client, keys, settings):
    trainer = bearer(keys["trainer"])
    before = stored_datasets(client, keys["trainer"], settings)
    for columns in (["ward", "bed"], json.dumps(["bed"])):
        response = client.post(
            "/jobs/evaluate",
            data={"models": ["base"], "subgroup_columns": columns},
            files={"file": ("inline.csv", ward_csv(31), "text/csv")},  # never uploaded: storing it would show
            headers=trainer,
        )
        assert response.status_code == 422, response.text
        assert error_of(response)["code"] == "missing_subgroup_column"
        assert "'bed'" in error_of(response)["message"]
    assert stored_datasets(client, keys["trainer"], settings) == before


def test_the_report_of_a_worker_carries_the_reviewer_items(client, keys, workers, ward_dataset):
    workers.ensure_running()
    trainer = bearer(keys["trainer"])
    body = {
        "test_dataset_id": ward_dataset,
        "models": ["base"],
        "n_resamples": 100,
        "subgroup_columns": ["ward"],
    }
    response = client.post("/jobs/evaluate", json=body, headers=trainer)
    assert response.status_code == 202, response.text
    job = wait_for_job(client, keys["trainer"], response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    evaluation = client.get(f"/evaluations/{job['evaluation_id']}", headers=trainer)
    assert CANARY not in evaluation.text
    report = evaluation.json()["report"]

    [model] = report["models"]
    assert model["model_id"] is None and len(model["weights"]["sha256"]) == 64
    assert set(model["calibration"]) >= {"brier", "ece", "calibration_intercept", "calibration_slope", "ci"}
    assert set(model["confident_errors"]) >= {"false_positives", "false_negatives"}
    assert report["decision_curve"]["thresholds"][0] == 0.05
    by = {section["column"]: section for section in report["subgroups"]["by"]}
    assert set(by) == {"note_length", "ward"}
    # 20 notes per ward: fewer than the minimum, so each ward is reported as too small.
    assert [(group["value"], group["n"]) for group in by["ward"]["groups"]] == [("w0", 20), ("w1", 20)]
    assert all("fewer than" in group["too_small"] for group in by["ward"]["groups"])
    assert report["data_checks"]["truncated"]["count"] == 0

    url = f"/evaluations/{job['evaluation_id']}"
    main = client.get(f"{url}?format=csv", headers=trainer)
    assert main.status_code == 200 and "calibration_slope" in main.text.splitlines()[0]
    subgroups = client.get(f"{url}?format=csv&table=subgroups", headers=trainer)
    assert subgroups.status_code == 200 and "subgroups" in subgroups.headers["content-disposition"]
    groups = {row["group"] for row in csv.DictReader(io.StringIO(subgroups.text))}
    assert {"w0", "w1"} <= groups
    unknown = client.get(f"{url}?format=csv&table=violin", headers=trainer)
    assert unknown.status_code == 422
    plot = client.get(f"{url}/plots/decision_curve.png", headers=trainer)
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
