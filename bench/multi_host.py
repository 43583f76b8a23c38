"""Several hosts on one store, through the whole service (not a test).

    .venv/bin/python bench/multi_host.py        # about 5 minutes on 2 CPU cores; run it alone

Starts SeaweedFS, PostgreSQL and Redis as the tests use them (a database, queue and bucket of its
own), a worker host and two API hosts with no shared path (`notetune worker`, `notetune serve
--no-worker`), trains one LoRA model of the packaged MiniLM on the worker, then measures:

1. The first /predict of that model on an API host that never saw it: cold (nothing on the host's
   disk: the model is downloaded, checked and loaded) against warm-disk (the host's cache has it, the
   process has just started: loaded only), alternating, each time in a freshly started API process;
   and the next /predict (in memory).
2. /predict throughput with closed-loop clients (one note per request): all against one API process,
   then split over two, in the same run. On one machine the two processes share its cores: each gets
   half (OMP_NUM_THREADS), as two hosts would each have their own; a third row gives both all cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml import synth  # noqa: E402
from tests.s3_server import S3Server  # noqa: E402

PYTHON = sys.executable
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TRAINING = {"epochs": 1, "warmup_steps": 2, "head_init": "random"}


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A PostgreSQL database of the benchmark's own (its name), dropped afterwards."""
    import psycopg

    name = f"notetune_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Host:
    """One process of the deployment, with a data directory of its own."""

    def __init__(self, env: dict[str, str], root: Path, name: str, argv: list[str]) -> None:
        self.env = {**env, "NOTETUNE_DATA_DIR": str(root / name)}
        self.directory, self.argv, self.log = root / name, argv, root / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Host:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


class ApiHost(Host):
    def __init__(self, env: dict[str, str], root: Path, name: str, port: int) -> None:
        argv = [PYTHON, "-m", "cli.main", "serve", "--no-worker", "--port", str(port)]
        super().__init__(env, root, name, argv)
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> ApiHost:
        super().start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError(f"API host did not start; see {self.log}")


def cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [PYTHON, "-m", "cli.main", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return result.stdout


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_model(api: ApiHost, key: str) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    notes = synth.generate(300, style="narrative", seed=3).to_csv(index=False).encode()
    upload = httpx.post(f"{api.url}/datasets", files={"file": ("n.csv", notes)}, headers=headers, timeout=120)
    body = {"method": "lora", "train_dataset_id": upload.json()["id"], "hyperparameters": TRAINING}
    job = httpx.post(f"{api.url}/jobs/finetune", json=body, headers=headers, timeout=60).json()
    while True:
        state = httpx.get(f"{api.url}/jobs/{job['id']}", headers=headers, timeout=60).json()
        if state["status"] in ("succeeded", "failed", "cancelled"):
            if state["status"] != "succeeded":
                raise RuntimeError(f"training ended {state['status']}: {state.get('error')}")
            return state["model_id"]
        time.sleep(2)


def predict_seconds(api: ApiHost, key: str, model_id: str, note: str) -> float:
    start = time.perf_counter()
    response = httpx.post(
        f"{api.url}/predict",
        json={"model_id": model_id, "texts": [note]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    )
    response.raise_for_status()
    return time.perf_counter() - start


def first_predictions(env, root, key, model_id, note, repeats: int) -> dict[str, list[float]]:
    """Alternate a cold host (its cache wiped) and a warm-disk host (cache kept), each a new process."""
    port = free_port()
    times: dict[str, list[float]] = {"cold cache": [], "warm disk cache": [], "in memory": []}
    for _ in range(repeats):
        for label in ("cold cache", "warm disk cache"):
            host = ApiHost(env, root, "api-first", port)
            if label == "cold cache":
                shutil.rmtree(host.directory / "cache", ignore_errors=True)
            host.start()
            try:
                times[label].append(predict_seconds(host, key, model_id, note))
                times["in memory"].append(predict_seconds(host, key, model_id, note))
            finally:
                host.stop()
    return times


def closed_loop(urls: list[str], key: str, model_id: str, notes: list[str], clients: int, seconds: float):
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        url = urls[index % len(urls)]
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as session:
            n = index
            while time.monotonic() < deadline:
                n += 1
                start = time.perf_counter()
                response = session.post(
                    f"{url}/predict", json={"model_id": model_id, "texts": [notes[n % len(notes)]]}
                )
                with lock:
                    if response.status_code == 200:
                        latencies.append(time.perf_counter() - start)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ordered = sorted(latencies)
    return {
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": 1000 * ordered[len(ordered) // 2] if ordered else float("nan"),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        if ordered
        else float("nan"),
        "errors": errors[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    stack = contextlib.ExitStack()
    root = Path(tempfile.mkdtemp(prefix="bench-hosts-"))
    server = S3Server(root / "s3", root / "weed.log").start()
    hosts: list[Host] = []
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        server.create_bucket(bucket)
        database = stack.enter_context(scratch_database())
        env = {
            **{name: value for name, value in os.environ.items() if not name.startswith("NOTETUNE_")},
            **server.credentials,
            "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
            "CELERY_BROKER_URL": "redis://127.0.0.1:6379/13",
            "NOTETUNE_QUEUE_NAME": f"bench-{uuid.uuid4().hex[:8]}",
            "NOTETUNE_STORE_URL": f"s3://{bucket}/bench",
            "NOTETUNE_S3_ENDPOINT_URL": server.endpoint,
            "TOKENIZERS_PARALLELISM": "false",
        }
        cli({**env, "NOTETUNE_DATA_DIR": str(root / "setup")}, "migrate")
        key_output = cli(
            {**env, "NOTETUNE_DATA_DIR": str(root / "setup")}, "keys", "create", "--role", "admin"
        )
        key = key_output.strip().splitlines()[-1]
        api_a = ApiHost(env, root, "api-a", free_port()).start()
        hosts.append(api_a)
        worker = Host(env, root, "worker", [PYTHON, "-m", "cli.main", "worker"]).start()
        hosts.append(worker)
        started = time.perf_counter()
        model_id = train_model(api_a, key)
        print(f"trained LoRA model {model_id} on the worker host in {time.perf_counter() - started:.0f} s")
        worker.stop()  # its CPU is the API hosts' from here on
        notes = list(synth.generate(64, style="narrative", seed=5)["Text"])

        times = first_predictions(env, root, key, model_id, notes[0], args.repeats)
        cold, warm = statistics.median(times["cold cache"]), statistics.median(times["warm disk cache"])
        memory = statistics.median(times["in memory"])
        print(f"\nfirst /predict on a fresh API host, median of {args.repeats} (seconds):")
        print(f"  cold cache (download + check + load)   {cold:7.3f}")
        print(f"  warm disk cache (load only)            {warm:7.3f}   cold/warm {cold / warm:.2f}x")
        print(f"  next /predict (in memory)              {memory:7.3f}")

        api_a.stop()
        # One machine stands in for two hosts: each process gets its share of the cores (torch's
        # threads of two processes fighting over the same cores is the third row: it is much slower).
        cores = os.cpu_count() or 2
        shares = {
            "one API process, all cores": [{}],
            "two API processes, half the cores each": [{"OMP_NUM_THREADS": str(max(1, cores // 2))}] * 2,
            "two API processes, all cores each": [{}, {}],
        }
        rows = {}
        for label, extra_envs in shares.items():
            apis = [
                ApiHost({**env, **extra}, root, f"api-{index}", free_port()).start()
                for index, extra in enumerate(extra_envs)
            ]
            hosts.extend(apis)
            for api in apis:  # load the model before timing
                predict_seconds(api, key, model_id, notes[0])
            rows[label] = closed_loop(
                [api.url for api in apis], key, model_id, notes, args.clients, args.seconds
            )
            for api in apis:
                api.stop()
        print(f"\n/predict, {args.clients} closed-loop clients, {args.seconds:g} s each ({cores} cores):")
        for label, row in rows.items():
            print(
                f"  {label:40} {row['requests_per_s']:7.1f} req/s  p50 {row['p50_ms']:6.0f} ms  "
                f"p99 {row['p99_ms']:6.0f} ms  errors {row['errors']}"
            )
        one = rows["one API process, all cores"]["requests_per_s"]
        two = rows["two API processes, half the cores each"]["requests_per_s"]
        print(f"  two (half the cores each) / one: {two / one:.2f}x")
    finally:
        for host in hosts:
            host.stop()
        server.stop()
        stack.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
