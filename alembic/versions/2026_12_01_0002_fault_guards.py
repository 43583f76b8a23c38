"""Guards: the audit trail refuses TRUNCATE too; CHECK constraints on the enum columns; optionally a
restricted database role for the API and workers (one that cannot alter or empty the audit trail).

The role is created only when asked: `alembic -x app_role=notetune_app upgrade head`, or
NOTETUNE_DB_APP_ROLE=notetune_app for `notetune migrate` (PostgreSQL only). It is NOLOGIN: give it a
password and LOGIN (or grant it to a login role) and point the services' DATABASE_URL at that role.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00
"""

from collections.abc import Sequence

from alembic import op
from core.db.migrations import restricted_app_role

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations carry their own copy of the allowed values: they must not change when the models do.
CHECKS = {
    "api_keys": [("ck_api_keys_role", "role IN ('admin', 'trainer', 'predictor')")],
    "jobs": [
        ("ck_jobs_job_kind", "kind IN ('finetune', 'evaluate')"),
        ("ck_jobs_job_status", "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')"),
    ],
}
READ_WRITE_TABLES = (
    "api_keys",
    "datasets",
    "jobs",
    "job_events",
    "models",
    "evaluations",
    "worker_heartbeats",
)

NO_TRUNCATE_POSTGRESQL = """
    CREATE TRIGGER prediction_audit_no_truncate BEFORE TRUNCATE ON prediction_audit
    FOR EACH STATEMENT EXECUTE FUNCTION prediction_audit_append_only()
"""
# SQLite has no TRUNCATE: its "DELETE FROM t" fast path is skipped when a DELETE trigger exists, so
# the row triggers of 0001 already refuse it. They are restated here (IF NOT EXISTS) so the guard
# does not depend on one migration alone.
APPEND_ONLY_SQLITE = [
    """
    CREATE TRIGGER IF NOT EXISTS prediction_audit_no_update BEFORE UPDATE ON prediction_audit
    BEGIN SELECT RAISE(ABORT, 'prediction_audit is append-only'); END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS prediction_audit_no_delete BEFORE DELETE ON prediction_audit
    BEGIN SELECT RAISE(ABORT, 'prediction_audit is append-only'); END
    """,
]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(NO_TRUNCATE_POSTGRESQL)
    elif dialect == "sqlite":
        for statement in APPEND_ONLY_SQLITE:
            op.execute(statement)
    for table, checks in CHECKS.items():
        with op.batch_alter_table(table) as batch:
            for name, condition in checks:
                batch.create_check_constraint(name, condition)
    role = restricted_app_role()
    if role is not None and dialect == "postgresql":
        _grant_restricted_role(role)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    role = restricted_app_role()
    if role is not None and dialect == "postgresql":
        _revoke_restricted_role(role)
    for table, checks in CHECKS.items():
        with op.batch_alter_table(table) as batch:
            for name, _condition in checks:
                batch.drop_constraint(name, type_="check")
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS prediction_audit_no_truncate ON prediction_audit")


def _grant_restricted_role(role: str) -> None:
    # Not the owner of any table: it cannot ALTER, DROP or disable a trigger, nor TRUNCATE.
    op.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
        f'THEN CREATE ROLE "{role}" NOLOGIN; END IF; END $$'
    )
    grant_connect = f"format('GRANT CONNECT ON DATABASE %I TO \"{role}\"', current_database())"
    op.execute(f"DO $$ BEGIN EXECUTE {grant_connect}; END $$")
    op.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {", ".join(READ_WRITE_TABLES)} TO "{role}"')
    op.execute(f'GRANT SELECT, INSERT ON prediction_audit TO "{role}"')
    op.execute(f'GRANT SELECT ON alembic_version TO "{role}"')
    op.execute(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"')


def _revoke_restricted_role(role: str) -> None:
    # The role itself stays: it is shared by every database of the server, and may have logins.
    op.execute(
        f"DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{role}"; '
        f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM "{role}"; '
        f'REVOKE ALL ON SCHEMA public FROM "{role}"; END IF; END $$'
    )
