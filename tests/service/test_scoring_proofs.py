"""Proof that evaluations and /predict score the model they name: for LoRA and AdaLoRA lineages (first
and second fine-tunes, trained by the real worker), the probabilities an evaluation saves and those
POST /predict returns equal a direct forward pass of each saved model loaded on its own.

Serving shares one host between LoRA adapters (one mixed forward pass) and merges AdaLoRA adapters
into their base; the evaluation uses the same cache. Here every model is loaded alone with
ml.modeling.load_for_inference, scored, and its stored temperature applied by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.service.helpers import SMALL_JOB, bearer, notes_csv, stored_file, upload, wait_for_job

TEST_ROWS = 16  # one /predict request holds them all (NOTETUNE_MAX_PREDICT_TEXTS)
LINEAGES = ("lora", "adalora")


def _finetune(client, key: str, body: dict) -> str:
    response = client.post("/jobs/finetune", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    done = wait_for_job(client, key, response.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    return done["model_id"]


@pytest.fixture(scope="module")
def models(client, keys, workers) -> dict[str, str]:
    """{"lora:first", "lora:second", "adalora:first", "adalora:second"} -> model id."""
    workers.ensure_running()
    trainer = keys["trainer"]
    first_data = upload(client, trainer, notes_csv(40, seed=601), "first.csv").json()["id"]
    second_data = upload(client, trainer, notes_csv(40, seed=602), "second.csv").json()["id"]
    # A fitted temperature, so the served probabilities show whether each model's own is applied.
    hyperparameters = {**SMALL_JOB, "temperature_scaling": True}
    ids = {}
    for method in LINEAGES:
        first = _finetune(
            client,
            trainer,
            {"train_dataset_id": first_data, "method": method, "hyperparameters": hyperparameters},
        )
        body = {"train_dataset_id": second_data, "parent_model_id": first, "hyperparameters": hyperparameters}
        ids[f"{method}:first"], ids[f"{method}:second"] = first, _finetune(client, trainer, body)
    return ids


@pytest.fixture(scope="module")
def test_notes(client, keys, tiny_bert) -> dict:
    from ml.data import inspect_csv

    raw = notes_csv(TEST_ROWS, seed=603)
    notes, _ = inspect_csv(raw, base_model=tiny_bert)
    dataset = upload(client, keys["trainer"], raw, "test.csv").json()["id"]
    return {"dataset": dataset, "texts": notes.texts, "labels": notes.labels}


@pytest.fixture(scope="module")
def direct(models, test_notes, database, settings) -> dict[str, dict]:
    """Per model id: its manifest and P(died) from the saved model loaded on its own."""
    from core.db.models import Model
    from core.services.models import model_directory
    from ml.config import max_length_of, pooling_of
    from ml.forward import logits_for_texts
    from ml.metrics import softmax_probability
    from ml.modeling import load_for_inference, load_tokenizer
    from models_store.layout import read_manifest

    out = {}
    for model_id in models.values():
        with database.session() as session:
            model_dir = model_directory(settings, session.get(Model, model_id))
        manifest = read_manifest(model_dir)
        model = load_for_inference(model_dir, manifest)
        logits = logits_for_texts(
            model,
            load_tokenizer(manifest["base_model"]),
            test_notes["texts"],
            max_length_of(manifest),
            torch.device("cpu"),
            pooling=pooling_of(manifest),
        )
        prob = softmax_probability(logits, float(manifest.get("temperature") or 1.0))
        out[model_id] = {"manifest": manifest, "prob": prob}
    return out


def test_the_lineages_are_what_they_claim(models, direct):
    for method in LINEAGES:
        first, second = (direct[models[f"{method}:{stage}"]]["manifest"] for stage in ("first", "second"))
        assert (first["method"], first["stage"]) == (method, 1)
        assert (second["method"], second["stage"], second["parent_id"]) == (method, 2, first["id"])
        for manifest in (first, second):
            assert abs(manifest["temperature"] - 1.0) > 1e-3, "a temperature of 1 would prove nothing"


def test_first_and_second_fine_tunes_score_differently(models, direct):
    for method in LINEAGES:
        first, second = (direct[models[f"{method}:{stage}"]]["prob"] for stage in ("first", "second"))
        assert np.abs(first - second).max() > 1e-4, method


def test_an_evaluation_saves_and_reports_each_named_models_own_probabilities(
    client, keys, models, test_notes, direct, database, settings
):
    from core.db.models import Evaluation
    from ml.metrics import binary_metrics

    key = keys["trainer"]
    body = {
        "test_dataset_id": test_notes["dataset"],
        "models": ["base", *models.values()],
        "n_resamples": 100,
    }
    response = client.post("/jobs/evaluate", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    job = wait_for_job(client, key, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    with database.session() as session:
        evaluation = session.get(Evaluation, job["evaluation_id"])
        report, arrays_path = evaluation.report, evaluation.arrays_path
    with np.load(stored_file(settings, arrays_path)) as stored:
        arrays = {name: stored[name] for name in stored.files}
    assert np.array_equal(arrays["y_true"], test_notes["labels"])

    entries = {entry["model_id"]: entry for entry in report["models"] if entry["model_id"]}
    assert set(entries) == set(models.values())
    for label, model_id in models.items():
        entry, expected = entries[model_id], direct[model_id]
        np.testing.assert_allclose(
            arrays[f"prob:{entry['name']}"], expected["prob"], atol=1e-5, err_msg=label
        )
        threshold = expected["manifest"]["threshold"]
        assert entry["threshold"] == pytest.approx(threshold)
        recomputed = binary_metrics(test_notes["labels"], expected["prob"], threshold)
        assert entry["at_threshold"]["roc_auc"] == pytest.approx(recomputed["roc_auc"], abs=1e-9), label
        assert entry["at_threshold"]["confusion"] == recomputed["confusion"], label


def _predict(client, key: str, model_id: str, texts: list[str], compare_with: list[str]) -> dict:
    body = {"model_id": model_id, "texts": texts, "compare_with": compare_with}
    response = client.post("/predict", json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()


def test_predict_returns_each_named_models_own_probabilities(client, keys, models, test_notes, direct):
    key, texts = keys["predictor"], test_notes["texts"]
    ids = list(models.values())
    # All four in one request: the LoRA models share a host and a forward pass, the AdaLoRA ones merged.
    together = _predict(client, key, ids[0], texts, ids[1:])
    answers = {ids[0]: together["predictions"]}
    for other in ids[1:]:
        answers[other] = [p["compared"][other] for p in together["predictions"]]
    for label, model_id in models.items():
        alone = _predict(client, key, model_id, texts, [])["predictions"]
        threshold = direct[model_id]["manifest"]["threshold"]
        for served in (answers[model_id], alone):
            got = np.array([item["probability"] for item in served])
            np.testing.assert_allclose(got, direct[model_id]["prob"], atol=1e-5, err_msg=label)
            assert [item["label"] for item in served] == [int(p >= threshold) for p in got], label
            assert all(item["threshold"] == pytest.approx(threshold) for item in served), label
