"""The service fixtures (real PostgreSQL, Redis, Celery worker, tiny BERT), reused for the web pages."""

from __future__ import annotations

from tests.service.conftest import (  # noqa: F401 (fixtures are found by name)
    api_log,
    app,
    client,
    database,
    keys,
    logs_dir,
    postgres_url,
    redis_url,
    service_dir,
    service_env,
    settings,
    worker,
    worker_log,
    workers,
)
