"""A starting worker clears partial model writes left by a crash, and spares one that may be live."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path


def partial_write(settings, age_s: float) -> Path:
    """A `.tmp-*` model directory as a crashed (or still running) writer leaves it, `age_s` old."""
    from models_store.layout import TEMP_PREFIX

    directory = settings.models_root / f"{TEMP_PREFIX}{uuid.uuid4().hex}-0000abcd"
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"half a model")
    stamp = time.time() - age_s
    os.utime(directory, (stamp, stamp))
    return directory


def test_the_sweep_spares_a_write_younger_than_any_job(settings):
    from worker.runtime import WorkerRuntime

    crashed = partial_write(settings, age_s=settings.job_hard_time_limit_s + 60)
    maybe_live = partial_write(settings, age_s=60)
    runtime = WorkerRuntime(settings)
    try:
        assert runtime.sweep_partial_models() >= 1
    finally:
        runtime.database.dispose()
    assert not crashed.exists()
    assert maybe_live.is_dir()
    shutil.rmtree(maybe_live)


def test_a_starting_worker_removes_a_crashed_write(workers, settings):
    crashed = partial_write(settings, age_s=settings.job_hard_time_limit_s + 60)
    workers.ensure_running().stop()
    workers.ensure_running()  # ready once its monitor beats, which starts after the sweep
    assert not crashed.exists()
