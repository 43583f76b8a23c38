"""Cancel queued and running jobs; kill -9 the worker mid-job and see the job finish, never stuck."""

from __future__ import annotations

from tests.service.helpers import (
    CLEAN,
    SMALL_JOB,
    bearer,
    integrity,
    notes_csv,
    upload,
    wait_for_job,
    wait_until,
)

# Long enough (tens of seconds on a laptop CPU) to act on it while it trains; patience keeps early
# stopping from ending it first.
LONG_JOB = {**SMALL_JOB, "epochs": 40, "patience": 100}


def start(client, key, dataset_id: str, method: str, hyperparameters: dict) -> dict:
    body = {"train_dataset_id": dataset_id, "method": method, "hyperparameters": hyperparameters}
    response = client.post("/jobs/finetune", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    return response.json()


def training_underway(client, key, job_id: str):
    job = client.get(f"/jobs/{job_id}", headers=bearer(key)).json()
    progress = job["progress"] or {}
    return job if job["status"] == "running" and (progress.get("step") or 0) > 0 else None


def output_model_id(database, job_id: str) -> str:
    from core.db.models import Job

    with database.session() as session:
        return session.get(Job, job_id).output_model_id


def test_cancel_a_queued_and_a_running_job(client, keys, worker, worker_log, settings, database):
    trainer = keys["trainer"]
    dataset = upload(client, trainer, notes_csv(120, seed=201)).json()["id"]
    running = start(client, trainer, dataset, "lora", LONG_JOB)
    # One worker, one job at a time: this one waits in the queue behind the running one.
    queued = start(client, trainer, dataset, "full", SMALL_JOB)
    wait_until(
        lambda: training_underway(client, trainer, running["id"]), timeout=120, message="never started"
    )

    response = client.post(f"/jobs/{queued['id']}/cancel", headers=bearer(trainer))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"

    response = client.post(f"/jobs/{running['id']}/cancel", headers=bearer(trainer))
    assert response.status_code == 200, response.text
    assert response.json()["cancel_requested"] is True
    stopped = wait_for_job(client, trainer, running["id"], timeout=120)
    assert stopped["status"] == "cancelled" and stopped["model_id"] is None
    assert stopped["progress"]["epoch"] < LONG_JOB["epochs"]
    leftover = output_model_id(database, running["id"])
    assert not (settings.models_root / leftover).exists()
    assert not list(settings.models_root.glob(f".tmp-{leftover}*"))
    assert client.get(f"/models/{leftover}", headers=bearer(trainer)).status_code == 404

    # The queued job's message is delivered once the worker is free, and the claim refuses it.
    wait_until(
        lambda: f"message for job {queued['id']}" in worker_log.read_text(errors="replace"),
        timeout=60,
        message="the cancelled job's message was never consumed",
    )
    never_ran = client.get(f"/jobs/{queued['id']}", headers=bearer(trainer)).json()
    assert never_ran["status"] == "cancelled"
    assert never_ran["attempt"] == 0 and never_ran["started_at"] is None

    again = client.post(f"/jobs/{queued['id']}/cancel", headers=bearer(trainer))
    assert again.status_code == 409


def test_killed_worker_job_succeeds_on_attempt_2(client, keys, workers, settings, database):
    trainer = keys["trainer"]
    victim = workers.ensure_running()
    dataset = upload(client, trainer, notes_csv(80, seed=202)).json()["id"]
    job = start(client, trainer, dataset, "lora", {**SMALL_JOB, "epochs": 15, "patience": 100})
    wait_until(lambda: training_underway(client, trainer, job["id"]), timeout=120, message="never started")

    victim.kill()
    workers.ensure_running()  # a fresh worker: its monitor finds the stale heartbeat and re-queues

    final = wait_for_job(client, trainer, job["id"], timeout=240)
    assert final["status"] == "succeeded", final["error"]
    assert final["attempt"] == 2
    assert (settings.models_root / final["model_id"] / "manifest.json").is_file()
    events = client.get(f"/jobs/{job['id']}/events", headers=bearer(trainer)).json()["data"]
    assert any(event["kind"] == "requeued" and event["attempt"] == 1 for event in events)
    # The killed attempt's half-written directory goes at the worker's next sweep.
    wait_until(
        lambda: integrity(database, settings, [job["id"]]) == CLEAN,
        timeout=20,
        message="the killed attempt left files or rows behind",
    )
