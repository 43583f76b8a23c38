"""Service fixtures: real PostgreSQL, real Redis, a real Celery worker process, the FastAPI app.

Per test session: a fresh database `notetune_test_<random>` (dropped at the end), migrated with
Alembic; a Redis database number flushed before and after; a queue name of its own; a tiny random
BERT as the base model. Everything the worker needs travels in environment variables, exactly as
in production.
"""

from __future__ import annotations

import logging
import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from tests.service.helpers import WorkerProcess, default_organisation_id, wait_until

POSTGRES_ADMIN_DSN = os.environ.get("NOTETUNE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
METRICS_TOKEN = "operator-metrics-token-for-tests"
REDIS_URL = os.environ.get("NOTETUNE_TEST_REDIS", "redis://127.0.0.1:6379")


def _admin_connection() -> psycopg.Connection:
    return psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name = f"notetune_test_{uuid.uuid4().hex[:12]}"
    with _admin_connection() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with _admin_connection() as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    # A database number of our own (1-15) keeps this session's keys apart from anything else.
    number = random.Random(uuid.uuid4().int).randint(1, 15)
    url = f"{REDIS_URL}/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="session")
def service_env(postgres_url, redis_url, service_dir, tiny_bert) -> Iterator[dict[str, str]]:
    """The environment of the API and the workers; also set in this process for Settings()."""
    env = {
        "DATABASE_URL": postgres_url,
        "CELERY_BROKER_URL": redis_url,
        "NOTETUNE_DATA_DIR": str(service_dir / "data"),
        "NOTETUNE_BASE_MODEL": tiny_bert,
        "NOTETUNE_QUEUE_NAME": f"notetune-test-{uuid.uuid4().hex[:8]}",
        "NOTETUNE_HEARTBEAT_INTERVAL_S": "0.5",
        "NOTETUNE_STALE_AFTER_S": "4",
        "NOTETUNE_REAPER_INTERVAL_S": "1",
        "NOTETUNE_MAX_ATTEMPTS": "3",
        "NOTETUNE_SWEEP_INTERVAL_S": "2",
        "NOTETUNE_MAX_PREDICT_TEXTS": "16",
        "NOTETUNE_HEALTH_INTERVAL_S": "0.5",
        "NOTETUNE_METRICS_TOKEN": METRICS_TOKEN,
        "NOTETUNE_MAX_TEXT_CHARS": "5000",
        # Every test client calls from one address and many tests check a 401 on purpose: the throttle
        # is tested with a limit of its own (tests/service/test_fairness.py).
        "NOTETUNE_AUTH_FAILURES_PER_MINUTE": "1000000",
        # Tests leave jobs of the default organisation queued or running on purpose (the reaper's and
        # the deletion tests' rows); the limit is tested with a limit of its own.
        "NOTETUNE_MAX_ACTIVE_JOBS_PER_ORGANISATION": "100000",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    patch = pytest.MonkeyPatch()
    for name, value in env.items():
        patch.setenv(name, value)
    yield {**os.environ, **env}
    patch.undo()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS), started on first use; tests may stop and restart it."""
    from tests.s3_server import S3Server

    root = tmp_path_factory.mktemp("s3")
    server = S3Server(root / "data", root / "weed.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(service_env):
    from core.settings import Settings

    return Settings()


@pytest.fixture(scope="session")
def database(settings):
    from core.db.migrations import upgrade
    from core.db.session import Database

    upgrade(settings)
    database = Database(settings.sqlalchemy_url)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def logs_dir(service_dir) -> Path:
    directory = service_dir / "logs"
    directory.mkdir(exist_ok=True)
    return directory


@pytest.fixture(scope="session")
def worker_log(logs_dir) -> Path:
    return logs_dir / "worker.log"


class Workers:
    """The session's worker: started once, and restarted by tests that kill it."""

    def __init__(self, env: dict[str, str], log_path: Path, database) -> None:
        self.env, self.log_path, self.database = env, log_path, database
        self.current: WorkerProcess | None = None

    def ensure_running(self) -> WorkerProcess:
        if self.current is None or not self.current.alive():
            self.current = self.start()
        return self.current

    def start(self) -> WorkerProcess:
        worker = WorkerProcess(self.env, self.log_path).start()
        wait_until(
            lambda: self._ready(worker.pid), timeout=90, message="the Celery worker did not become ready"
        )
        return worker

    def _ready(self, pid: int) -> bool:
        from core.db.models import WorkerHeartbeat

        with self.database.session() as session:
            return session.query(WorkerHeartbeat).filter(WorkerHeartbeat.pid == pid).count() > 0

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()


@pytest.fixture(scope="session")
def workers(service_env, worker_log, database) -> Iterator[Workers]:
    manager = Workers(service_env, worker_log, database)
    manager.ensure_running()
    yield manager
    manager.stop()


@pytest.fixture
def worker(workers) -> WorkerProcess:
    return workers.ensure_running()


@pytest.fixture(scope="session")
def api_log(logs_dir) -> Iterator[Path]:
    """Everything the in-process API logs (at INFO and above) goes to this file too."""
    path = logs_dir / "api.log"
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    # The test's own HTTP client logs the URLs it calls: that is the client side, not the service.
    handler.addFilter(lambda record: not record.name.startswith("httpx"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield path
    root.removeHandler(handler)
    root.setLevel(previous_level)
    handler.close()


@pytest.fixture(scope="session")
def app(settings, database, api_log):
    from api.main import create_app

    return create_app(settings)


@pytest.fixture(scope="session")
def client(app) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def organisation_id(database) -> str:
    """The default organisation (the migration creates it), which the `keys` belong to."""
    return default_organisation_id(database)


@pytest.fixture(scope="session")
def keys(database, organisation_id) -> dict[str, str]:
    """A plaintext key per role, all of the default organisation."""
    from core.db.models import Role
    from core.services.auth import create_key

    out = {}
    with database.transaction() as session:
        for role in Role:
            _, out[role.value] = create_key(
                session, role, f"test {role.value}", organisation_id=organisation_id
            )
    return out


@pytest.fixture
def runtime(settings):
    """A worker's runtime in this process, for tests that drive the reaper or the sweeper directly."""
    from worker.runtime import WorkerRuntime

    runtime = WorkerRuntime(settings)
    yield runtime
    runtime.database.dispose()
