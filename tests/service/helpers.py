"""Helpers for the service tests: small labelled CSVs, polling, and a real worker process."""

from __future__ import annotations

import csv
import io
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
FINISHED = ("succeeded", "failed", "cancelled")
SMALL_JOB = {"epochs": 1, "max_length": 64, "warmup_steps": 0, "batch_size": 8, "min_rows": 10}

_SURVIVED = ["stage I", "node negative", "ER positive", "complete response", "ECOG 0", "lumpectomy"]
_DIED = [
    "stage IV",
    "liver metastases",
    "triple negative",
    "progressive disease",
    "ECOG 3",
    "palliative care",
]


def notes_csv(n: int = 40, *, seed: int = 0, positives: float = 0.35, canary: str | None = None) -> bytes:
    """A Text,label CSV of short made-up notes; `canary` is planted in every note when given."""
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        label = 1 if index < max(2, round(n * positives)) else 0
        words = rng.sample(_DIED if label else _SURVIVED, 3) + rng.sample(_SURVIVED + _DIED, 2)
        text = f"Patient {seed}-{index}, aged {rng.randint(30, 90)}: " + ", ".join(words) + "."
        if canary:
            text = f"{text} {canary}"
        rows.append((text, label))
    rng.shuffle(rows)
    return rows_csv(rows)


def rows_csv(rows: list[tuple[Any, ...]], header: tuple[str, ...] = ("Text", "label")) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(client, key: str, content: bytes, name: str = "notes.csv"):
    return client.post("/datasets", files={"file": (name, content, "text/csv")}, headers=bearer(key))


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


def stored_datasets(client, key, settings) -> tuple[int, set[str]]:
    count = client.get("/datasets", headers=bearer(key)).json()["count"]
    files = (
        {path.name for path in settings.datasets_root.glob("*")} if settings.datasets_root.exists() else set()
    )
    return count, files


def wait_for_job(client, key: str, job_id: str, *, until=FINISHED, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}", headers=bearer(key)).json()
        if job["status"] in until:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
        time.sleep(0.2)


def wait_until(condition, *, timeout: float, message: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(interval)


class WorkerProcess:
    """A real `celery worker` subprocess in its own process group (so kill -9 takes its pool too)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        from cli.service import worker_argv

        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it until it exits)
        self.process = subprocess.Popen(
            worker_argv(),
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool child, no chance to clean up."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if not self.alive():
            return
        os.killpg(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
