"""The worker's Celery app: the shared config from core.queue, the tasks, and process signals.

Start it with `notetune worker` (or `celery -A worker.celery_app worker --concurrency 1`): one job
per process, since a training run owns the whole GPU.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from core.queue import JobQueue, create_celery
from core.settings import Settings
from worker.monitor import WorkerMonitor
from worker.runtime import RuntimeHolder, worker_name

log = logging.getLogger("notetune.worker")

runtime_holder = RuntimeHolder()


def create_worker_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    worker_app = create_celery(settings, main="notetune-worker")
    worker_app.conf.update(
        include=["worker.tasks"],
        worker_concurrency=1,
    )
    return worker_app


app = create_worker_app()
_monitors: list[WorkerMonitor] = []


@signals.worker_process_init.connect
def _fresh_runtime_after_fork(**_: Any) -> None:
    # A forked pool process must not share the parent's database connections.
    runtime_holder.reset()
    from ml.modeling import quiet_library_logs  # here, not at import: it loads torch

    quiet_library_logs()


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    runtime = runtime_holder.get()
    swept = runtime.sweep_partial_models()
    if swept:
        log.warning("removed %d partial model directories left by a crashed write", swept)
    queue = JobQueue(app, runtime.settings.queue_name)
    monitor = WorkerMonitor(runtime, queue, worker_name(getattr(sender, "hostname", None)))
    monitor.start()
    _monitors.append(monitor)
    log.info("worker ready: consuming queue %s", app.conf.task_default_queue)


@signals.worker_shutdown.connect
def _stop_monitor(**_: Any) -> None:
    while _monitors:
        _monitors.pop().stop()
