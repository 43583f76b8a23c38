"""Serving benchmark: the real service under closed-loop load, batched vs unbatched (not a test).

    .venv/bin/python bench/serve_throughput.py            # about 15 minutes on 2 CPU cores

Starts the real service (PostgreSQL and Redis when reachable, else the embedded default) with the
packaged MiniLM, trains one full, three LoRA and one AdaLoRA model through the API and a worker,
then runs closed-loop clients (one note per request, synthetic notes) at each concurrency for:
  full      one full model
  lora      the three LoRA models interleaved
  compare   a LoRA model with compare_with ["base", <another LoRA model>]
Baselines in the same run: the same service with batching off (NOTETUNE_PREDICT_BATCHING=false: one
forward per request), and the in-process forward of the full model at its best batch size (the
machine's ceiling) and at one note (the latency floor). Prints requests/s, notes/s, latency
percentiles, errors, /healthz p99 during the load (on the API's port and on NOTETUNE_HEALTH_PORT),
and the mean batch formed (from /metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml import synth  # noqa: E402

PYTHON = sys.executable
MODELS = [("full", "full"), ("lora1", "lora"), ("lora2", "lora"), ("lora3", "lora"), ("ada", "adalora")]
METRICS_TOKEN = uuid.uuid4().hex
TRAINING = {"epochs": 1, "warmup_steps": 2, "head_init": "random"}


@dataclass
class Cell:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    health: list[float] = field(default_factory=list)  # /healthz on the API's port
    health_port: list[float] = field(default_factory=list)  # /healthz on NOTETUNE_HEALTH_PORT
    seconds: float = 0.0

    def row(self) -> dict:
        done = len(self.latencies)
        return {
            "requests_per_s": done / self.seconds,
            "p50_ms": _percentile(self.latencies, 50),
            "p95_ms": _percentile(self.latencies, 95),
            "p99_ms": _percentile(self.latencies, 99),
            "errors": self.errors,
            "healthz_p99_ms": _percentile(self.health, 99),
            "health_port_p99_ms": _percentile(self.health_port, 99),
            "requests": done,
        }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return 1000.0 * ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# --- the service -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _service_env(data_dir: Path) -> dict[str, str]:
    env = {**os.environ, "NOTETUNE_DATA_DIR": str(data_dir), "TOKENIZERS_PARALLELISM": "false"}
    env["NOTETUNE_METRICS_TOKEN"] = METRICS_TOKEN
    for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
        env.pop(name, None)
    postgres, redis_url = _reachable_servers()
    if postgres:
        env["DATABASE_URL"], env["CELERY_BROKER_URL"] = postgres, redis_url
        env["NOTETUNE_QUEUE_NAME"] = f"bench-{uuid.uuid4().hex[:8]}"
    return env


def _reachable_servers() -> tuple[str | None, str | None]:
    try:
        import psycopg
        import redis

        admin = "postgresql://postgres@127.0.0.1:5432/test"
        name = f"notetune_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True, connect_timeout=2) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        redis.Redis.from_url("redis://127.0.0.1:6379/14", socket_timeout=2).ping()
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", "redis://127.0.0.1:6379/14"
    except Exception:
        return None, None


def _drop_database(url: str | None) -> None:
    """The benchmark's own PostgreSQL database goes with it."""
    if not url:
        return
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Service:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.api: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.url = self.health_url = ""

    def prepare(self) -> str:
        subprocess.run([PYTHON, "-m", "cli.main", "migrate"], env=self.env, cwd=REPO, check=True)
        created = subprocess.run(
            [PYTHON, "-m", "cli.main", "keys", "create", "--role", "admin"],
            env=self.env, cwd=REPO, check=True, capture_output=True, text=True,
        )  # fmt: skip
        return created.stdout.strip().splitlines()[-1]

    def start_worker(self) -> None:
        log = open(self.log_dir / "worker.log", "ab")  # noqa: SIM115
        argv = [PYTHON, "-m", "cli.main", "worker", "--loglevel", "WARNING"]  # reads the queue from env
        self.worker = subprocess.Popen(argv, env=self.env, cwd=REPO, stdout=log, stderr=log)

    def start_api(self, extra_env: dict[str, str]) -> None:
        port, health_port = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.health_url = f"http://127.0.0.1:{health_port}"
        extra_env = {**extra_env, "NOTETUNE_HEALTH_PORT": str(health_port)}
        log = open(self.log_dir / "api.log", "ab")  # noqa: SIM115
        argv = [PYTHON, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port)]
        argv += ["--log-level", "warning"]
        self.api = subprocess.Popen(argv, env={**self.env, **extra_env}, cwd=REPO, stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("the API did not start; see api.log")

    def stop_api(self) -> None:
        _stop(self.api)
        self.api = None

    def stop(self) -> None:
        _stop(self.api)
        _stop(self.worker)


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


# --- preparing models through the API ----------------------------------------------------------


def train_models(url: str, key: str, train_csv: bytes) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    client = httpx.Client(base_url=url, headers=headers, timeout=60)
    dataset = client.post("/datasets", files={"file": ("train.csv", train_csv, "text/csv")})
    dataset.raise_for_status()
    dataset_id = dataset.json()["id"]
    jobs = {}
    for name, method in MODELS:
        body = {"train_dataset_id": dataset_id, "method": method, "name": name, "hyperparameters": TRAINING}
        response = client.post("/jobs/finetune", json=body)
        response.raise_for_status()
        jobs[name] = response.json()["id"]
    models = {}
    for name, job_id in jobs.items():
        while True:
            job = client.get(f"/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(2)
        if job["status"] != "succeeded":
            raise RuntimeError(f"training {name} ended {job['status']}: {job.get('error')}")
        models[name] = job["model_id"]
        print(f"  trained {name} ({dict(MODELS)[name]}): {job['model_id']}", flush=True)
    return models


# --- load --------------------------------------------------------------------------------------


def scenario_bodies(scenario: str, models: dict[str, str], notes: list[str]):
    rng = random.Random(0)
    loras = [models["lora1"], models["lora2"], models["lora3"]]
    counter = 0
    while True:
        note = notes[rng.randrange(len(notes))]
        counter += 1
        if scenario == "full":
            yield {"model_id": models["full"], "texts": [note]}
        elif scenario == "lora":
            yield {"model_id": loras[counter % 3], "texts": [note]}
        else:
            yield {"model_id": loras[0], "texts": [note], "compare_with": ["base", loras[1]]}


async def run_cell(url: str, key: str, bodies, concurrency: int, seconds: float, health_url: str) -> Cell:
    cell = Cell()
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        stop_at = time.monotonic() + seconds

        async def one_client() -> None:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    response = await client.post("/predict", json=next(bodies))
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    cell.latencies.append(time.perf_counter() - started)
                else:
                    cell.errors += 1

        # The health probes run in a process of their own: timed from inside this busy event loop, they
        # would measure the load generator's own queue, not the service.
        with multiprocessing.get_context("fork").Pool(1) as pool:
            probes = pool.apply_async(probe_health, ([f"{url}/healthz", f"{health_url}/healthz"], seconds))
            began = time.monotonic()
            await asyncio.gather(*(one_client() for _ in range(concurrency)))
            cell.seconds = time.monotonic() - began
            cell.health, cell.health_port = probes.get(timeout=seconds + 60)
    return cell


def probe_health(urls: list[str], seconds: float) -> list[list[float]]:
    """Seconds each GET of each url took, every 100 ms for `seconds` (a load balancer's view)."""
    timings: list[list[float]] = [[] for _ in urls]
    stop_at = time.monotonic() + seconds
    with httpx.Client(timeout=60) as client:
        while time.monotonic() < stop_at:
            for url, times in zip(urls, timings, strict=True):
                started = time.perf_counter()
                try:
                    client.get(url)
                    times.append(time.perf_counter() - started)
                except httpx.HTTPError:
                    times.append(60.0)  # no answer counts as the slowest
            time.sleep(0.1)
    return timings


def batch_counters(url: str, key: str) -> tuple[float, float]:
    """(sum of notes, number of passes) of the batch-size histogram on /metrics."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10).text
    total = re.search(r"^notetune_batch_notes_sum (\S+)$", text, re.M)
    count = re.search(r"^notetune_batch_notes_count (\S+)$", text, re.M)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


def measure_service(service: Service, key, models, notes, mode_env, scenarios, levels, seconds) -> dict:
    service.start_api(mode_env)
    results = {}
    try:
        for scenario in scenarios:
            bodies = scenario_bodies(scenario, models, notes)
            warm = run_cell(
                service.url, key, bodies, 4, 3, service.health_url
            )  # models loaded, caches filled
            asyncio.run(warm)
            for concurrency in levels:
                before = batch_counters(service.url, key)
                cell = asyncio.run(
                    run_cell(service.url, key, bodies, concurrency, seconds, service.health_url)
                )
                after = batch_counters(service.url, key)
                row = cell.row()
                passes = after[1] - before[1]
                row["mean_batch_notes"] = (after[0] - before[0]) / passes if passes else float("nan")
                notes_per_request = 3 if scenario == "compare" else 1
                row["notes_per_s"] = row["requests_per_s"] * notes_per_request
                results[(scenario, concurrency)] = row
                print(f"    {scenario:8s} c={concurrency:3d}  {_format(row)}", flush=True)
    finally:
        service.stop_api()
    return results


def _format(row: dict) -> str:
    return (
        f"{row['requests_per_s']:6.1f} req/s {row['notes_per_s']:6.1f} notes/s  p50 {row['p50_ms']:7.0f}"
        f"  p95 {row['p95_ms']:7.0f}  p99 {row['p99_ms']:7.0f} ms  errors {row['errors']:3d}"
        f"  healthz p99 {row['healthz_p99_ms']:6.1f} / {row['health_port_p99_ms']:5.1f} ms"
        f"  batch {row['mean_batch_notes']:5.1f}"
    )


# --- in-process baselines ----------------------------------------------------------------------


def in_process_baselines(model_dir: Path, notes: list[str]) -> dict:
    import torch

    from ml.model_cache import ModelCache

    cache = ModelCache(max_models=1)
    route = cache.route(model_dir)
    singles = []
    for note in notes[:40]:
        ids = cache.encode(route, [note])
        started = time.perf_counter()
        cache.logits(route.executor, ids, [None], route.base_model)
        singles.append(time.perf_counter() - started)
    best = {}
    for batch in (1, 4, 8, 16, 32, 64):
        cache.batch_size = batch
        sample = notes[: max(64, batch * 4)]
        ids = cache.encode(route, sample)
        cache.logits(route.executor, ids[:batch], [None] * batch, route.base_model)
        started = time.perf_counter()
        cache.logits(route.executor, ids, [None] * len(ids), route.base_model)
        best[batch] = len(ids) / (time.perf_counter() - started)
    return {
        "single_note_median_ms": 1000 * statistics.median(singles),
        "notes_per_s_by_batch": best,
        "ceiling_notes_per_s": max(best.values()),
        "threads": torch.get_num_threads(),
    }


def adapter_memory(models_root: Path, models: dict[str, str]) -> dict:
    """Parameter bytes of the shared base and of each LoRA adapter loaded onto it."""
    from ml.model_cache import ModelCache

    cache = ModelCache(max_models=8)
    sizes = []
    for name in ("lora1", "lora2", "lora3"):
        cache.route(models_root / models[name])
        host = cache._executors[cache.executors("host")[0]]
        sizes.append(sum(p.numel() * p.element_size() for p in host.parameters()))
    base_bytes = sizes[0] - (sizes[1] - sizes[0])
    return {"base_bytes": base_bytes, "extra_adapter_bytes": sizes[1] - sizes[0], "host_bytes": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="load per cell")
    parser.add_argument("--levels", default="1,8,32,64")
    parser.add_argument("--scenarios", default="full,lora,compare")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    scenarios = args.scenarios.split(",")
    notes = list(synth.generate(400, style="narrative", seed=11)["Text"])
    train_csv = synth.generate(160, style="narrative", seed=5).to_csv(index=False).encode()
    workdir = Path(tempfile.mkdtemp(prefix="notetune-serve-bench-"))
    env = _service_env(workdir / "data")
    service = Service(env, workdir)
    print(f"service: {'PostgreSQL + Redis' if 'DATABASE_URL' in env else 'embedded SQLite'}; {workdir}")
    try:
        key = service.prepare()
        service.start_worker()
        service.start_api({})
        print("training the models through the API ...", flush=True)
        models = train_models(service.url, key, train_csv)
        service.stop_api()
        results = {}
        for mode, mode_env in (("batched", {}), ("unbatched", {"NOTETUNE_PREDICT_BATCHING": "false"})):
            print(f"  service, {mode}:", flush=True)
            results[mode] = measure_service(
                service, key, models, notes, mode_env, scenarios, levels, args.seconds
            )
        models_root = Path(env["NOTETUNE_DATA_DIR"]) / "models"
        full_dir = next(models_root.glob(f"**/{models['full']}"))
        inproc = in_process_baselines(full_dir, notes)
        memory = adapter_memory(full_dir.parent, models)
    finally:
        service.stop()
        _drop_database(env.get("DATABASE_URL"))
    report(results, inproc, memory, levels, scenarios)
    if args.out:
        serialisable = {
            mode: {f"{s}@{c}": row for (s, c), row in rows.items()} for mode, rows in results.items()
        }
        args.out.write_text(
            json.dumps({"service": serialisable, "in_process": inproc, "memory": memory}, indent=2)
        )
    shutil.rmtree(workdir, ignore_errors=True)


def report(results: dict, inproc: dict, memory: dict, levels: list[int], scenarios: list[str]) -> None:
    by_batch = {b: round(v, 1) for b, v in inproc["notes_per_s_by_batch"].items()}
    print(f"\nin-process, full model: single note {inproc['single_note_median_ms']:.1f} ms;", by_batch)
    print("\n| scenario | clients | batched req/s | unbatched req/s | batched / unbatched | batched notes/s "
          "| of ceiling | p50 / p99 ms | errors | /healthz p99 ms | health port p99 ms "
          "| mean batch |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for scenario in scenarios:
        for level in levels:
            on, off = results["batched"][(scenario, level)], results["unbatched"][(scenario, level)]
            print(
                f"| {scenario} | {level} | {on['requests_per_s']:.1f} | {off['requests_per_s']:.1f} "
                f"| {on['requests_per_s'] / off['requests_per_s']:.2f}x | {on['notes_per_s']:.1f} "
                f"| {on['notes_per_s'] / inproc['ceiling_notes_per_s']:.0%} "
                f"| {on['p50_ms']:.0f} / {on['p99_ms']:.0f} | {on['errors']} / {off['errors']} "
                f"| {on['healthz_p99_ms']:.1f} / {off['healthz_p99_ms']:.1f} "
                f"| {on['health_port_p99_ms']:.1f} / {off['health_port_p99_ms']:.1f} "
                f"| {on['mean_batch_notes']:.1f} |"
            )
    one = results["batched"][(scenarios[0], levels[0])]
    print(f"\n1 client, {scenarios[0]}: median {one['p50_ms']:.1f} ms = "
          f"{one['p50_ms'] / inproc['single_note_median_ms']:.2f}x the in-process single-note forward "
          "(target <= 1.3x)")  # fmt: skip
    share = memory["extra_adapter_bytes"] / memory["base_bytes"]
    print(f"each extra LoRA model: {memory['extra_adapter_bytes'] / 1e6:.2f} MB of parameters = {share:.2%} "
          f"of the base's {memory['base_bytes'] / 1e6:.1f} MB (target <= 5%)")  # fmt: skip


if __name__ == "__main__":
    main()
