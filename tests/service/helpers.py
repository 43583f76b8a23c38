"""Helpers for the service tests: small labelled CSVs, polling, and a real worker process."""

from __future__ import annotations

import csv
import io
import os
import random
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
FINISHED = ("succeeded", "failed", "cancelled")
CLEAN = {"jobs_stuck": 0, "rows_lost": 0, "files_without_rows": 0, "rows_without_files": 0}
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
    # Files sit in a folder per organisation (older ones directly under datasets/).
    files = {path.name for path in settings.datasets_root.rglob("*") if path.is_file()}
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

    def __init__(self, env: dict[str, str], log_path: Path, *, max_file_bytes: int | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.max_file_bytes = max_file_bytes  # RLIMIT_FSIZE: no file it writes may grow past this
        self.process: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        from cli.service import worker_argv

        return worker_argv()

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it until it exits)
        self.process = subprocess.Popen(
            self.argv(),
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self._limit_file_size if self.max_file_bytes else None,
        )
        log.close()
        return self

    def _limit_file_size(self) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_file_bytes, self.max_file_bytes))

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


class ApiProcess(WorkerProcess):
    """The API under uvicorn in a subprocess of its own, on a free port of 127.0.0.1."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        import sys

        return [
            sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> ApiProcess:
        import httpx

        def answering() -> bool:  # /healthz may say 503 (no worker here): the API is up all the same
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code in (200, 503)
            except httpx.HTTPError:
                return False

        wait_until(answering, timeout=timeout, message="the API subprocess did not start")
        return self


def default_organisation_id(database) -> str:
    from core.services.auth import default_organisation

    with database.transaction() as session:
        return default_organisation(session).id


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def integrity(database, settings, job_ids: list[str]) -> dict[str, int]:
    """What a fault may leave behind, for the given jobs: jobs not finished, rows gone, files no row
    names (including half-written ones), and rows whose files are missing. All four should be 0."""
    from sqlalchemy import select

    from core.db.models import Dataset, Evaluation, Job, JobStatus, Model

    counts = dict.fromkeys(("jobs_stuck", "rows_lost", "files_without_rows", "rows_without_files"), 0)
    with database.session() as session:
        jobs = [session.get(Job, job_id) for job_id in job_ids]
        counts["rows_lost"] += sum(job is None for job in jobs)
        dataset_paths = set(session.scalars(select(Dataset.path)).all())
        for job in filter(None, jobs):
            counts["jobs_stuck"] += job.status in (JobStatus.queued, JobStatus.running)
            dataset = session.get(Dataset, job.train_dataset_id or job.test_dataset_id)
            if dataset is None:
                counts["rows_lost"] += 1
            elif not stored_file(settings, dataset.path).is_file():
                counts["rows_without_files"] += 1
            model = session.get(Model, job.output_model_id) if job.output_model_id else None
            if job.status == JobStatus.succeeded and job.output_model_id:
                has_files = (
                    model is not None and (stored_model(settings, model.path) / "manifest.json").is_file()
                )
                counts["rows_lost"] += model is None
                counts["rows_without_files"] += model is not None and not has_files
            if job.output_model_id:
                counts["files_without_rows"] += _model_files_without_row(settings, job, model)
            evaluation = session.query(Evaluation).filter(Evaluation.job_id == job.id).one_or_none()
            if evaluation is not None and not stored_file(settings, evaluation.arrays_path).is_file():
                counts["rows_without_files"] += 1
    counts["files_without_rows"] += _dataset_files_without_rows(settings, dataset_paths)
    return counts


def stored_file(settings, key: str) -> Path:
    """Where the embedded (local) store keeps a data file: tests that look inside the layout."""
    return settings.data_dir.resolve() / key


def stored_model(settings, key: str) -> Path:
    """Where the embedded (local) store keeps a model's directory."""
    return settings.models_root / key


def attempt_dirs(store, model_id: str) -> list[Path]:
    """One model's attempt directories (and partial writes) on this host."""
    return [path for path, owner, _ in store.local_attempts() if owner == model_id]


def _model_files_without_row(settings, job, model) -> int:
    from models_store.local import LocalStore

    store = LocalStore(settings.data_dir, settings.models_root)
    leftovers = len(attempt_dirs(store, job.output_model_id))
    leftovers += len(list(store.root.glob(f".tmp-{job.output_model_id}*")))
    leftovers += model is None and store.path_for(job.output_model_id).exists()
    return leftovers


def _dataset_files_without_rows(settings, dataset_paths: set[str]) -> int:
    root = settings.datasets_root
    if not root.is_dir():
        return 0
    named = {stored_file(settings, path) for path in dataset_paths}
    return sum(1 for path in root.rglob("*") if path.is_file() and path not in named)


def registered_dataset(database, settings, organisation_id: str, *, seed: int, name: str) -> str:
    """A dataset of 40 made-up notes, stored through the service (no HTTP), in the organisation."""
    from core.services.datasets import register_dataset

    with database.transaction() as session:
        dataset, _ = register_dataset(
            session, settings, notes_csv(40, seed=seed), name, organisation_id=organisation_id
        )
        return dataset.id


def model_row_without_training(
    database, organisation_id: str, dataset_id: str, *, base_model: str = "unused"
) -> tuple[str, str]:
    """(job id, model id): a succeeded fine-tune's rows written directly, with no files in the store,
    as a lost volume or a crashed clean-up would leave them."""
    from core.db.base import new_id, utcnow
    from core.db.models import Job, JobKind, JobStatus, Model

    job = Job(
        id=new_id(),
        organisation_id=organisation_id,
        kind=JobKind.finetune,
        status=JobStatus.succeeded,
        method="lora",
        stage=1,
        base_model=base_model,
        train_dataset_id=dataset_id,
        hyperparameters={},
        output_model_id=new_id(),
        created_at=utcnow(),
    )
    with database.transaction() as session:
        session.add(job)
        session.flush()
        session.add(
            Model(
                id=job.output_model_id,
                organisation_id=organisation_id,
                job_id=job.id,
                method="lora",
                stage=1,
                base_model=base_model,
                path=job.output_model_id,
                train_dataset_id=dataset_id,
                hyperparameters={},
                data_summary={},
                metrics={},
                threshold=0.5,
                manifest={},
                created_at=utcnow(),
            )
        )
        return job.id, job.output_model_id
