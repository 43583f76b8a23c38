"""Organisations: every key, dataset, job, model, evaluation and audit row belongs to one; every
existing row moves into an organisation named "default". Tombstones for deleted datasets, models and
evaluations (`deleted_at`), a dataset's `file_deleted_at` (deletion or retention), and the journal of
files still to remove (`pending_file_deletions`). Dataset deduplication becomes per organisation.

prediction_audit is append-only (its triggers refuse UPDATE and DELETE), so its new column is added
with the default organisation's id as a constant default, which fills the existing rows without an
UPDATE, and without rebuilding the table on SQLite (which would drop its triggers).

A downgrade keeps tombstones as ordinary rows (their sha256 made unique again) and fails if two
organisations hold the same file, which one table-wide unique sha256 cannot represent.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 09:00:00
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from alembic import op
from core.db.migrations import restricted_app_role

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_NAME = "default"
# Tables whose rows an organisation owns (besides prediction_audit), in foreign-key order.
OWNED = ("api_keys", "datasets", "jobs", "models", "evaluations")
TOMBSTONED = ("datasets", "models", "evaluations")
FILE_KIND_CHECK = ("ck_pending_file_deletions_file_kind", "kind IN ('data', 'model')")


def upgrade() -> None:
    op.create_table(
        "organisations",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organisations")),
        sa.UniqueConstraint("name", name=op.f("uq_organisations_name")),
    )
    default_id = _default_organisation()
    for table in OWNED:
        _add_owner(table, default_id)
    _add_audit_owner(default_id)
    for table in TOMBSTONED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("file_deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch.alter_column("sha256", existing_type=sa.String(length=64), nullable=True)
        batch.drop_constraint("uq_datasets_sha256", type_="unique")
        batch.create_unique_constraint("uq_datasets_organisation_id_sha256", ["organisation_id", "sha256"])
    op.create_table(
        "pending_file_deletions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(FILE_KIND_CHECK[1], name=FILE_KIND_CHECK[0]),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_file_deletions")),
    )
    role = restricted_app_role()
    if role is not None and op.get_bind().dialect.name == "postgresql":
        # As migration 0002's restricted role: it reads organisations (the CLI creates them with an
        # owner's login) and keeps the deletion journal.
        op.execute(f'GRANT SELECT ON organisations TO "{role}"')
        op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON pending_file_deletions TO "{role}"')
        op.execute(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"')


def downgrade() -> None:
    op.drop_table("pending_file_deletions")
    op.execute("UPDATE datasets SET sha256 = 'deleted-' || id WHERE sha256 IS NULL")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint("uq_datasets_organisation_id_sha256", type_="unique")
        batch.create_unique_constraint("uq_datasets_sha256", ["sha256"])
        batch.alter_column("sha256", existing_type=sa.String(length=64), nullable=False)
        batch.drop_column("file_deleted_at")
    for table in TOMBSTONED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("deleted_at")
    op.drop_index(op.f("ix_prediction_audit_organisation_id"), table_name="prediction_audit")
    # A plain DROP COLUMN on both backends: no row trigger fires, and SQLite keeps the table (and
    # its triggers) instead of rebuilding it.
    op.drop_column("prediction_audit", "organisation_id")
    for table in reversed(OWNED):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_organisation_id")
            batch.drop_constraint(f"fk_{table}_organisation_id_organisations", type_="foreignkey")
            batch.drop_column("organisation_id")
    op.drop_table("organisations")


def _default_organisation() -> str:
    organisations = sa.table(
        "organisations", sa.column("id", sa.String), sa.column("name", sa.String), sa.column("created_at")
    )
    default_id = uuid.uuid4().hex
    op.bulk_insert(organisations, [{"id": default_id, "name": DEFAULT_NAME, "created_at": datetime.now(UTC)}])
    return default_id


def _add_owner(table: str, default_id: str) -> None:
    with op.batch_alter_table(table) as batch:
        batch.add_column(sa.Column("organisation_id", sa.String(length=32), nullable=True))
    op.execute(sa.text(f"UPDATE {table} SET organisation_id = :owner").bindparams(owner=default_id))
    with op.batch_alter_table(table) as batch:
        batch.alter_column("organisation_id", existing_type=sa.String(length=32), nullable=False)
        batch.create_index(f"ix_{table}_organisation_id", ["organisation_id"], unique=False)
        batch.create_foreign_key(
            f"fk_{table}_organisation_id_organisations", "organisations", ["organisation_id"], ["id"]
        )


def _add_audit_owner(default_id: str) -> None:
    op.add_column(
        "prediction_audit",
        sa.Column("organisation_id", sa.String(length=32), nullable=False, server_default=default_id),
    )
    if op.get_bind().dialect.name != "sqlite":
        # The default filled the existing rows; new rows always name their organisation. (SQLite
        # cannot drop a default without rebuilding the table, so there it stays.)
        op.alter_column("prediction_audit", "organisation_id", server_default=None)
    op.create_index(
        op.f("ix_prediction_audit_organisation_id"), "prediction_audit", ["organisation_id"], unique=False
    )
