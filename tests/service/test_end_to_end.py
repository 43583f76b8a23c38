"""Upload -> first fine-tune -> second fine-tune -> lineage -> predict, over HTTP, with a real worker."""

from __future__ import annotations

import pytest

from tests.service.helpers import SMALL_JOB, bearer, notes_csv, upload, wait_for_job


def finetune(client, key: str, body: dict) -> dict:
    response = client.post("/jobs/finetune", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    return response.json()


@pytest.mark.parametrize("method", ["full", "lora", "adalora"])
def test_first_and_second_finetune_lineage_and_predict(client, keys, worker, settings, tiny_bert, method):
    trainer, predictor = keys["trainer"], keys["predictor"]
    first_data = upload(client, trainer, notes_csv(40, seed=11), "first.csv")
    assert first_data.status_code in (200, 201), first_data.text
    first = finetune(
        client,
        trainer,
        {
            "train_dataset_id": first_data.json()["id"],
            "method": method,
            "hyperparameters": {**SMALL_JOB, "epochs": 2},
        },
    )
    first_done = wait_for_job(client, trainer, first["id"])
    assert first_done["status"] == "succeeded", first_done["error"]
    assert first_done["attempt"] == 1
    assert first_done["progress"]["percent"] == 100.0
    assert "validation_metrics" in first_done["metrics"]
    parent_id = first_done["model_id"]
    assert parent_id and (settings.models_root / parent_id / "manifest.json").is_file()

    events = client.get(f"/jobs/{first['id']}/events", headers=bearer(trainer)).json()["data"]
    states = [event["data"]["status"] for event in events if event["kind"] == "state"]
    assert states == ["queued", "running", "succeeded"]
    assert [event["data"]["epoch"] for event in events if event["kind"] == "epoch"] == [1, 2]

    second_data = upload(client, trainer, notes_csv(40, seed=12), "second.csv").json()
    # No method: a second fine-tune inherits its parent's.
    second = finetune(
        client,
        trainer,
        {"train_dataset_id": second_data["id"], "parent_model_id": parent_id, "hyperparameters": SMALL_JOB},
    )
    assert second["method"] == method and second["stage"] == 2
    second_done = wait_for_job(client, trainer, second["id"])
    assert second_done["status"] == "succeeded", second_done["error"]
    child_id = second_done["model_id"]

    model = client.get(f"/models/{child_id}", headers=bearer(predictor))
    assert model.status_code == 200
    model = model.json()
    assert (model["method"], model["stage"], model["parent_id"]) == (method, 2, parent_id)
    assert model["base_model"] == tiny_bert
    assert model["data_summary"]["rows"] > 0 and "path" not in model["data_summary"]
    assert [entry["id"] for entry in model["lineage"]] == [child_id, parent_id, None]
    assert model["lineage"][-1] == {
        "kind": "base_model",
        "id": None,
        "method": None,
        "stage": None,
        "name": tiny_bert,
        "deleted_at": None,
        "train_dataset": None,
    }
    assert model["hyperparameters"]["epochs"] == 1 and model["hyperparameters"]["method"] == method
    assert model["train_dataset_id"] == second_data["id"]
    assert 0 < model["threshold"] < 1

    texts = ["Patient 1, stage IV, liver metastases.", "Patient 2, stage I, node negative."]
    response = client.post(
        "/predict",
        json={"model_id": child_id, "texts": texts, "compare_with": ["base", parent_id]},
        headers=bearer(predictor),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == child_id and len(body["predictions"]) == 2
    for prediction in body["predictions"]:
        assert 0.0 <= prediction["probability"] <= 1.0
        assert prediction["label"] == int(prediction["probability"] >= prediction["threshold"])
        assert set(prediction["compared"]) == {"base", parent_id}
        assert prediction["compared"]["base"]["threshold"] == 0.5

    listed = client.get("/models", headers=bearer(predictor)).json()
    assert {child_id, parent_id} <= {item["id"] for item in listed["data"]}
