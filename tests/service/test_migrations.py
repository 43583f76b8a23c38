"""Migrations: upgrade -> downgrade to base -> upgrade, on PostgreSQL and SQLite, matching the models."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from alembic import command
from core.db.migrations import alembic_config
from tests.service_fixtures import POSTGRES_ADMIN_DSN, _admin_connection

TABLES = {
    "api_keys",
    "datasets",
    "jobs",
    "job_events",
    "models",
    "evaluations",
    "prediction_audit",
    "worker_heartbeats",
    "organisations",
    "pending_file_deletions",
    "ui_sessions",
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


SEED = [
    "INSERT INTO api_keys (id, name, role, key_hash, prefix, created_at) "
    "VALUES ('k1', 'admin', 'admin', 'h1', 'ntk_x', CURRENT_TIMESTAMP)",
    "INSERT INTO datasets (id, name, sha256, path, size_bytes, rows, class_counts, duplicates, "
    "truncated_at_max_length, summary, created_at) VALUES ('d1', 'notes.csv', 's1', 'datasets/s1.csv', "
    '10, 40, \'{"0": 30, "1": 10}\', 0, 0, \'{"rows": 40}\', CURRENT_TIMESTAMP)',
    "INSERT INTO jobs (id, kind, status, api_key_id, method, stage, train_dataset_id, hyperparameters, "
    "output_model_id, attempt, cancel_requested, progress, updated_at, created_at) VALUES ('j1', "
    "'finetune', 'succeeded', 'k1', 'lora', 1, 'd1', '{\"epochs\": 2}', 'm1', 2, false, "
    '\'{"phase": "saving", "percent": 100.0}\', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)',
    "INSERT INTO job_events (job_id, kind, attempt, data, created_at) "
    "VALUES ('j1', 'requeued', 1, '{\"status\": \"queued\"}', CURRENT_TIMESTAMP)",
    "INSERT INTO models (id, job_id, method, stage, base_model, path, train_dataset_id, hyperparameters, "
    "data_summary, metrics, threshold, manifest, created_at) VALUES ('m1', 'j1', 'lora', 1, 'tiny', 'm1', "
    "'d1', '{}', '{}', '{\"f1\": 0.5}', 0.42, '{\"id\": \"m1\"}', CURRENT_TIMESTAMP)",
    "INSERT INTO prediction_audit (created_at, api_key_id, model_id, note_sha256, output) "
    "VALUES (CURRENT_TIMESTAMP, 'k1', 'm1', 'ab', '{\"probability\": 0.3}')",
]
SNAPSHOT = {
    "api_keys": "SELECT id, role, key_hash FROM api_keys",
    "datasets": "SELECT id, sha256, path, rows FROM datasets",
    "jobs": "SELECT id, kind, status, attempt, output_model_id, train_dataset_id FROM jobs",
    "job_events": "SELECT job_id, kind, attempt FROM job_events",
    "models": "SELECT id, job_id, threshold, path FROM models",
    "prediction_audit": "SELECT api_key_id, model_id, note_sha256 FROM prediction_audit",
}


def snapshot(url: str) -> dict[str, list]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return {
                name: sorted(map(tuple, connection.execute(sa.text(q)).all())) for name, q in SNAPSHOT.items()
            }
    finally:
        engine.dispose()


OWNED = ("api_keys", "datasets", "jobs", "models", "prediction_audit")


def owners(url: str) -> dict[str, set[str]]:
    """The organisation names each owned table's rows belong to."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return {
                table: set(
                    connection.execute(
                        sa.text(
                            f"SELECT o.name FROM {table} t JOIN organisations o ON o.id = t.organisation_id"
                        )
                    ).scalars()
                )
                for table in OWNED
            }
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_down_and_up_keep_the_rows_and_the_constraints_hold(backend, empty_postgres, tmp_path):
    url = empty_postgres if backend == "postgresql" else f"sqlite:///{tmp_path / 'data.sqlite3'}"
    config = alembic_config(url)
    # The rows are written by the release before organisations, then upgraded.
    command.upgrade(config, "0002")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in SEED:
                connection.execute(sa.text(statement))
        before = snapshot(url)
        assert all(before.values()), before
        command.upgrade(config, "head")
        assert snapshot(url) == before
        assert owners(url) == {table: {"default"} for table in OWNED}
        command.downgrade(config, "0001")
        command.upgrade(config, "head")
        assert snapshot(url) == before
        assert owners(url) == {table: {"default"} for table in OWNED}
        for statement in (
            "UPDATE jobs SET status = 'paused'",
            "UPDATE jobs SET kind = 'other'",
            "UPDATE api_keys SET role = 'root'",
            "UPDATE jobs SET organisation_id = NULL",
            "UPDATE datasets SET organisation_id = 'no-such-organisation'",
            "INSERT INTO pending_file_deletions (kind, path, created_at) "
            "VALUES ('x', 'p', CURRENT_TIMESTAMP)",
        ):
            with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
                if backend == "sqlite":
                    connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.execute(sa.text(statement))
        command.check(config)
    finally:
        engine.dispose()


def test_the_same_file_may_be_held_by_two_organisations_but_once_in_each(tmp_path):
    url = f"sqlite:///{tmp_path / 'dedup.sqlite3'}"
    command.upgrade(alembic_config(url), "head")
    engine = sa.create_engine(url)
    insert = (
        "INSERT INTO datasets (id, organisation_id, name, sha256, path, size_bytes, rows, class_counts, "
        "duplicates, truncated_at_max_length, summary, created_at) VALUES (:id, :org, 'n', 's1', :id, 1, 1, "
        "'{}', 0, 0, '{}', CURRENT_TIMESTAMP)"
    )
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("INSERT INTO organisations VALUES ('b', 'o2', CURRENT_TIMESTAMP)"))
            default = connection.scalar(sa.text("SELECT id FROM organisations WHERE name = 'default'"))
            connection.execute(sa.text(insert), {"id": "d1", "org": default})
            connection.execute(sa.text(insert), {"id": "d2", "org": "o2"})
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.execute(sa.text(insert), {"id": "d3", "org": "o2"})
    finally:
        engine.dispose()
