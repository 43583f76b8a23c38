"""The TF-IDF baseline through the service: a fine-tune's result shows it with the verdict, and an
evaluation lists `baseline:<model id>` as a column scored by the stored baseline (real API, real
worker). Another organisation's model: see the variant in test_tenancy.py's BODY_REFERENCES."""

from __future__ import annotations

import numpy as np
import pytest

from tests.service.helpers import (
    SMALL_JOB,
    bearer,
    error_of,
    model_row_without_training,
    notes_csv,
    stored_file,
    stored_model,
    upload,
    wait_for_job,
)

RESAMPLES = 100


@pytest.fixture(scope="module")
def trained(client, keys, workers) -> dict:
    """A first LoRA fine-tune through the API, and a test set it never saw."""
    workers.ensure_running()
    trainer = keys["trainer"]
    data = upload(client, trainer, notes_csv(40, seed=611), "baseline-train.csv").json()["id"]
    body = {"train_dataset_id": data, "method": "lora", "hyperparameters": SMALL_JOB}
    started = client.post("/jobs/finetune", json=body, headers=bearer(trainer))
    assert started.status_code == 202, started.text
    job = wait_for_job(client, trainer, started.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    test_csv = notes_csv(30, seed=612)
    test = upload(client, trainer, test_csv, "baseline-test.csv").json()["id"]
    return {"model": job["model_id"], "job": job, "data": data, "test": test, "test_csv": test_csv}


def test_the_fine_tune_result_shows_the_baseline_and_the_verdict(client, keys, trained):
    from ml.baseline import verdict

    model = client.get(f"/models/{trained['model']}", headers=bearer(keys["predictor"])).json()
    for metrics in (trained["job"]["metrics"], model["metrics"]):
        comparison = metrics["comparison"]
        assert {"base_untrained", "fine_tuned", "baseline", "verdict"} <= set(comparison)
        assert comparison["verdict"] == verdict(
            comparison["fine_tuned"]["roc_auc"], comparison["baseline"]["roc_auc"]
        )
        assert metrics["baseline"]["kind"] == "tfidf_logistic_regression"
        assert metrics["baseline"]["validation_metrics"] == comparison["baseline"]


def test_a_baseline_column_is_the_stored_baselines_probabilities(
    client, keys, trained, database, settings, tiny_bert
):
    from core.db.models import Evaluation, Model
    from ml.baseline import load_baseline
    from ml.data import inspect_csv

    trainer, model_id = keys["trainer"], trained["model"]
    name = f"baseline:{model_id}"
    body = {"test_dataset_id": trained["test"], "models": [name, model_id], "n_resamples": RESAMPLES}
    started = client.post("/jobs/evaluate", json=body, headers=bearer(trainer))
    assert started.status_code == 202, started.text
    job = wait_for_job(client, trainer, started.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    report = client.get(f"/evaluations/{job['evaluation_id']}", headers=bearer(trainer)).json()["report"]
    column, network = report["models"]
    assert (column["name"], column["model_id"], column["kind"]) == (name, model_id, "baseline")
    assert (column["threshold"], column["threshold_source"]) == (0.5, "stored")
    assert (network["name"], network["kind"]) == (model_id, "model")
    assert [(c["reference"], c["model"]) for c in report["comparisons"]] == [(name, model_id)]

    with database.session() as session:
        arrays_path = session.get(Evaluation, job["evaluation_id"]).arrays_path
        model_dir = stored_model(settings, session.get(Model, model_id).path)
    with np.load(stored_file(settings, arrays_path)) as arrays:
        scored = np.array(arrays[f"prob:{name}"])
    notes, _ = inspect_csv(trained["test_csv"], base_model=tiny_bert)
    np.testing.assert_array_equal(scored, load_baseline(model_dir).predict_proba(notes.texts))


def test_baseline_entries_follow_the_rules_for_models(client, keys, trained, database, organisation_id):
    trainer = bearer(keys["trainer"])
    test, model_id, unknown = trained["test"], trained["model"], "1" * 32
    name = f"baseline:{model_id}"
    _, untrained = model_row_without_training(database, organisation_id, trained["data"])
    jobs_before = client.get("/jobs?kind=evaluate", headers=trainer).json()["count"]

    def post(models: list[str], **extra):
        body = {"test_dataset_id": test, "models": models, "n_resamples": RESAMPLES, **extra}
        return client.post("/jobs/evaluate", json=body, headers=trainer)

    missing, missing_model = post([f"baseline:{unknown}"]), post([unknown])
    assert missing.status_code == missing_model.status_code == 404
    assert error_of(missing) == error_of(missing_model)

    old = post([f"baseline:{untrained}"])
    assert old.status_code == 422 and error_of(old)["code"] == "no_stored_baseline"
    assert error_of(old)["message"].startswith(f"model {untrained} has no stored baseline")

    duplicate = post([name, model_id, name])
    assert duplicate.status_code == 422 and error_of(duplicate)["code"] == "duplicate_model"
    unlisted = post([model_id], thresholds={name: 0.3})
    assert error_of(unlisted)["code"] == "threshold_for_unlisted_model"
    assert error_of(unlisted)["details"]["models"] == [name]
    nine = post([name, *(f"{index:032x}" for index in range(8))])
    assert nine.status_code == 422 and error_of(nine)["code"] == "validation_error"
    assert client.get("/jobs?kind=evaluate", headers=trainer).json()["count"] == jobs_before
