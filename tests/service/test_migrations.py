"""Migrations: upgrade -> downgrade to base -> upgrade, on PostgreSQL and SQLite, matching the models."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from alembic import command
from core.db.migrations import alembic_config
from tests.service.conftest import POSTGRES_ADMIN_DSN, _admin_connection

TABLES = {
    "api_keys",
    "datasets",
    "jobs",
    "job_events",
    "models",
    "evaluations",
    "prediction_audit",
    "worker_heartbeats",
}


@pytest.fixture
def empty_postgres():
    name = f"notetune_migrations_{uuid.uuid4().hex[:10]}"
    with _admin_connection() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with _admin_connection() as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_upgrade_downgrade_upgrade(backend, empty_postgres, tmp_path):
    url = empty_postgres if backend == "postgresql" else f"sqlite:///{tmp_path / 'migrations.sqlite3'}"
    config = alembic_config(url)
    command.upgrade(config, "head")
    assert tables(url) == TABLES
    command.downgrade(config, "base")
    assert tables(url) == set()
    command.upgrade(config, "head")
    assert tables(url) == TABLES
    # The models and the migrations describe the same schema (raises if autogenerate finds a diff).
    command.check(config)
