"""Faults injected into the real services: the API killed mid-upload, the database connections cut
mid-job, the broker's queue emptied, the model store full. After each: no job stuck, no row lost, no
file without its row, no row without its file (helpers.integrity).

The PostgreSQL and Redis servers are shared with other test sessions on the machine, so they are not
restarted: the job's database connections are terminated (pg_terminate_backend, this test database
only), and this session's own Redis database is flushed (FLUSHDB), which is what a restarted Redis
without persistence looks like to the service.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
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


WORKER_APP_NAME = "notetune-fault-worker"  # the worker's libpq application_name (PGAPPNAME)


def terminate_worker_connections(database_name: str) -> int:
    """Cut the worker's own connections to the test database (never this process's)."""
    with _admin_connection() as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = %s AND pid <> pg_backend_pid()",
            (database_name, WORKER_APP_NAME),
        ).fetchall()
    return len(rows)


def job_state(database, job_id: str) -> tuple[str, int, dict]:
    from core.db.models import Job

    with database.session() as session:
        job = session.get(Job, job_id, populate_existing=True)
        return job.status.value, job.attempt, job.progress or {}


def wait_until_training(database, job_id: str) -> None:
    def training() -> bool:
        status, _, progress = job_state(database, job_id)
        return status == "running" and bool(progress.get("step"))

    wait_until(training, timeout=120, message="the job never started training")


def test_database_connections_cut_while_a_job_trains_do_not_stop_it(
    client, keys, own_worker, database, settings, postgres_url
):
    """The worker's connections are terminated three times while its job provably trains: the run
    reconnects and the job succeeds on its first attempt (not reaped, not failed)."""
    trainer = keys["trainer"]
    dataset = upload(client, trainer, notes_csv(120, seed=601)).json()["id"]
    own_worker("worker-db-cut.log", {"PGAPPNAME": WORKER_APP_NAME})
    job = start_job(client, trainer, dataset, epochs=14, patience=100)
    wait_until_training(database, job["id"])
    name = postgres_url.rsplit("/", 1)[1]
    cut = 0
    for _ in range(3):
        assert job_state(database, job["id"])[0] == "running", "the cut must hit a running job"
        cut += terminate_worker_connections(name)
        time.sleep(0.4)
    assert cut > 0, "the worker had no connection to cut"
    final = wait_for_job(client, trainer, job["id"], timeout=180)
    assert final["status"] == "succeeded", final["error"]
    assert final["attempt"] == 1
    assert integrity(database, settings, [job["id"]]) == CLEAN


def test_an_emptied_broker_while_a_job_trains_loses_neither_it_nor_the_queued_one(
    client, keys, own_worker, redis_url, database, settings
):
    """The broker loses every message (a Redis restart without persistence) while one job provably
    trains and another waits: the running one finishes on its first attempt, and the waiting one's
    message is sent again from the database and it runs."""
    trainer = keys["trainer"]
    dataset = upload(client, trainer, notes_csv(60, seed=602)).json()["id"]
    own_worker("worker-resend.log", {"NOTETUNE_RESEND_QUEUED_AFTER_S": "2"})
    running = start_job(client, trainer, dataset, epochs=4, patience=100, seed=1)
    wait_until_training(database, running["id"])
    waiting = start_job(client, trainer, dataset, seed=2)
    flushed = redis.Redis.from_url(redis_url)
    try:
        assert job_state(database, running["id"])[0] == "running"
        assert job_state(database, waiting["id"])[0] == "queued"
        assert flushed.dbsize() > 0, "the messages were not in the broker"
        flushed.flushdb()
    finally:
        flushed.close()
    for job in (running, waiting):
        final = wait_for_job(client, trainer, job["id"], timeout=180)
        assert final["status"] == "succeeded", final["error"]
        assert final["attempt"] == 1
    assert integrity(database, settings, [running["id"], waiting["id"]]) == CLEAN


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


@contextlib.contextmanager
def small_filesystem_over(directory, size: str):
    """A tmpfs of `size` mounted over `directory` (as root); skips where mounting is not allowed."""
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {result.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def test_a_disk_that_fills_while_a_job_trains_fails_it_cleanly(client, keys, worker, database, settings):
    """The model store's disk fills (a 3 MB filesystem mounted over it) while a full fine-tune
    provably trains: saving its 4 MB weights fails with ENOSPC, the job fails saying so, nothing of it
    is left on the full disk and nothing is served. (The worker is the session's, limits untouched.)"""
    trainer = keys["trainer"]
    dataset = upload(client, trainer, notes_csv(120, seed=604)).json()["id"]
    job = start_job(client, trainer, dataset, method="full", head_init="random", epochs=6, patience=100)
    wait_until_training(database, job["id"])
    with small_filesystem_over(settings.models_root, "3m") as full_disk:
        assert job_state(database, job["id"])[0] == "running", "the disk must fill under a running job"
        final = wait_for_job(client, trainer, job["id"], timeout=180)
        # Empty folders of the store's layout may stay; no byte of the job's model may.
        left_on_full_disk = sorted(
            str(path.relative_to(full_disk)) for path in full_disk.rglob("*") if path.is_file()
        )
    assert final["status"] == "failed", final
    assert "disk space" in final["error"], final["error"]
    assert final["attempt"] == 1 and final["model_id"] is None
    assert left_on_full_disk == [], left_on_full_disk
    assert integrity(database, settings, [job["id"]]) == CLEAN
