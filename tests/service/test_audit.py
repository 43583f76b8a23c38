"""The audit trail: keyed note digests, and an append-only guard that survives migrating down and up."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from alembic import command
from core.db.migrations import alembic_config
from tests.service.test_migrations import empty_postgres  # noqa: F401 (a fixture)
from tests.service_fixtures import _admin_connection

NOTE = "58M, stage II, ECOG 1"


def fresh_settings(tmp_path, **values):
    from core.services import audit
    from core.settings import Settings

    audit._file_keys.clear()  # as a new process would: nothing cached
    return Settings(data_dir=tmp_path / "data", **values)


def test_without_a_configured_key_one_is_made_once_and_kept_private(tmp_path, monkeypatch):
    from core.services.audit import KEY_FILE, note_digest

    monkeypatch.delenv("NOTETUNE_AUDIT_KEY", raising=False)
    settings = fresh_settings(tmp_path)
    digest = note_digest(settings, NOTE)
    key_file = settings.data_dir / KEY_FILE
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    key = bytes.fromhex(key_file.read_text())
    assert digest == hmac.new(key, NOTE.encode(), hashlib.sha256).hexdigest()
    assert digest != hashlib.sha256(NOTE.encode()).hexdigest()
    assert note_digest(fresh_settings(tmp_path), NOTE) == digest  # the next process reads the same key
    other_deployment = fresh_settings(tmp_path / "elsewhere")
    assert note_digest(other_deployment, NOTE) != digest


def test_a_configured_key_is_used(tmp_path):
    from core.services.audit import KEY_FILE, note_digest

    settings = fresh_settings(tmp_path, audit_key="a server secret")
    expected = hmac.new(b"a server secret", NOTE.encode(), hashlib.sha256).hexdigest()
    assert note_digest(settings, NOTE) == expected
    assert not (settings.data_dir / KEY_FILE).exists()


def insert_audit_row(connection) -> None:
    connection.execute(
        sa.text(
            "INSERT INTO prediction_audit (created_at, organisation_id, model_id, note_sha256, output) "
            "VALUES (CURRENT_TIMESTAMP, (SELECT id FROM organisations WHERE name = 'default'), 'm', "
            ":digest, '{}')"
        ),
        {"digest": "0" * 64},
    )


def assert_append_only(url: str, backend: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            insert_audit_row(connection)
        refused = ["UPDATE prediction_audit SET model_id = 'x'", "DELETE FROM prediction_audit"]
        if backend == "postgresql":
            refused.append("TRUNCATE prediction_audit")
        for statement in refused:
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(sa.text(statement))
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM prediction_audit")).scalar() >= 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_the_guard_holds_after_migrating_down_and_up(backend, empty_postgres, tmp_path):  # noqa: F811
    url = empty_postgres if backend == "postgresql" else f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    config = alembic_config(url)
    command.upgrade(config, "head")
    assert_append_only(url, backend)
    command.downgrade(config, "0001")
    command.upgrade(config, "head")
    assert_append_only(url, backend)
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    assert_append_only(url, backend)


def test_the_restricted_role_can_insert_but_not_alter_or_empty_the_trail(empty_postgres):  # noqa: F811
    role = f"notetune_app_{uuid.uuid4().hex[:8]}"
    config = alembic_config(empty_postgres)
    config.attributes["app_role"] = role
    try:
        command.upgrade(config, "head")
        engine = sa.create_engine(empty_postgres)
        try:
            with engine.begin() as connection:
                connection.execute(sa.text(f'SET ROLE "{role}"'))
                insert_audit_row(connection)
                connection.execute(sa.text("SELECT count(*) FROM jobs"))
            for statement in (
                "ALTER TABLE prediction_audit DISABLE TRIGGER ALL",
                "DROP TRIGGER prediction_audit_no_update_delete ON prediction_audit",
                "TRUNCATE prediction_audit",
                "DELETE FROM prediction_audit",
            ):
                with pytest.raises(DBAPIError), engine.begin() as connection:
                    connection.execute(sa.text(f'SET ROLE "{role}"'))
                    connection.execute(sa.text(statement))
        finally:
            engine.dispose()
        command.downgrade(config, "base")
    finally:
        _drop_role(role, empty_postgres)


def _drop_role(role: str, url: str) -> None:
    # Privileges in the test database go with it; the role is cluster-wide and must be dropped too.
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f'DROP OWNED BY "{role}"'))
    except DBAPIError:
        pass
    finally:
        engine.dispose()
    with _admin_connection() as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')
