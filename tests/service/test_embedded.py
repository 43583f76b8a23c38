"""`notetune serve` with no DATABASE_URL or broker: SQLite + Kombu's SQLAlchemy transport, real worker."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import httpx

from tests.service.helpers import REPO_ROOT, SMALL_JOB, notes_csv, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Output:
    """Collects a subprocess's output lines from a thread (so the pipe never fills up)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self.lines.append(line)

    def admin_key(self) -> str | None:
        keys = [line.strip() for line in self.lines if line.strip().startswith("ntk_")]
        return keys[0] if keys else None


def test_embedded_default_runs_a_job_without_postgres_or_redis(tmp_path, tiny_bert):
    server, output, base = _start_serve(_embedded_env(tmp_path, tiny_bert))
    try:
        key = wait_until(output.admin_key, timeout=60, message="serve printed no admin key")
        assert any(f"{base}/docs" in line for line in output.lines)
        wait_until(lambda: _healthy(base), timeout=90, message="".join(output.lines[-30:]))
        database = tmp_path / "data" / "notetune.sqlite3"
        assert database.is_file() and (tmp_path / "data" / "broker.sqlite3").is_file()
        with sqlite3.connect(database) as connection:
            worker_pid = connection.execute("SELECT pid FROM worker_heartbeats").fetchone()[0]

        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            dataset = http.post(
                "/datasets", files={"file": ("train.csv", notes_csv(40, seed=301), "text/csv")}
            )
            assert dataset.status_code == 201, dataset.text
            body = {"train_dataset_id": dataset.json()["id"], "method": "lora", "hyperparameters": SMALL_JOB}
            job = http.post("/jobs/finetune", json=body)
            assert job.status_code == 202, job.text
            final = wait_until(
                lambda: _finished(http, job.json()["id"]), timeout=180, message="".join(output.lines[-30:])
            )
            assert final["status"] == "succeeded", final["error"]
            predicted = http.post(
                "/predict", json={"model_id": final["model_id"], "texts": ["stage IV disease"]}
            )
            assert predicted.status_code == 200
            assert http.get("/version").json()["embedded"] is True
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C stops the API and the worker
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, "".join(output.lines[-30:])
    wait_until(lambda: not _alive(worker_pid), timeout=30, message="the worker outlived serve")


def test_sigterm_stops_serve_with_its_worker_and_the_running_job_is_not_lost(tmp_path, tiny_bert):
    """`kill -TERM` of `notetune serve` (systemctl stop, docker stop) with a job running: serve exits,
    its worker and the worker's pool go too, and once serve runs again the job ends, never stuck."""
    env = _embedded_env(tmp_path, tiny_bert)
    server, output, base = _start_serve(env)
    try:
        key = wait_until(output.admin_key, timeout=60, message="serve printed no admin key")
        wait_until(lambda: _healthy(base), timeout=90, message="".join(output.lines[-30:]))
        with sqlite3.connect(tmp_path / "data" / "notetune.sqlite3") as connection:
            worker_pid = connection.execute("SELECT pid FROM worker_heartbeats").fetchone()[0]
        worker_group = os.getpgid(worker_pid)
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        dataset = http.post("/datasets", files={"file": ("train.csv", notes_csv(200, seed=302), "text/csv")})
        body = {
            "train_dataset_id": dataset.json()["id"],
            "method": "lora",
            "hyperparameters": {**SMALL_JOB, "epochs": 12, "patience": 12},
        }
        job_id = http.post("/jobs/finetune", json=body).json()["id"]
        wait_until(
            lambda: (http.get(f"/jobs/{job_id}").json().get("progress") or {}).get("step"),
            timeout=120,
            message="the job never started training",
        )
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=90)
    finally:
        if server.poll() is None:
            server.kill()
    wait_until(lambda: not _group_alive(worker_group), timeout=60, message="the worker outlived serve")

    again, output, base = _start_serve(env)
    try:
        wait_until(lambda: _healthy(base), timeout=90, message="".join(output.lines[-30:]))
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            final = wait_until(lambda: _finished(http, job_id), timeout=240, message="the job was stuck")
        assert final["status"] == "succeeded", final["error"]
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=90)


def _embedded_env(tmp_path, tiny_bert) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DATABASE_URL", "CELERY_BROKER_URL") and not name.startswith("NOTETUNE_")
    }
    env.update(
        NOTETUNE_DATA_DIR=str(tmp_path / "data"),
        NOTETUNE_BASE_MODEL=tiny_bert,
        NOTETUNE_HEARTBEAT_INTERVAL_S="0.5",
        NOTETUNE_STALE_AFTER_S="4",
        NOTETUNE_REAPER_INTERVAL_S="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def _start_serve(env: dict[str, str]) -> tuple[subprocess.Popen, Output, str]:
    port = free_port()
    command = [sys.executable, "-m", "cli.main", "serve", "--port", str(port)]
    server = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return server, Output(server.stdout), f"http://127.0.0.1:{port}"


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _finished(http: httpx.Client, job_id: str) -> dict | None:
    job = http.get(f"/jobs/{job_id}").json()
    if job["status"] in ("succeeded", "failed", "cancelled"):
        return job
    time.sleep(0.3)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
