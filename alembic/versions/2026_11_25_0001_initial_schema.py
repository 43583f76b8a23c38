"""Initial schema: api_keys, datasets, jobs, job_events, models (lineage), evaluations,
prediction_audit (append-only), worker_heartbeats.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 04:27:37
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations carry their own copy of column types: they must not change when the models do.
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

# The audit trail must not be edited, even by the application's own database user.
APPEND_ONLY_POSTGRESQL = [
    """
    CREATE FUNCTION prediction_audit_append_only() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION 'prediction_audit is append-only';
    END;
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER prediction_audit_no_update_delete BEFORE UPDATE OR DELETE ON prediction_audit
    FOR EACH ROW EXECUTE FUNCTION prediction_audit_append_only()
    """,
]
APPEND_ONLY_SQLITE = [
    """
    CREATE TRIGGER prediction_audit_no_update BEFORE UPDATE ON prediction_audit
    BEGIN SELECT RAISE(ABORT, 'prediction_audit is append-only'); END
    """,
    """
    CREATE TRIGGER prediction_audit_no_delete BEFORE DELETE ON prediction_audit
    BEGIN SELECT RAISE(ABORT, 'prediction_audit is append-only'); END
    """,
]


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "role",
            sa.Enum("admin", "trainer", "predictor", name="role", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "datasets",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("class_counts", JSON_TYPE, nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("truncated_at_max_length", sa.Integer(), nullable=False),
        sa.Column("summary", JSON_TYPE, nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("sha256", name=op.f("uq_datasets_sha256")),
    )
    op.create_table(
        "worker_heartbeats",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_worker_heartbeats")),
    )
    op.create_table(
        "jobs",
        sa.Column(
            "kind",
            sa.Enum("finetune", "evaluate", name="job_kind", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "queued",
                "running",
                "succeeded",
                "failed",
                "cancelled",
                name="job_status",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("api_key_id", sa.String(length=32), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("method", sa.String(length=16), nullable=True),
        sa.Column("stage", sa.Integer(), nullable=True),
        sa.Column("base_model", sa.String(length=500), nullable=True),
        sa.Column("train_dataset_id", sa.String(length=32), nullable=True),
        sa.Column("parent_model_id", sa.String(length=32), nullable=True),
        sa.Column("hyperparameters", JSON_TYPE, nullable=False),
        sa.Column("output_model_id", sa.String(length=32), nullable=True),
        sa.Column("test_dataset_id", sa.String(length=32), nullable=True),
        sa.Column("evaluation_models", JSON_TYPE, nullable=True),
        sa.Column("evaluation_options", JSON_TYPE, nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("progress", JSON_TYPE, nullable=True),
        sa.Column("metrics", JSON_TYPE, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name=op.f("fk_jobs_api_key_id_api_keys")),
        sa.ForeignKeyConstraint(
            ["test_dataset_id"], ["datasets.id"], name=op.f("fk_jobs_test_dataset_id_datasets")
        ),
        sa.ForeignKeyConstraint(
            ["train_dataset_id"], ["datasets.id"], name=op.f("fk_jobs_train_dataset_id_datasets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("api_key_id", "idempotency_key", name="uq_jobs_api_key_id_idempotency_key"),
        sa.UniqueConstraint("output_model_id", name=op.f("uq_jobs_output_model_id")),
    )
    op.create_index("ix_jobs_status_kind", "jobs", ["status", "kind"], unique=False)
    op.create_table(
        "prediction_audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("api_key_id", sa.String(length=32), nullable=True),
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("note_sha256", sa.String(length=64), nullable=False),
        sa.Column("output", JSON_TYPE, nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_prediction_audit_api_key_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction_audit")),
    )
    op.create_index(op.f("ix_prediction_audit_created_at"), "prediction_audit", ["created_at"], unique=False)
    op.create_index(op.f("ix_prediction_audit_model_id"), "prediction_audit", ["model_id"], unique=False)
    _create_append_only_triggers()
    op.create_table(
        "evaluations",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("test_dataset_id", sa.String(length=32), nullable=False),
        sa.Column("report", JSON_TYPE, nullable=False),
        sa.Column("arrays_path", sa.String(length=500), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_evaluations_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["test_dataset_id"], ["datasets.id"], name=op.f("fk_evaluations_test_dataset_id_datasets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
        sa.UniqueConstraint("job_id", name=op.f("uq_evaluations_job_id")),
    )
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("data", JSON_TYPE, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_events_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    op.create_index(op.f("ix_job_events_job_id"), "job_events", ["job_id"], unique=False)
    op.create_table(
        "models",
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("parent_id", sa.String(length=32), nullable=True),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("base_model", sa.String(length=500), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("train_dataset_id", sa.String(length=32), nullable=True),
        sa.Column("hyperparameters", JSON_TYPE, nullable=False),
        sa.Column("data_summary", JSON_TYPE, nullable=False),
        sa.Column("metrics", JSON_TYPE, nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("temperature", sa.Float(), nullable=True),
        sa.Column("manifest", JSON_TYPE, nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_models_job_id_jobs")),
        sa.ForeignKeyConstraint(["parent_id"], ["models.id"], name=op.f("fk_models_parent_id_models")),
        sa.ForeignKeyConstraint(
            ["train_dataset_id"], ["datasets.id"], name=op.f("fk_models_train_dataset_id_datasets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("job_id", name=op.f("uq_models_job_id")),
    )
    op.create_index(op.f("ix_models_parent_id"), "models", ["parent_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_models_parent_id"), table_name="models")
    op.drop_table("models")
    op.drop_index(op.f("ix_job_events_job_id"), table_name="job_events")
    op.drop_table("job_events")
    op.drop_table("evaluations")
    _drop_append_only_triggers()
    op.drop_index(op.f("ix_prediction_audit_model_id"), table_name="prediction_audit")
    op.drop_index(op.f("ix_prediction_audit_created_at"), table_name="prediction_audit")
    op.drop_table("prediction_audit")
    op.drop_index("ix_jobs_status_kind", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("worker_heartbeats")
    op.drop_table("datasets")
    op.drop_table("api_keys")


def _create_append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    statements = {"postgresql": APPEND_ONLY_POSTGRESQL, "sqlite": APPEND_ONLY_SQLITE}.get(dialect, [])
    for statement in statements:
        op.execute(statement)


def _drop_append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS prediction_audit_no_update_delete ON prediction_audit")
        op.execute("DROP FUNCTION IF EXISTS prediction_audit_append_only()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS prediction_audit_no_update")
        op.execute("DROP TRIGGER IF EXISTS prediction_audit_no_delete")
