"""ORM models: the database schema in one place. API schemas live in api/schemas, separately."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db.base import Base, CreatedAtMixin, IdMixin, JSONType, UTCDateTime, utcnow


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class JobKind(enum.StrEnum):
    finetune = "finetune"
    evaluate = "evaluate"


class Role(enum.StrEnum):
    admin = "admin"
    trainer = "trainer"
    predictor = "predictor"


def _enum(enum_class: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings (VARCHAR(16), no database enum type) with a CHECK constraint naming the
    # allowed values (migration 0002): a row written by hand or by an older release cannot hold a
    # value the code does not know. Adding a value needs a migration that replaces the constraint.
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda e: [m.value for m in e],
    )


class Organisation(IdMixin, CreatedAtMixin, Base):
    """A tenant (a hospital, or a department that must not see another's patients): every key and
    every object belongs to one, and a key only ever sees its own organisation's objects."""

    __tablename__ = "organisations"

    name: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)


# The organisation the migration to organisations moved every existing row into.
DEFAULT_ORGANISATION = "default"


def _owner() -> Mapped[str]:
    return mapped_column(String(32), ForeignKey("organisations.id"), nullable=False, index=True)


class ApiKey(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "api_keys"

    organisation_id: Mapped[str] = _owner()
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    role: Mapped[Role] = mapped_column(_enum(Role, "role"), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class UiSession(CreatedAtMixin, Base):
    """A signed-in browser: the cookie holds a random token, this row its SHA-256. Signing out ends
    the row, so a copy of the cookie taken before is worth nothing."""

    __tablename__ = "ui_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), ForeignKey("api_keys.id"), nullable=False, index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Dataset(IdMixin, CreatedAtMixin, Base):
    """A deleted dataset stays as a tombstone (`deleted_at`, its content columns cleared) so the jobs,
    models and evaluations that name it keep a valid reference; its file goes (pending_file_deletions).
    Retention removes only the file (`file_deleted_at`): the row and its summary stay."""

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("organisation_id", "sha256", name="uq_datasets_organisation_id_sha256"),
    )

    organisation_id: Mapped[str] = _owner()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    # Unique within an organisation only; None on a tombstone, so the same bytes can be uploaded again.
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Relative to the data directory: the API and the workers may mount it at different places.
    path: Mapped[str] = mapped_column(String(500), nullable=False)
    size_bytes: Mapped[int] = mapped_column(Integer, nullable=False)
    rows: Mapped[int] = mapped_column(Integer, nullable=False)
    class_counts: Mapped[dict[str, int]] = mapped_column(JSONType, nullable=False)
    duplicates: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    truncated_at_max_length: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # When the notes file was removed (a deletion, or the retention period); the row says why.
    file_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Job(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("api_key_id", "idempotency_key", name="uq_jobs_api_key_id_idempotency_key"),
        Index("ix_jobs_status_kind", "status", "kind"),
    )

    organisation_id: Mapped[str] = _owner()
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, "job_kind"), nullable=False)
    status: Mapped[JobStatus] = mapped_column(
        _enum(JobStatus, "job_status"), nullable=False, default=JobStatus.queued
    )
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)

    # Fine-tune inputs.
    method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    stage: Mapped[int | None] = mapped_column(Integer, nullable=True)
    base_model: Mapped[str | None] = mapped_column(String(500), nullable=True)
    train_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), nullable=True)
    # No foreign key: a job may name a parent whose model row does not exist yet (rejected at request time).
    parent_model_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    # A fine-tune's whole configuration, resolved once at submit (core.services.jobs.resolve_run_config).
    run_config: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # Chosen when the job is created, so every attempt writes (and cleans up) the same store entry.
    output_model_id: Mapped[str | None] = mapped_column(String(32), nullable=True, unique=True)

    # Evaluation inputs: the models compared, in order (None = the untrained base model).
    test_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), nullable=True)
    evaluation_models: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, nullable=True)
    evaluation_options: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)

    # Execution state.
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow
    )


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)


class Model(IdMixin, CreatedAtMixin, Base):
    """A deleted model stays as a tombstone (`deleted_at`; method, stage and lineage kept, the rest
    cleared) so the lineage of what remains never names a missing row; its files go."""

    __tablename__ = "models"

    organisation_id: Mapped[str] = _owner()
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), nullable=False, unique=True)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"), nullable=True, index=True)
    method: Mapped[str] = mapped_column(String(16), nullable=False)
    stage: Mapped[int] = mapped_column(Integer, nullable=False)
    base_model: Mapped[str] = mapped_column(String(500), nullable=False)
    # Relative to the model store root.
    path: Mapped[str] = mapped_column(String(500), nullable=False)
    train_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    data_summary: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    threshold: Mapped[float] = mapped_column(Float, nullable=False)
    temperature: Mapped[float | None] = mapped_column(Float, nullable=True)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Evaluation(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "evaluations"

    organisation_id: Mapped[str] = _owner()
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), nullable=False, unique=True)
    test_dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), nullable=False)
    report: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    # Relative to the data directory: y_true and each model's probabilities (numpy .npz) for plots.
    arrays_path: Mapped[str] = mapped_column(String(500), nullable=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PredictionAudit(Base):
    """Append-only (database triggers refuse UPDATE, DELETE and, on PostgreSQL, TRUNCATE). Never holds
    the note text: `note_sha256` is an HMAC-SHA256 of it with the server's audit key
    (core.services.audit.note_digest), so a short note cannot be guessed from its digest."""

    __tablename__ = "prediction_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False, index=True)
    # No foreign key: nothing may ever cascade into this table (organisations are never deleted).
    organisation_id: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    model_id: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    note_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    output: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)


class FileKind(enum.StrEnum):
    data = "data"  # relative to the data directory (Settings.stored_file)
    model = "model"  # relative to the model store root (Settings.stored_model)


class PendingFileDeletion(Base):
    """A journal of files whose rows are already gone (tombstoned) in a committed transaction: written
    in that transaction, removed once the file is. A crash in between leaves the entry, and the
    sweeper finishes it, so no file is left that nothing accounts for."""

    __tablename__ = "pending_file_deletions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[FileKind] = mapped_column(_enum(FileKind, "file_kind"), nullable=False)
    path: Mapped[str] = mapped_column(String(500), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class WorkerHeartbeat(Base):
    """One row per worker process: /healthz reports a live worker from it, on every broker."""

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
