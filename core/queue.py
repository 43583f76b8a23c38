"""Celery configuration shared by the producer (API) and the consumer (worker), and the enqueue call.

Both sides build their Celery app from `celery_config`, so the broker, queue, visibility timeout and
time limits always agree. The API only sends by task name: it never imports worker code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery

from core.db.models import Job, JobKind
from core.settings import Settings

# The task each kind of job runs as: the names the worker registers its tasks under.
TASK_NAMES: dict[JobKind, str] = {JobKind.finetune: "training.run", JobKind.evaluate: "evaluation.run"}


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.celery_broker_url.startswith("sqla+"):
        # Kombu's SQLAlchemy transport hands these to create_engine: only engine arguments belong here.
        # It has no visibility timeout (an unacknowledged message returns when its channel closes).
        return {"connect_args": {"timeout": 30}}
    return {"visibility_timeout": settings.broker_visibility_timeout_s}


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.celery_broker_url,
        "broker_transport_options": broker_transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.queue_name,
        # A long training run: acknowledge only when done, take one message at a time, and give the
        # message back if the worker process dies, so another worker can pick the job up.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.job_soft_time_limit_s,
        "task_time_limit": settings.job_hard_time_limit_s,
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }


def create_celery(settings: Settings, main: str = "notetune") -> Celery:
    app = Celery(main, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


@dataclass
class JobQueue:
    celery: Celery
    queue_name: str

    @classmethod
    def from_settings(cls, settings: Settings) -> JobQueue:
        return cls(create_celery(settings, main="notetune-producer"), settings.queue_name)

    def enqueue(self, job: Job) -> None:
        """Send the job id, and only the id: the task re-reads everything else from the database."""
        self.celery.send_task(TASK_NAMES[job.kind], args=[job.id], queue=self.queue_name)

    def broker_reachable(self, timeout_s: float = 2.0) -> bool:
        try:
            with self.celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=timeout_s)
            return True
        except Exception:
            return False

    def close(self) -> None:
        self.celery.close()
