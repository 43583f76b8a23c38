"""Evaluation jobs (issue 4): compare the base model and fine-tuned models on a held-out test set."""

from __future__ import annotations

import csv
import io

import pytest

from tests.service.helpers import SMALL_JOB, bearer, notes_csv, upload, wait_for_job


@pytest.fixture(scope="module")
def trained(client, keys, workers) -> dict[str, str]:
    workers.ensure_running()
    trainer = keys["trainer"]
    train = upload(client, trainer, notes_csv(40, seed=501)).json()["id"]
    body = {"train_dataset_id": train, "method": "lora", "hyperparameters": SMALL_JOB}
    job = client.post("/jobs/finetune", json=body, headers=bearer(trainer)).json()
    done = wait_for_job(client, trainer, job["id"])
    assert done["status"] == "succeeded", done["error"]
    test = upload(client, trainer, notes_csv(30, seed=502), "test.csv").json()["id"]
    return {"model": done["model_id"], "test": test}


@pytest.fixture(scope="module")
def evaluation(client, keys, trained) -> dict:
    trainer = keys["trainer"]
    body = {"test_dataset_id": trained["test"], "model_ids": ["base", trained["model"]], "n_resamples": 200}
    response = client.post("/jobs/evaluate", json=body, headers=bearer(trainer))
    assert response.status_code == 202, response.text
    assert response.json()["kind"] == "evaluate"
    done = wait_for_job(client, trainer, response.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["evaluation_id"]
    report = client.get(f"/evaluations/{done['evaluation_id']}", headers=bearer(trainer))
    assert report.status_code == 200
    return report.json()


def test_report_compares_the_models(evaluation, trained):
    report = evaluation["report"]
    assert [model["name"] for model in report["models"]] == ["base", trained["model"]]
    assert report["n"] == 30
    assert len(report["comparisons"]) == 1
    for model in report["models"]:
        assert "ci" in model["at_0_5"] and "ci" in model["at_threshold"]


def test_report_as_csv(client, keys, evaluation):
    response = client.get(f"/evaluations/{evaluation['id']}?format=csv", headers=bearer(keys["trainer"]))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert len(rows) >= 3  # a header and at least a row per model


@pytest.mark.parametrize("kind", ["roc", "pr", "confusion", "calibration"])
def test_plots_are_png(client, keys, evaluation, kind):
    response = client.get(
        f"/evaluations/{evaluation['id']}/plots/{kind}.png", headers=bearer(keys["trainer"])
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_bad_evaluation_requests(client, keys, trained, evaluation):
    trainer = bearer(keys["trainer"])
    cases = [
        ({"test_dataset_id": "0" * 32, "model_ids": ["base"]}, 404, "dataset_not_found"),
        ({"test_dataset_id": trained["test"], "model_ids": ["1" * 32]}, 404, "model_not_found"),
        ({"test_dataset_id": trained["test"], "model_ids": ["base", "base"]}, 422, "duplicate_model"),
        ({"test_dataset_id": trained["test"], "model_ids": []}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        response = client.post("/jobs/evaluate", json=body, headers=trainer)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["code"] == code
    plot = client.get(f"/evaluations/{evaluation['id']}/plots/violin.png", headers=trainer)
    assert plot.status_code == 422
    missing = client.get("/evaluations/" + "2" * 32, headers=trainer)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "evaluation_not_found"
