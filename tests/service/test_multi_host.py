"""Several hosts on one store: an API replica and workers that share no path, only PostgreSQL, Redis
and an S3-compatible bucket (a real SeaweedFS server).

One deployment per module, apart from the rest of the suite: a database, a queue and a bucket of its
own. Each "host" is a process with its own NOTETUNE_DATA_DIR. The journey: a first fine-tune on
worker A, the second (from the first) on worker B, an evaluation, /predict from API processes that
never trained anything, a deletion seen by both; then the faults: the store down at /predict, a
damaged object, the store slow (a relay that stalls), the store stopped in the middle of a model's
upload.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import synthetic_csv
from tests.s3_server import S3Server, StallingProxy
from tests.service.helpers import REPO_ROOT, SMALL_JOB, ApiProcess, WorkerProcess, wait_until
from tests.service_fixtures import POSTGRES_ADMIN_DSN

pytestmark = pytest.mark.timeout(900)

NOTES = ["Stage IV disease with liver metastases, ECOG 3.", "Stage I, node negative, lumpectomy, ECOG 0."]
PREFIX = "deployment"


class Worker(WorkerProcess):
    """`notetune worker` on a host of its own (its queue and store come from its environment)."""

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "cli.main", "worker"]


class Api(ApiProcess):
    """`notetune serve --no-worker` on a host of its own."""

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "cli.main", "serve", "--no-worker", "--port", str(self.port)]


@pytest.fixture(scope="module")
def deployment(s3_server, redis_url, tiny_bert, tmp_path_factory):
    """The environment every host shares: its own database (migrated), queue and bucket."""
    database = f"notetune_mh_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    bucket = f"notetune-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("NOTETUNE_")},
        **s3_server.credentials,
        "DATABASE_URL": f"{base}/{database}",
        "CELERY_BROKER_URL": redis_url,
        "NOTETUNE_QUEUE_NAME": f"notetune-mh-{uuid.uuid4().hex[:8]}",
        "NOTETUNE_BASE_MODEL": tiny_bert,
        "NOTETUNE_STORE_URL": f"s3://{bucket}/{PREFIX}",
        "NOTETUNE_S3_ENDPOINT_URL": s3_server.endpoint,
        "NOTETUNE_STORE_TIMEOUT_S": "2",
        "NOTETUNE_STORE_MAX_ATTEMPTS": "2",
        "NOTETUNE_HEARTBEAT_INTERVAL_S": "0.5",
        "NOTETUNE_STALE_AFTER_S": "30",
        "NOTETUNE_SWEEP_INTERVAL_S": "2",
        "NOTETUNE_HEALTH_INTERVAL_S": "0.5",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    root = tmp_path_factory.mktemp("hosts")
    run_cli(env, root / "setup", "migrate")
    key = run_cli(env, root / "setup", "keys", "create", "--role", "admin").strip().splitlines()[-1]
    yield Deployment(env, root, key, bucket, s3_server)
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def run_cli(env: dict[str, str], data_dir: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO_ROOT,
        env={**env, "NOTETUNE_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Deployment:
    def __init__(self, env: dict[str, str], root: Path, key: str, bucket: str, s3: S3Server) -> None:
        self.env, self.root, self.key, self.bucket, self.s3 = env, root, key, bucket, s3
        self.processes: list[WorkerProcess] = []

    def host_dir(self, name: str) -> Path:
        return self.root / name

    def _host_env(self, name: str) -> dict[str, str]:
        return {**self.env, "NOTETUNE_DATA_DIR": str(self.host_dir(name))}

    def worker(self, name: str, endpoint: str | None = None) -> Worker:
        env = self._host_env(name)
        if endpoint is not None:
            env["NOTETUNE_S3_ENDPOINT_URL"] = endpoint
        worker = Worker(env, self.root / f"{name}.log").start()
        self.processes.append(worker)
        return worker

    def api(self, name: str, endpoint: str | None = None) -> Api:
        env = self._host_env(name)
        if endpoint is not None:  # this host reaches the store through another address
            env["NOTETUNE_S3_ENDPOINT_URL"] = endpoint
        api = Api(env, self.root / f"{name}.log").start().wait_ready()
        self.processes.append(api)
        return api

    def objects(self, prefix: str) -> list[str]:
        listing = self.s3.client().list_objects_v2(Bucket=self.bucket, Prefix=f"{PREFIX}/{prefix}")
        return [item["Key"] for item in listing.get("Contents", [])]

    def stop_workers(self) -> None:
        for process in self.processes:
            if isinstance(process, Worker):
                process.stop()

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture(scope="module")
def hosts(deployment):
    yield deployment
    deployment.stop_all()


def call(api: Api, key: str, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.request(method, f"{api.url}{path}", headers=headers, timeout=60, **kwargs)


def upload(api: Api, key: str, content: bytes) -> str:
    response = call(api, key, "POST", "/datasets", files={"file": ("notes.csv", content, "text/csv")})
    assert response.status_code in (200, 201), response.text
    return response.json()["id"]


def finished(api: Api, key: str, job_id: str, timeout: float = 240.0) -> dict:
    def done():
        job = call(api, key, "GET", f"/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(done, timeout=timeout, message=f"job {job_id} did not finish")


def finetune(api: Api, key: str, dataset_id: str, parent: str | None = None, **extra) -> dict:
    body = {"method": "lora", "train_dataset_id": dataset_id, "hyperparameters": {**SMALL_JOB, **extra}}
    if parent:
        body["parent_model_id"] = parent
    response = call(api, key, "POST", "/jobs/finetune", json=body)
    assert response.status_code in (200, 201, 202), response.text
    return response.json()


def job_column(deployment: Deployment, job_id: str, column: str):
    with psycopg.connect(deployment.env["DATABASE_URL"].replace("+psycopg", "")) as connection:
        (value,) = connection.execute(f"SELECT {column} FROM jobs WHERE id = %s", (job_id,)).fetchone()
    return value


def job_worker_pid(deployment: Deployment, job_id: str) -> int:
    """The pid of the worker process that ran the job (the job row's `worker` is host:pid)."""
    return int(job_column(deployment, job_id, "worker").rsplit(":", 1)[1])


def output_model_id(deployment: Deployment, job_id: str) -> str:
    return job_column(deployment, job_id, "output_model_id")


def predictions(api: Api, key: str, model_id: str) -> httpx.Response:
    return call(api, key, "POST", "/predict", json={"model_id": model_id, "texts": NOTES})


def test_models_trained_on_two_workers_are_served_by_apis_that_never_trained(hosts):
    key = hosts.key
    api_c = hosts.api("api-c")

    worker_a = hosts.worker("worker-a")
    first_data = upload(api_c, key, synthetic_csv(60, "narrative", seed=11))
    first_job = finished(api_c, key, finetune(api_c, key, first_data)["id"])
    assert first_job["status"] == "succeeded", first_job
    first_model = first_job["model_id"]
    assert job_worker_pid(hosts, first_job["id"]) in child_pids(worker_a)
    worker_a.stop()

    worker_b = hosts.worker("worker-b")
    second_data = upload(api_c, key, synthetic_csv(48, "terse", seed=12))
    second_job = finished(api_c, key, finetune(api_c, key, second_data, parent=first_model)["id"])
    assert second_job["status"] == "succeeded", second_job
    second_model = second_job["model_id"]
    assert job_worker_pid(hosts, second_job["id"]) in child_pids(worker_b)
    # Worker B fetched the parent and the parent's notes (rehearsal, forgetting check) from the store.
    assert list((hosts.host_dir("worker-b") / "cache" / "models" / first_model).iterdir())
    assert (hosts.host_dir("worker-b") / "cache" / "data" / "datasets").is_dir()
    assert not (hosts.host_dir("worker-b") / "models" / first_model).exists()

    test_data = upload(api_c, key, synthetic_csv(40, "terse", seed=13))
    body = {"test_dataset_id": test_data, "models": ["base", first_model, second_model], "n_resamples": 100}
    response = call(api_c, key, "POST", "/jobs/evaluate", json=body)
    assert response.status_code in (200, 201, 202), response.text
    evaluation_job = finished(api_c, key, response.json()["id"])
    assert evaluation_job["status"] == "succeeded", evaluation_job
    evaluation_id = evaluation_job["evaluation_id"]
    plot = call(api_c, key, "GET", f"/evaluations/{evaluation_id}/plots/roc.png")
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG"), plot.text[:300]

    answer_c = predictions(api_c, key, second_model)
    assert answer_c.status_code == 200, answer_c.text
    assert not (hosts.host_dir("api-c") / "work" / "attempts").exists()  # this host never trained

    api_d = hosts.api("api-d")
    answer_d = predictions(api_d, key, second_model)
    assert answer_d.status_code == 200, answer_d.text
    assert probabilities(answer_d) == probabilities(answer_c)

    # The store is down: a model this host has cached keeps serving; one it has not gets a clear 503.
    hosts.s3.stop()
    try:
        unreachable = predictions(api_d, key, first_model)
        assert unreachable.status_code == 503, unreachable.text
        assert unreachable.headers.get("Retry-After")
        assert "could not be reached" in unreachable.json()["error"]["message"]
        assert predictions(api_d, key, second_model).status_code == 200
    finally:
        hosts.s3.start()

    # The store slow (it accepts connections and answers nothing): the same, within the timeout.
    proxy = StallingProxy()
    try:
        api_s = hosts.api("api-s", endpoint=proxy.endpoint)
        assert predictions(api_s, key, second_model).status_code == 200
        proxy.stalled.set()
        started = time.monotonic()
        stalled = predictions(api_s, key, first_model)
        waited = time.monotonic() - started
        assert stalled.status_code == 503, stalled.text
        assert "could not be reached" in stalled.json()["error"]["message"]
        assert waited < 30, f"a stalled store held /predict for {waited:.0f} s"
        assert predictions(api_s, key, second_model).status_code == 200
    finally:
        proxy.stalled.clear()
        proxy.close()

    # A damaged object is refused, never served: API E has no copy of the first model yet.
    weights = [name for name in hosts.objects(f"models/{first_model}/") if name.endswith(".safetensors")]
    assert weights
    hosts.s3.client().put_object(Bucket=hosts.bucket, Key=weights[0], Body=b"not the weights")
    api_e = hosts.api("api-e")
    damaged = predictions(api_e, key, first_model)
    assert damaged.status_code == 503, damaged.text
    assert "does not match the sha256" in damaged.json()["error"]["message"]
    assert list((hosts.host_dir("api-e") / "cache" / "models" / first_model).iterdir()) == []
    assert predictions(api_e, key, second_model).status_code == 200

    # A deletion through one replica: gone from the other, and from the bucket.
    deleted = call(api_c, key, "DELETE", f"/models/{second_model}", params={"cascade": "true"})
    assert deleted.status_code == 200, deleted.text
    assert predictions(api_d, key, second_model).status_code == 404
    assert hosts.objects(f"models/{second_model}/") == []
    # The other host's copy goes too (its timer runs every NOTETUNE_SWEEP_INTERVAL_S).
    api_d_copy = hosts.host_dir("api-d") / "cache" / "models" / second_model
    wait_until(lambda: not any(api_d_copy.glob("a*")), timeout=30, message="api-d kept its copy")


def test_the_store_stopped_mid_upload_fails_the_job_and_leaves_nothing_visible(hosts):
    """The worker reaches the store over a slow link, so publishing a model takes seconds; the server
    is stopped once the first of the model's objects has arrived and before its commit record."""
    key = hosts.key
    api = hosts.api("api-f")
    hosts.stop_workers()  # the job must go to the worker on the slow link
    link = StallingProxy(bytes_per_s=100_000)
    try:
        worker = hosts.worker("worker-g", endpoint=link.endpoint)
        dataset = upload(api, key, synthetic_csv(60, "narrative", seed=21))
        job = finetune(api, key, dataset)
        model_id = output_model_id(hosts, job["id"])

        def uploading() -> bool:
            names = hosts.objects(f"models/{model_id}/")
            assert not any(name.endswith("/objects.json") for name in names), "the upload was not cut"
            return bool(names)

        wait_until(uploading, timeout=180, interval=0.1, message="the model's upload never started")
        hosts.s3.stop()
        try:
            outcome = finished(api, key, job["id"])
        finally:
            hosts.s3.start()
    finally:
        link.close()
    assert outcome["status"] == "failed", outcome
    assert "store" in outcome["error"], outcome["error"]
    assert call(api, key, "GET", f"/models/{model_id}").status_code == 404
    # Half an upload, no commit record: no reader could take it for a model, and the sweeper (its job
    # has ended, no row names it) removes it.
    wait_until(
        lambda: hosts.objects(f"models/{model_id}/") == [],
        timeout=60,
        message="the cut upload's objects were not swept",
    )
    assert worker.alive()


def probabilities(response: httpx.Response) -> list[float]:
    return [prediction["probability"] for prediction in response.json()["predictions"]]


def child_pids(process: WorkerProcess) -> set[int]:
    """The worker's main process and its pool children (the job runs in a child)."""
    output = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout
    return {int(pid) for pid in output.split()}
