"""Submitting a job when the queue cannot take its message: a 503, and the job is failed, not left
waiting for a message that was never sent."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.service.helpers import bearer, error_of, notes_csv, upload


def test_a_job_whose_message_cannot_be_sent_is_failed(settings, database, keys):
    from api.main import create_app

    def unreachable(_job) -> None:
        raise ConnectionError("broker down")

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.app.state.runtime.queue.enqueue = unreachable
        trainer = bearer(keys["trainer"])
        dataset = upload(client, keys["trainer"], notes_csv(40, seed=801)).json()
        body = {"train_dataset_id": dataset["id"], "method": "lora", "name": "unsent"}
        response = client.post("/jobs/finetune", json=body, headers=trainer)
        assert response.status_code == 503, response.text
        assert error_of(response)["code"] == "queue_unavailable"

        failed = client.get("/jobs?status=failed&kind=finetune", headers=trainer).json()["data"]
        [job] = [job for job in failed if job["name"] == "unsent"]
        assert "queue was unreachable" in job["error"]
        events = client.get(f"/jobs/{job['id']}/events", headers=trainer).json()["data"]
        assert [event["data"]["status"] for event in events] == ["queued", "failed"]
