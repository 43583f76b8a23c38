"""Store benchmark: the same transfers through the local filesystem and an S3-compatible server (not a
test).

    .venv/bin/python bench/store.py                 # about a minute; starts SeaweedFS on port 8333
    .venv/bin/python bench/store.py --endpoint http://host:8333 --bucket b   # an existing server

For each backend, in one run: storing and reading back a 50 MB notes file, and publishing and
fetching a model directory the size of a full MiniLM fine-tune (about 90 MB of weights) and of a LoRA
adapter (about 2 MB). A read is timed cold (the host has no copy: the S3 backend downloads and checks
every sha256) and warm (this host's cache). Prints seconds, MB/s and the S3/local ratio of each.

What it does not measure (yet): the first /predict of a model trained on another host through the
whole service, and /predict throughput with two API processes against one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models_store.artifacts import ArtifactStore  # noqa: E402
from models_store.cache import LocalCache  # noqa: E402
from models_store.layout import write_manifest  # noqa: E402
from models_store.local import LocalStore  # noqa: E402

MB = 1024 * 1024
MODEL_SIZES = {"full MiniLM": 90 * MB, "LoRA adapter": 2 * MB}
DATASET_BYTES = 50 * MB


def timed(action: Callable[[], object], repeats: int) -> float:
    """Median seconds of `action` over `repeats` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def notes_file(directory: Path) -> Path:
    path = directory / "notes.csv"
    line = b'"Patient seen in clinic, stage II, node negative, ER positive, tolerating therapy.",0\n'
    with open(path, "wb") as handle:
        handle.write(b"Text,label\n")
        handle.write(line * (DATASET_BYTES // len(line)))
    return path


def model_attempt(store: ArtifactStore, model_id: str, weight_bytes: int) -> None:
    directory = store.attempt_dir(model_id, 1)
    directory.mkdir(parents=True)
    write_manifest(directory, {"model_id": model_id})
    (directory / "model.safetensors").write_bytes(os.urandom(weight_bytes))


def measure(store: ArtifactStore, scratch: Path, repeats: int, drop_cache: Callable[[], None]) -> dict:
    results = {}
    source = notes_file(scratch)
    keys = iter(f"datasets/bench/{uuid.uuid4().hex}.csv" for _ in range(repeats * 2))
    key = next(keys)
    results["put 50 MB notes"] = (timed(lambda: store.put_file(next(keys), source), repeats), DATASET_BYTES)
    store.put_file(key, source)

    def cold_read():
        drop_cache()
        store.file_path(key).read_bytes()

    results["read 50 MB notes, cold"] = (timed(cold_read, repeats), DATASET_BYTES)
    results["read 50 MB notes, warm"] = (
        timed(lambda: store.file_path(key).read_bytes(), repeats),
        DATASET_BYTES,
    )
    for label, size in MODEL_SIZES.items():
        model_ids = [uuid.uuid4().hex for _ in range(repeats)]
        for model_id in model_ids:
            model_attempt(store, model_id, size)
        staged = iter(model_ids)

        def publish(staged=staged):
            model_id = next(staged)
            store.stage_model(model_id, 1)
            store.publish_model(model_id, 1)

        results[f"publish {label}"] = (timed(publish, repeats), size)
        key = _key_of(store, model_ids[0])

        def fetch(key=key):
            (store.model_dir(key) / "model.safetensors").read_bytes()

        def cold_fetch():
            drop_cache()
            fetch()

        results[f"fetch {label}, cold"] = (timed(cold_fetch, repeats), size)
        results[f"fetch {label}, warm"] = (timed(fetch, repeats), size)
    return results


def _key_of(store: ArtifactStore, model_id: str) -> str:
    return next(key for key in store.model_keys() if key.split("/")[0] == model_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoint", help="an S3-compatible server already running (default: start one)")
    parser.add_argument("--bucket", default=f"bench-{uuid.uuid4().hex[:8]}")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-store-"))
    server = None
    try:
        endpoint = args.endpoint
        if endpoint is None:
            from tests.s3_server import S3Server

            server = S3Server(scratch / "weed", scratch / "weed.log").start()
            os.environ.update(server.credentials)
            server.create_bucket(args.bucket)
            endpoint = server.endpoint
        from models_store.s3 import S3Store

        local = LocalStore(scratch / "local", scratch / "local" / "models")
        cache = LocalCache(scratch / "s3-host" / "cache", max_bytes=4 * 1024 * MB)
        remote = S3Store(
            f"s3://{args.bucket}/bench",
            cache=cache,
            work_dir=scratch / "s3-host" / "work",
            endpoint_url=endpoint,
        )
        print(f"local: {local.describe()}\nS3:    {remote.describe()}\n", flush=True)
        local_results = measure(local, scratch, args.repeats, drop_cache=lambda: None)
        remote_results = measure(
            remote, scratch, args.repeats, drop_cache=lambda: shutil.rmtree(cache.root, ignore_errors=True)
        )
        report(local_results, remote_results)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def report(local: dict, remote: dict) -> None:
    print(f"{'operation':32} {'local s':>9} {'MB/s':>8} {'S3 s':>9} {'MB/s':>8} {'S3/local':>9}")
    for name, (local_s, size) in local.items():
        remote_s = remote[name][0]
        print(
            f"{name:32} {local_s:9.3f} {size / MB / local_s:8.0f} {remote_s:9.3f} "
            f"{size / MB / remote_s:8.0f} {remote_s / local_s:8.1f}x"
        )


if __name__ == "__main__":
    main()
