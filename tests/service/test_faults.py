"""Faults injected into the real services: the API killed mid-upload, the database connections cut
mid-job, the broker's queue emptied, the model store full. After each: no job stuck, no row lost, no
file without its row, no row without its file (helpers.integrity).

The PostgreSQL and Redis servers are shared with other test sessions on the machine, so they are not
restarted: the job's database connections are terminated (pg_terminate_backend, this test database
only), and this session's own Redis database is flushed (FLUSHDB), which is what a restarted Redis
without persistence looks like to the service.
"""

from __future__ import annotations

import socket
import time

import pytest
import redis

from tests.service.helpers import (
    CLEAN,
    SMALL_JOB,
    ApiProcess,
    WorkerProcess,
    bearer,
    integrity,
    notes_csv,
    upload,
    wait_for_job,
    wait_until,
)
from tests.service_fixtures import _admin_connection


def start_job(client, key, dataset_id: str, method: str = "lora", **hyperparameters) -> dict:
    body = {
        "train_dataset_id": dataset_id,
        "method": method,
        "hyperparameters": {**SMALL_JOB, **hyperparameters},
    }
    response = client.post("/jobs/finetune", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    return response.json()


@pytest.fixture
def own_worker(workers, service_env, logs_dir):
    """Swap the session's worker for one started by the test (other settings or limits); the session's
    worker comes back for the next test that needs it."""
    workers.stop()
    started: list[WorkerProcess] = []

    def start(log_name: str, env: dict[str, str] | None = None, **options) -> WorkerProcess:
        worker = WorkerProcess({**service_env, **(env or {})}, logs_dir / log_name, **options).start()
        started.append(worker)
        wait_until(lambda: workers._ready(worker.pid), timeout=90, message="the worker did not start")
        return worker

    yield start
    for worker in started:
        worker.stop()


def test_api_killed_mid_upload_leaves_no_dataset(service_env, keys, tmp_path, logs_dir):
    """kill -9 of the API while a large upload streams in: after a restart, no row and no file."""
    data_dir, spool = tmp_path / "api-data", tmp_path / "spool"
    spool.mkdir()
    env = {**service_env, "NOTETUNE_DATA_DIR": str(data_dir), "TMPDIR": str(spool)}
    api = ApiProcess(env, logs_dir / "api-subprocess.log").start().wait_ready()
    body_size = 30 * 1024 * 1024
    boundary = "notetuneboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="half.csv"\r\n'
        "Content-Type: text/csv\r\n\r\nText,label\r\n"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as connection:
            connection.sendall(
                (
                    "POST /datasets HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {keys['trainer']}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                    f"Content-Length: {body_size}\r\n\r\n"
                ).encode()
                + head
            )
            row = b"Patient with stage II disease and a long history of nothing in particular,0\r\n"
            for _ in range((8 * 1024 * 1024) // len(row)):
                connection.sendall(row)
            api.kill()
    finally:
        api.kill()
    api = ApiProcess(env, logs_dir / "api-subprocess.log").start().wait_ready()
    try:
        import httpx

        listed = httpx.get(f"{api.url}/datasets", headers=bearer(keys["trainer"]), timeout=10).json()
        assert "half.csv" not in [item["name"] for item in listed["data"]]
    finally:
        api.stop()
    datasets_dir = data_dir / "datasets"
    assert not datasets_dir.exists() or not list(datasets_dir.iterdir())
    assert not list(spool.iterdir()), "the spooled upload outlived the process"


def terminate_connections(database_name: str) -> int:
    with _admin_connection() as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database_name,),
        ).fetchall()
    return len(rows)


def test_database_connections_cut_mid_job(client, keys, worker, database, settings, postgres_url):
    """Every connection to the test database is terminated, three times, while a job trains: the job
    still ends (succeeded, or failed with a reason), never stuck."""
    trainer = keys["trainer"]
    dataset = upload(client, trainer, notes_csv(80, seed=601)).json()["id"]
    job = start_job(client, trainer, dataset, epochs=6, patience=100)
    wait_until(
        lambda: (client.get(f"/jobs/{job['id']}", headers=bearer(trainer)).json()["progress"] or {}).get(
            "step"
        ),
        timeout=120,
        message="the job never started training",
    )
    name = postgres_url.rsplit("/", 1)[1]
    terminated = 0
    for _ in range(3):
        terminated += terminate_connections(name)
        time.sleep(0.7)
    assert terminated > 0
    final = wait_for_job(client, trainer, job["id"], timeout=180)
    assert final["status"] == "succeeded" or (final["status"] == "failed" and final["error"]), final
    assert integrity(database, settings, [job["id"]]) == CLEAN


def test_queued_jobs_survive_an_emptied_broker(client, keys, own_worker, redis_url, database, settings):
    """The broker loses every message while jobs wait (a Redis restart without persistence): the
    workers send them again from the database, and they run."""
    trainer = keys["trainer"]
    dataset = upload(client, trainer, notes_csv(40, seed=602)).json()["id"]
    jobs = [start_job(client, trainer, dataset, seed=seed) for seed in (1, 2)]
    flushed = redis.Redis.from_url(redis_url)
    try:
        assert flushed.dbsize() > 0, "the messages were not in the broker"
        flushed.flushdb()
    finally:
        flushed.close()
    own_worker("worker-resend.log", {"NOTETUNE_RESEND_QUEUED_AFTER_S": "2"})
    for job in jobs:
        final = wait_for_job(client, trainer, job["id"], timeout=120)
        assert final["status"] == "succeeded", final["error"]
    assert integrity(database, settings, [job["id"] for job in jobs]) == CLEAN


def test_a_full_model_store_fails_the_job_and_serves_nothing(client, keys, own_worker, database, settings):
    """No file the worker writes may pass 2 MB (RLIMIT_FSIZE, as a full disk would stop it): a full
    fine-tune's 4 MB weights cannot be saved. The job fails saying so; nothing half-written remains."""
    trainer = keys["trainer"]
    dataset = upload(client, trainer, notes_csv(40, seed=603)).json()["id"]
    own_worker("worker-small-disk.log", max_file_bytes=2 * 1024 * 1024)
    job = start_job(client, trainer, dataset, method="full", head_init="random")
    final = wait_for_job(client, trainer, job["id"], timeout=120)
    assert final["status"] == "failed", final
    assert "disk space" in final["error"], final["error"]
    assert final["model_id"] is None
    assert integrity(database, settings, [job["id"]]) == CLEAN
    from core.db.models import Job

    with database.session() as session:
        model_id = session.get(Job, job["id"]).output_model_id
    assert client.get(f"/models/{model_id}", headers=bearer(trainer)).status_code == 404
