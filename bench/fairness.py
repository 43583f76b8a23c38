"""Fair shares between organisations under a /predict flood, through the whole service (not a test).

    .venv/bin/python bench/fairness.py        # about 6 minutes on 2 CPU cores; run it alone

Starts the service as the tests do (a PostgreSQL database and a queue of its own, one API process
`notetune serve --no-worker`, a worker for training only), makes two organisations, trains one LoRA
model of the packaged MiniLM for each, then measures in one run:

1. Hospital B's /predict latency (one closed-loop client, one note a request) alone, and while
   hospital A floods with FLOOD closed-loop clients (each retries at once, ignoring Retry-After: the
   worst case); A's answers by status.
2. /healthz on the API's port, timed from a process of its own every 20 ms: idle, and while A floods
   with 64 clients.
Both with the default settings (A's share of the prediction queue, a rate per key, passes cut short
while both organisations are active), and again with those three off (round-robin turns stay), so
the ratios show what they add. `--variant NAME=VALUE,...` adds runs with other settings.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.multi_host import (  # noqa: E402
    PYTHON,
    ApiHost,
    Host,
    cli,
    free_port,
    predict_seconds,
    scratch_database,
    train_model,
)
from ml import synth  # noqa: E402

LIMITS_OFF = {
    "NOTETUNE_PREDICT_MAX_QUEUED_NOTES_PER_ORGANISATION": "1024",
    "NOTETUNE_PREDICT_NOTES_PER_SECOND_PER_KEY": "0",
    "NOTETUNE_PREDICT_CONTENDED_PASS_MS": "0",
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Clients:
    """`n` closed-loop clients of one organisation until stopped; latencies of 200s, counts by status."""

    def __init__(self, url: str, key: str, model_id: str, notes: list[str], n: int) -> None:
        self.url, self.key, self.model_id, self.notes, self.n = url, key, model_id, notes, n
        self.latencies: list[float] = []
        self.statuses: Counter = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(index,)) for index in range(n)]

    def _run(self, index: int) -> None:
        with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {self.key}"}) as session:
            count = index
            while not self._stop.is_set():
                count += 1
                body = {"model_id": self.model_id, "texts": [self.notes[count % len(self.notes)]]}
                started = time.perf_counter()
                status = session.post(f"{self.url}/predict", json=body).status_code
                self.statuses[status] += 1
                if status == 200:
                    self.latencies.append(time.perf_counter() - started)

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def probe_health(url: str, seconds: float, out) -> None:
    """In a process of its own: /healthz every 20 ms; the latencies go back through `out`."""
    latencies = []
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=10) as session:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            session.get(f"{url}/healthz")
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
    out.put(latencies)


def health_during(url: str, seconds: float, load) -> list[float]:
    queue = multiprocessing.Queue()
    with load():
        time.sleep(2)  # the flood is under way
        prober = multiprocessing.Process(target=probe_health, args=(url, seconds, queue))
        prober.start()
        latencies = queue.get()
        prober.join()
    return latencies


class NoLoad:
    def __enter__(self):
        return self

    def __exit__(self, *_):
        return None


def measure(api: ApiHost, a: dict, b: dict, notes: list[str], flood: int, seconds: float) -> dict:
    row = {}
    with Clients(api.url, b["key"], b["model"], notes, 1) as alone:
        time.sleep(seconds)
    row["B alone"] = alone.latencies
    with Clients(api.url, a["key"], a["model"], notes, flood) as crowd:
        time.sleep(2)
        with Clients(api.url, b["key"], b["model"], notes, 1) as single:
            time.sleep(seconds)
    row["B during flood"] = single.latencies
    row["A statuses"] = dict(crowd.statuses)
    row["health idle"] = health_during(api.url, seconds, NoLoad)
    row["health during 64-client flood"] = health_during(
        api.url, seconds, lambda: Clients(api.url, a["key"], a["model"], notes, 64)
    )
    return row


def report(label: str, row: dict) -> None:
    print(f"\n{label}")
    alone, crowded = row["B alone"], row["B during flood"]
    for name in ("B alone", "B during flood"):
        values = row[name]
        print(
            f"  {name:32} p50 {percentile(values, 0.5):7.0f} ms  "
            f"p99 {percentile(values, 0.99):7.0f} ms  n={len(values)}"
        )
    print(
        f"  B p99 flood/alone {percentile(crowded, 0.99) / percentile(alone, 0.99):.2f}x  "
        f"p50 {percentile(crowded, 0.5) / percentile(alone, 0.5):.2f}x   A's answers: {row['A statuses']}"
    )
    for name in ("health idle", "health during 64-client flood"):
        values = row[name]
        print(
            f"  /healthz {name:29} p50 {percentile(values, 0.5):6.1f} ms  "
            f"p99 {percentile(values, 0.99):6.1f} ms"
        )


def organisation(env: dict, name: str) -> str:
    return cli(env, "orgs", "create", name).strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flood", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--variant",
        action="append",
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="settings of one more run (NOTETUNE_ names), e.g. NOTETUNE_PREDICT_CONTENDED_PASS_MS=1",
    )
    parser.add_argument("--only-variants", action="store_true", help="skip the two standard runs")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-fair-"))
    hosts: list[Host] = []
    with scratch_database() as database:
        try:
            run_all(args, root, database, hosts)
        finally:
            for host in hosts:
                host.stop()
            shutil.rmtree(root, ignore_errors=True)


def run_all(args, root: Path, database: str, hosts: list[Host]) -> None:
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("NOTETUNE_")},
        "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/13",
        "NOTETUNE_QUEUE_NAME": f"bench-{uuid.uuid4().hex[:8]}",
        "NOTETUNE_DATA_DIR": str(root / "data"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    cli(env, "migrate")
    keys = {name: organisation(env, f"Hospital {name}") for name in ("A", "B")}
    api, worker = (
        ApiHost(env, root, "api", free_port()),
        Host(env, root, "worker", [PYTHON, "-m", "cli.main", "worker"]),
    )
    for host in (api, worker):  # one machine, one data directory (no object store here)
        host.env["NOTETUNE_DATA_DIR"] = env["NOTETUNE_DATA_DIR"]
    api.start()
    hosts.append(api)
    worker.start()
    hosts.append(worker)
    hospitals = {name: {"key": key, "model": train_model(api, key)} for name, key in keys.items()}
    worker.stop()
    api.stop()
    notes = list(synth.generate(64, style="narrative", seed=5)["Text"])
    variants = [(text, dict(pair.split("=", 1) for pair in text.split(","))) for text in args.variant or []]
    standard = [
        ("default settings", {}),
        ("queue share, key rate and contended cut off (round-robin turns stay)", LIMITS_OFF),
    ]
    for label, extra in ([] if args.only_variants else standard) + variants:
        api = ApiHost({**env, **extra}, root, "api", free_port())
        api.env["NOTETUNE_DATA_DIR"] = env["NOTETUNE_DATA_DIR"]
        api.start()
        hosts.append(api)
        for hospital in hospitals.values():
            predict_seconds(api, hospital["key"], hospital["model"], notes[0])  # loaded before timing
        row = measure(api, hospitals["A"], hospitals["B"], notes, args.flood, args.seconds)
        api.stop()
        report(
            f"{label}: A floods with {args.flood} clients, {args.seconds:g} s a cell "
            f"({os.cpu_count()} cores)",
            row,
        )


if __name__ == "__main__":
    main()
