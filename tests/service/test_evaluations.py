"""Evaluation jobs (issue 4) over HTTP with a real worker: the base model, a first fine-tune and its
second fine-tune compared on a held-out test set; and the forgetting check of the second fine-tune."""

from __future__ import annotations

import csv
import inspect
import io
import json
import struct

import pytest

from ml.metrics import METRIC_NAMES
from ml.report import FORGETTING_METRICS
from tests.service.helpers import (
    SMALL_JOB,
    bearer,
    default_organisation_id,
    error_of,
    notes_csv,
    stored_datasets,
    upload,
    wait_for_job,
)

METRICS = METRIC_NAMES
PLOT_KINDS = ("roc", "pr", "confusion", "calibration")
UNLISTED = "threshold_for_unlisted_model"
TEST_ROWS = 30
RESAMPLES = 200
SEED = 3


def finetune(client, key: str, body: dict) -> dict:
    response = client.post("/jobs/finetune", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    done = wait_for_job(client, key, response.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    return done


@pytest.fixture(scope="module")
def lineage(client, keys, workers) -> dict:
    """A first LoRA fine-tune, its second fine-tune on new notes, and a test set neither saw."""
    workers.ensure_running()
    trainer = keys["trainer"]
    first_data = upload(client, trainer, notes_csv(40, seed=501), "first.csv").json()["id"]
    first = finetune(
        client, trainer, {"train_dataset_id": first_data, "method": "lora", "hyperparameters": SMALL_JOB}
    )
    second_data = upload(client, trainer, notes_csv(40, seed=503), "second.csv").json()["id"]
    second = finetune(
        client,
        trainer,
        {"train_dataset_id": second_data, "parent_model_id": first["model_id"], "hyperparameters": SMALL_JOB},
    )
    test_csv = notes_csv(TEST_ROWS, seed=502)
    test = upload(client, trainer, test_csv, "test.csv").json()["id"]
    return {
        "first": first["model_id"],
        "second": second["model_id"],
        "first_job": first,
        "second_job": second,
        "test": test,
        "test_csv": test_csv,
    }


def evaluation_body(lineage: dict, **extra) -> dict:
    models = ["base", lineage["first"], lineage["second"]]
    return {
        "test_dataset_id": lineage["test"],
        "models": models,
        "n_resamples": RESAMPLES,
        "seed": SEED,
        **extra,
    }


def finished_evaluation(client, key: str, response) -> tuple[dict, dict]:
    """(the succeeded job, GET /evaluations/{id}) for an accepted POST /jobs/evaluate."""
    assert response.status_code == 202, response.text
    assert response.json()["kind"] == "evaluate"
    job = wait_for_job(client, key, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["evaluation_id"] and job["metrics"] == {"evaluation_id": job["evaluation_id"]}
    report = client.get(f"/evaluations/{job['evaluation_id']}", headers=bearer(key))
    assert report.status_code == 200, report.text
    return job, report.json()


def run_evaluation(client, key: str, body: dict) -> tuple[dict, dict]:
    return finished_evaluation(client, key, client.post("/jobs/evaluate", json=body, headers=bearer(key)))


@pytest.fixture(scope="module")
def evaluation(client, keys, lineage) -> dict:
    job, evaluation = run_evaluation(client, keys["trainer"], evaluation_body(lineage))
    assert evaluation["job_id"] == job["id"] and evaluation["test_dataset_id"] == lineage["test"]
    return evaluation


def model_entry(report: dict, name: str) -> dict:
    [entry] = [model for model in report["models"] if model["name"] == name]
    return entry


def assert_metric_block(block: dict, threshold: float) -> None:
    assert block["threshold"] == pytest.approx(threshold)
    assert block["n"] == TEST_ROWS
    assert set(block["confusion"]) == {"tn", "fp", "fn", "tp"}
    assert sum(block["confusion"].values()) == TEST_ROWS
    assert set(block["ci"]) == set(METRICS)
    for name in METRICS:
        assert name in block
        ci = block["ci"][name]
        if block[name] is None:
            assert ci is None
        else:
            low, high = ci
            assert low <= high
    # Both classes are in the test set, so the ranking metrics are always defined.
    for name in ("roc_auc", "pr_auc", "brier", "ece", "accuracy"):
        assert block[name] is not None and block["ci"][name] is not None


def test_report_has_every_documented_field(client, keys, evaluation, lineage):
    report = evaluation["report"]
    assert [model["name"] for model in report["models"]] == ["base", lineage["first"], lineage["second"]]
    assert [model["model_id"] for model in report["models"]] == [None, lineage["first"], lineage["second"]]
    assert report["n"] == TEST_ROWS and report["data"]["rows"] == TEST_ROWS
    positives = report["class_counts"]["1"]
    assert report["class_counts"]["0"] + positives == TEST_ROWS
    assert (report["n_resamples"], report["seed"], report["ci_level"]) == (RESAMPLES, SEED, 0.95)

    stored = {
        name: client.get(f"/models/{lineage[name]}", headers=bearer(keys["predictor"])).json()["threshold"]
        for name in ("first", "second")
    }
    expected_thresholds = {
        "base": 0.5,
        lineage["first"]: stored["first"],
        lineage["second"]: stored["second"],
    }
    for model in report["models"]:
        assert model["threshold"] == pytest.approx(expected_thresholds[model["name"]])
        assert model["threshold_source"] == "stored"
        assert_metric_block(model["at_0_5"], 0.5)
        assert_metric_block(model["at_threshold"], expected_thresholds[model["name"]])

    baseline = report["majority_baseline"]
    assert baseline["predicts"] == 0  # 35% of the test notes are deaths
    assert baseline["metrics"]["accuracy"] == pytest.approx(1 - positives / TEST_ROWS)

    comparisons = report["comparisons"]
    assert [(c["reference"], c["model"]) for c in comparisons] == [
        ("base", lineage["first"]),
        ("base", lineage["second"]),
    ]
    for comparison in comparisons:
        delong = comparison["roc_auc"]
        assert {"auc_a", "auc_b", "difference", "se", "ci", "p_value"} <= set(delong)
        assert delong["difference"] == pytest.approx(delong["auc_b"] - delong["auc_a"])
        reference, model = model_entry(report, "base"), model_entry(report, comparison["model"])
        assert delong["auc_a"] == pytest.approx(reference["at_0_5"]["roc_auc"])
        assert delong["auc_b"] == pytest.approx(model["at_0_5"]["roc_auc"])
        mcnemar = comparison["labels"]
        assert {"b", "c", "statistic", "p_value", "method"} <= set(mcnemar)
        assert 0.0 <= mcnemar["p_value"] <= 1.0
        assert set(comparison["differences"]) == set(METRICS)
        for name, row in comparison["differences"].items():
            assert set(row) == {"a", "b", "difference", "ci"}
            if row["difference"] is not None:
                assert row["difference"] == pytest.approx(row["b"] - row["a"])
                assert row["a"] == pytest.approx(reference["at_threshold"][name])


def test_the_same_request_gives_the_same_numbers(client, keys, evaluation, lineage):
    job, again = run_evaluation(client, keys["trainer"], evaluation_body(lineage))
    assert again["id"] != evaluation["id"] and job["id"] != evaluation["job_id"]
    assert again["report"] == evaluation["report"]
    other_seed = run_evaluation(client, keys["trainer"], evaluation_body(lineage, seed=SEED + 1))[1]
    first_ci = model_entry(evaluation["report"], lineage["first"])["at_0_5"]["ci"]
    assert model_entry(other_seed["report"], lineage["first"])["at_0_5"]["ci"] != first_ci


def test_inline_csv_gives_the_same_report(client, keys, evaluation, lineage, settings):
    trainer = keys["trainer"]
    form = {
        "models": ["base", lineage["first"], lineage["second"]],  # the field repeated
        "n_resamples": str(RESAMPLES),
        "seed": str(SEED),
        "name": "inline test set",
    }
    files = {"file": ("inline-test.csv", lineage["test_csv"], "text/csv")}
    response = client.post("/jobs/evaluate", data=form, files=files, headers=bearer(trainer))
    job, inline = finished_evaluation(client, trainer, response)
    # The same bytes are the same dataset, so nothing new was stored.
    assert job["test_dataset_id"] == lineage["test"] and job["name"] == "inline test set"
    assert inline["report"] == evaluation["report"]


def test_a_threshold_override_changes_only_the_at_threshold_figures(client, keys, evaluation, lineage):
    thresholds = {"base": 0.0, lineage["second"]: 1.0}
    _, overridden = run_evaluation(client, keys["trainer"], evaluation_body(lineage, thresholds=thresholds))
    report, original = overridden["report"], evaluation["report"]
    assert model_entry(report, lineage["first"]) == model_entry(original, lineage["first"])
    for name, threshold in thresholds.items():
        entry = model_entry(report, name)
        assert entry["threshold"] == threshold and entry["threshold_source"] == "request"
        assert entry["at_0_5"] == model_entry(original, name)["at_0_5"]
        assert entry["at_threshold"]["threshold"] == threshold
        assert entry["at_threshold"] != model_entry(original, name)["at_threshold"]
    # 0.0 calls every note a death; 1.0 calls none (a probability from a softmax stays below 1).
    everyone = model_entry(report, "base")["at_threshold"]
    assert everyone["confusion"]["tn"] == everyone["confusion"]["fn"] == 0
    assert everyone["sensitivity"] == 1.0 and everyone["specificity"] == 0.0
    nobody = model_entry(report, lineage["second"])["at_threshold"]
    assert nobody["confusion"]["tp"] == nobody["confusion"]["fp"] == 0
    assert nobody["sensitivity"] == 0.0 and nobody["specificity"] == 1.0


def test_report_as_csv_with_neutralised_cells(client, keys, evaluation, lineage, database):
    trainer = bearer(keys["trainer"])
    response = client.get(f"/evaluations/{evaluation['id']}?format=csv", headers=trainer)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert evaluation["id"] in response.headers["content-disposition"]
    header, *rows = list(csv.reader(io.StringIO(response.text)))
    assert header[:4] == ["model", "model_id", "threshold_kind", "threshold"]
    assert {f"{name}_ci_lo" for name in METRICS} <= set(header)
    assert [(row[0], row[2]) for row in rows] == [
        (name, kind) for name in ("base", lineage["first"], lineage["second"]) for kind in ("0.5", "decision")
    ]
    # Text cells never start like a formula; the rest are numbers (a calibration intercept may be negative).
    assert not [cell for row in rows for cell in row[:3] if cell[:1] in ("=", "+", "-", "@")]
    assert all(float(cell) == float(cell) for row in rows for cell in row[3:] if cell)

    # Model names are ids today; a report whose names look like formulas must still export safely.
    hostile = ['=HYPERLINK("http://x")', "+1+1", "-2", "@SUM(A1)"]
    report = json.loads(json.dumps(evaluation["report"]))
    for model, name in zip(report["models"], hostile, strict=False):
        model["name"], model["model_id"] = name, name
    doctored = stored_evaluation(database, evaluation, report)
    exported = client.get(f"/evaluations/{doctored}?format=csv", headers=trainer)
    assert exported.status_code == 200
    cells = [row[:2] for row in list(csv.reader(io.StringIO(exported.text)))[1:]]
    assert cells[::2] == [["'" + name, "'" + name] for name in hostile[: len(report["models"])]]


def stored_evaluation(database, evaluation: dict, report: dict) -> str:
    """An evaluation row holding `report`, with a job row of its own (one evaluation per job)."""
    from core.db.base import new_id, utcnow
    from core.db.models import Evaluation, Job, JobKind, JobStatus

    job_id, evaluation_id = new_id(), new_id()
    with database.transaction() as session:
        session.add(
            Job(
                id=job_id,
                organisation_id=default_organisation_id(database),
                kind=JobKind.evaluate,
                status=JobStatus.succeeded,
                test_dataset_id=evaluation["test_dataset_id"],
                hyperparameters={},
                created_at=utcnow(),
            )
        )
        session.flush()
        session.add(
            Evaluation(
                id=evaluation_id,
                organisation_id=default_organisation_id(database),
                job_id=job_id,
                test_dataset_id=evaluation["test_dataset_id"],
                report=report,
                arrays_path="evaluations/none.npz",
                created_at=utcnow(),
            )
        )
    return evaluation_id


def png_size(content: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which a valid PNG has first."""
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    assert content[12:16] == b"IHDR"
    return struct.unpack(">II", content[16:24])


@pytest.mark.parametrize("kind", PLOT_KINDS)
def test_plots_are_pngs_of_the_asked_size(client, keys, evaluation, kind):
    from ml.plots import plot_png

    defaults = inspect.signature(plot_png).parameters
    url = f"/evaluations/{evaluation['id']}/plots/{kind}.png"
    response = client.get(url, headers=bearer(keys["trainer"]))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert png_size(response.content) == (defaults["width_px"].default, defaults["height_px"].default)
    sized = client.get(f"{url}?width=640&height=480", headers=bearer(keys["trainer"]))
    assert sized.status_code == 200 and png_size(sized.content) == (640, 480)


def test_bad_evaluation_requests(client, keys, lineage, evaluation):
    trainer = bearer(keys["trainer"])
    test, first, second = lineage["test"], lineage["first"], lineage["second"]
    unknown = "1" * 32
    nine = ["base", *(f"{index:032x}" for index in range(8))]
    cases = [
        ({"test_dataset_id": "0" * 32, "models": ["base"]}, 404, "dataset_not_found"),
        ({"test_dataset_id": test, "models": [first, unknown]}, 404, "model_not_found"),
        ({"test_dataset_id": test, "models": nine}, 422, "validation_error"),
        ({"test_dataset_id": test, "models": []}, 422, "validation_error"),
        ({"test_dataset_id": test}, 422, "validation_error"),
        ({"test_dataset_id": test, "models": ["base", first, "base"]}, 422, "duplicate_model"),
        ({"test_dataset_id": test, "models": [first], "thresholds": {first: 1.5}}, 422, "validation_error"),
        ({"test_dataset_id": test, "models": [first], "thresholds": {first: -0.1}}, 422, "validation_error"),
        ({"test_dataset_id": test, "models": [first], "thresholds": {second: 0.3}}, 422, UNLISTED),
        ({"test_dataset_id": test, "models": [first], "thresholds": {"base": 0.3}}, 422, UNLISTED),
        # `model_ids`, the field's name in v0.1, is an unknown field now.
        ({"test_dataset_id": test, "model_ids": [first]}, 422, "validation_error"),
        ({"test_dataset_id": test, "models": [first], "model_ids": [first]}, 422, "validation_error"),
        ({"test_dataset_id": test, "models": [first], "n_resamples": 10}, 422, "validation_error"),
    ]  # fmt: skip
    jobs_before = client.get("/jobs?kind=evaluate", headers=trainer).json()["count"]
    for body, status, code in cases:
        response = client.post("/jobs/evaluate", json=body, headers=trainer)
        assert response.status_code == status, (body, response.text)
        assert error_of(response)["code"] == code, body
    assert client.get("/jobs?kind=evaluate", headers=trainer).json()["count"] == jobs_before

    plot = f"/evaluations/{evaluation['id']}/plots"
    assert client.get(f"{plot}/violin.png", headers=trainer).status_code == 422
    too_small = client.get(f"{plot}/roc.png?width=50", headers=trainer)
    assert too_small.status_code == 422 and error_of(too_small)["code"] == "plot_size"
    missing = client.get("/evaluations/" + "2" * 32, headers=trainer)
    assert missing.status_code == 404 and error_of(missing)["code"] == "evaluation_not_found"


def test_bad_inline_evaluation_requests_store_nothing(client, keys, lineage, settings):
    trainer = bearer(keys["trainer"])
    first = lineage["first"]
    new_csv = notes_csv(30, seed=504)  # never uploaded: storing it would show
    cases = [
        ({"models": [first]}, b"Note,label\nx,1\n", 422, "missing_column"),
        ({"models": [first]}, b"Text,label\na note,2\n", 422, "bad_label"),
        ({"models": [first, "1" * 32]}, new_csv, 404, "model_not_found"),
        ({"models": json.dumps(["base", "base"])}, new_csv, 422, "duplicate_model"),
        ({"models": '["base",'}, new_csv, 422, "invalid_models"),
        ({"models": [first], "thresholds": "[0.3]"}, new_csv, 422, "invalid_thresholds"),
        ({"models": [first], "thresholds": json.dumps({"base": 0.3})}, new_csv, 422, UNLISTED),
        ({"models": ["base", *(f"{index:032x}" for index in range(8))]}, new_csv, 422, "validation_error"),
        ({"models": [first], "seed": "minus one"}, new_csv, 422, "validation_error"),
        ({}, new_csv, 422, "validation_error"),
    ]  # fmt: skip
    before = stored_datasets(client, keys["trainer"], settings)
    for form, content, status, code in cases:
        files = {"file": ("inline.csv", content, "text/csv")}
        response = client.post("/jobs/evaluate", data=form, files=files, headers=trainer)
        assert response.status_code == status, (form, response.text)
        assert error_of(response)["code"] == code, form
    no_file = client.post(
        "/jobs/evaluate", data={"models": [first]}, files={"x": ("a", b"", "text/csv")}, headers=trainer
    )
    assert no_file.status_code == 422 and error_of(no_file)["code"] == "file_required"
    assert stored_datasets(client, keys["trainer"], settings) == before


def test_cancelling_an_evaluation_stops_it_before_the_next_model(database, settings, lineage, keys):
    """In this process, so the cancel lands while the job runs: the worker checks before each model."""
    from core.db.models import Evaluation, JobStatus
    from core.db.repositories import JobRepository
    from core.services.auth import default_organisation
    from core.services.evaluations import EvaluationSpec, create_evaluation_job
    from core.services.jobs import cancel_job
    from worker.execution import evaluation_body, run_job
    from worker.runtime import WorkerRuntime

    spec = EvaluationSpec(test_dataset_id=lineage["test"], models=["base", lineage["first"]], n_resamples=100)
    with database.transaction() as session:
        organisation_id = default_organisation(session).id
        job, _ = create_evaluation_job(
            session, settings, spec, organisation_id=organisation_id, api_key_id=None
        )
        job_id = job.id  # never enqueued: only this test runs it

    def cancelled_while_running(runtime, running_job):
        with runtime.database.transaction() as session:
            assert cancel_job(session, running_job.id, organisation_id=organisation_id).cancel_requested
        evaluation_body(runtime, running_job)

    runtime = WorkerRuntime(settings)
    try:
        run_job(runtime, job_id, "test-process", cancelled_while_running)
    finally:
        runtime.database.dispose()
    with database.session() as session:
        job = JobRepository(session, organisation_id).get(job_id)
        assert job.status == JobStatus.cancelled and job.finished_at is not None
        assert session.query(Evaluation).filter(Evaluation.job_id == job_id).count() == 0


def test_second_finetune_result_carries_the_forgetting_check(client, keys, lineage):
    trainer, predictor = bearer(keys["trainer"]), bearer(keys["predictor"])
    first_job = client.get(f"/jobs/{lineage['first_job']['id']}", headers=trainer).json()
    assert {"base_untrained", "fine_tuned"} <= set(first_job["metrics"]["comparison"])
    assert "forgetting_check" not in first_job["metrics"]

    job = client.get(f"/jobs/{lineage['second_job']['id']}", headers=trainer).json()
    model = client.get(f"/models/{lineage['second']}", headers=predictor).json()
    assert job["metrics"]["forgetting_check"] == model["metrics"]["forgetting_check"]
    check = job["metrics"]["forgetting_check"]
    assert check["on"] == "the parent's validation split" and check["rows"] > 0
    assert set(check["differences"]) == set(FORGETTING_METRICS)
    for row in check["differences"].values():
        assert set(row) == {"a", "b", "difference", "ci"}
    auc = check["differences"]["roc_auc"]
    assert auc["difference"] == pytest.approx(auc["b"] - auc["a"])
    assert auc["ci"][0] <= auc["ci"][1]
    assert auc["a"] == pytest.approx(check["parent"]["roc_auc"]) and auc["b"] == pytest.approx(
        check["second"]["roc_auc"]
    )
    assert {"difference", "ci", "p_value"} <= set(check["roc_auc_test"])

    comparison = job["metrics"]["comparison"]
    assert {"base_untrained", "fine_tuned", "parent_vs_fine_tuned"} <= set(comparison)
    on_new_data = comparison["parent_vs_fine_tuned"]
    assert set(on_new_data["differences"]) == set(FORGETTING_METRICS)
    assert {"parent", "second", "roc_auc_test"} <= set(on_new_data)
