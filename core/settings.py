"""Service settings: one `Settings` object read from the environment.

`DATABASE_URL` and `CELERY_BROKER_URL` keep their conventional names (docker-compose and hosting
platforms set them); everything else has the `NOTETUNE_` prefix. With neither URL set the service
runs embedded: SQLite and Kombu's SQLAlchemy transport in the data directory, no servers needed.

Reading the settings loads no ML code: a setting whose default belongs to `ml` (the base model, the
token limit) is `None` when unset, and the service that uses it asks `ml` for the default.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOTETUNE_", extra="ignore", env_ignore_empty=True)

    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "NOTETUNE_DATABASE_URL")
    )
    broker_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("CELERY_BROKER_URL", "NOTETUNE_BROKER_URL")
    )
    data_dir: Path = Path("data")
    model_store_dir: Path | None = None
    # Where datasets, evaluation arrays and models are kept (models_store/): unset, the data directory
    # (and model_store_dir); `s3://bucket/prefix`, an S3-compatible bucket that API replicas and
    # workers on several hosts share. Credentials come from the standard AWS variables or roles.
    store_url: str | None = None
    s3_endpoint_url: str | None = None  # a self-hosted server: http://seaweedfs:8333
    # Server-side encryption of every object written ("AES256" or "aws:kms"), and the KMS key.
    store_server_side_encryption: str | None = None
    store_kms_key_id: str | None = None
    # Each S3 call gives up after this long without an answer, tried at most store_max_attempts times:
    # a /predict for an uncached model answers 503 in bounded time when the store is down.
    store_timeout_s: float = Field(default=10.0, gt=0)
    store_max_attempts: int = Field(default=3, ge=1, le=10)
    # The local cache of objects fetched from the bucket, per host (least recently used out).
    store_cache_bytes: int = Field(default=20 * 1024**3, ge=1024 * 1024)
    # Unset: the packaged MiniLM (core.services.models.configured_base_model).
    base_model: str | None = None
    # Names a request may pass as `base_model`; the configured base model is always allowed.
    allowed_base_models: list[str] = Field(default_factory=list)

    queue_name: str = "notetune"
    job_soft_time_limit_s: int = Field(default=6 * 3600, ge=10)
    job_hard_time_limit_s: int = Field(default=6 * 3600 + 300, ge=20)
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    stale_after_s: float = Field(default=120.0, gt=0)
    reaper_interval_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # A job still queued this long after its last change may have lost its message (a failed send, a
    # broker restart): it is sent again. A duplicate is harmless, as only one delivery can claim it.
    resend_queued_after_s: float = Field(default=30 * 60.0, gt=0)

    model_cache_size: int = Field(default=4, ge=1)
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    # Unset: ml.vocabulary.DEFAULT_MAX_LENGTH (core.services.datasets.token_limit).
    dataset_max_length: int | None = Field(default=None, ge=8, le=512)
    max_predict_texts: int = Field(default=64, ge=1)
    max_text_chars: int = Field(default=20_000, ge=1)
    page_size_limit: int = Field(default=200, ge=1)
    # /healthz answers from the last check, run this often in a thread of its own.
    health_interval_s: float = Field(default=2.0, gt=0)
    # Also serve /healthz on this port from a thread outside the event loop (api/health_port.py), so a
    # load balancer's probe never waits behind a flood of requests; None: the main port only.
    health_port: int | None = Field(default=None, ge=1, le=65535)
    health_host: str = "127.0.0.1"
    # Request bodies are counted as they stream in (chunked ones too) and refused with 413 past the
    # limit of their route; a body is read only once the key has been checked (api/limits.py).
    max_json_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Unset: derived from max_predict_texts and max_text_chars (Settings.predict_body_limit).
    max_predict_body_bytes: int | None = Field(default=None, ge=1024)
    # The shape of data, checked before the work: rows per uploaded file; sentences and tokens per note
    # under sentence pooling (each sentence is a model input); rows x bootstrap resamples per evaluation.
    # Characters per note, in uploads and /predict alike, are max_text_chars.
    max_upload_rows: int = Field(default=100_000, ge=1)
    max_note_sentences: int = Field(default=1_000, ge=1)
    max_note_tokens: int = Field(default=16_384, ge=1)
    max_evaluation_cells: int = Field(default=50_000_000, ge=1)

    # Notes files are deleted this many days after the last job that read them finished (models and
    # metrics stay); None keeps them until a dataset is deleted.
    dataset_retention_days: int | None = Field(default=None, ge=1)

    # The web pages' sessions: a signed cookie. Without a secret each API process signs with a random
    # one, so sessions end on restart and are not shared between processes.
    ui_session_secret: SecretStr | None = None
    ui_session_max_age_s: int = Field(default=8 * 3600, ge=60)
    ui_https_only: bool = False

    # The operator's bearer token for GET /metrics (which counts every organisation's jobs); unset, the
    # metrics are off.
    metrics_token: SecretStr | None = None

    # Serving /predict: the micro-batcher of the API process (ml/serving.py says the trade-offs).
    # More notes per pass and a longer wait raise throughput under load and add latency at low load;
    # the token budget bounds one pass's memory; a full queue answers 503 with Retry-After.
    predict_batching: bool = True
    predict_max_batch_notes: int = Field(default=32, ge=1, le=4096)
    predict_max_batch_tokens: int = Field(default=16_384, ge=64)
    predict_max_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    predict_max_queued_notes: int = Field(default=1024, ge=1)

    # Sharing between organisations (docs/limits.md). One organisation may hold this many notes of the
    # prediction queue (its share; over it, 429), and the queue serves organisations in turn.
    predict_max_queued_notes_per_organisation: int = Field(default=256, ge=1)
    # While several organisations wait for predictions, a forward pass is cut at about this much
    # estimated work, so no one waits behind a long pass of another's notes (0: never cut).
    predict_contended_pass_ms: float = Field(default=50.0, ge=0)
    # Each API key may score this many notes a second on average, in bursts of up to the burst size
    # (a token bucket per key and API process; 0 turns it off). Over it: 429 with Retry-After.
    predict_notes_per_second_per_key: float = Field(default=100.0, ge=0)
    predict_burst_notes_per_key: int = Field(default=256, ge=1)
    # Jobs an organisation may have queued or running at once; one more is a 429.
    max_active_jobs_per_organisation: int = Field(default=20, ge=1)
    # Bytes of notes files an organisation may keep (its live datasets); an upload past it is a 413.
    max_stored_bytes_per_organisation: int = Field(default=10 * 1024**3, ge=1024)
    # Failed authentications (wrong or revoked key, failed sign-in) one client address may make in a
    # minute; past it, its requests that carry a key or sign in get 429 until the minute is over.
    auth_failures_per_minute: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _limits_are_consistent(self) -> Settings:
        if self.store_url is not None and not self.store_url.startswith("s3://"):
            raise ValueError("NOTETUNE_STORE_URL must look like s3://bucket/prefix (unset: the data dir)")
        if self.job_hard_time_limit_s <= self.job_soft_time_limit_s:
            raise ValueError("NOTETUNE_JOB_HARD_TIME_LIMIT_S must be larger than the soft limit")
        if self.stale_after_s <= self.heartbeat_interval_s * 2:
            raise ValueError("NOTETUNE_STALE_AFTER_S must be more than twice the heartbeat interval")
        return self

    @property
    def predict_body_limit(self) -> int:
        """Bytes of a /predict body: room for the most notes at their longest, every character written
        as a six-byte JSON escape (\\uXXXX), plus the other fields."""
        if self.max_predict_body_bytes is not None:
            return self.max_predict_body_bytes
        return self.max_predict_texts * (6 * self.max_text_chars + 16) + 64 * 1024

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'notetune.sqlite3').resolve()}"

    @property
    def celery_broker_url(self) -> str:
        if self.broker_url is not None:
            return self.broker_url.get_secret_value()
        return f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite3').resolve()}"

    @property
    def models_root(self) -> Path:
        return (self.model_store_dir or self.data_dir / "models").resolve()

    @property
    def datasets_root(self) -> Path:
        return (self.data_dir / "datasets").resolve()

    @property
    def evaluations_root(self) -> Path:
        return (self.data_dir / "evaluations").resolve()

    @property
    def broker_visibility_timeout_s(self) -> int:
        # Redis redelivers an unacknowledged message after this long: it must outlive the longest job,
        # or a healthy long run would be handed to a second worker.
        return self.job_hard_time_limit_s + 600

    @property
    def uses_object_store(self) -> bool:
        return self.store_url is not None

    def ensure_directories(self) -> None:
        """Create the data directory, owner-only, and make everything this process writes from now
        on owner-only too (umask 077): notes, models, the database and the caches are patients' data,
        and no other local account may read them."""
        os.umask(0o077)
        for directory in (self.data_dir, self.models_root, self.datasets_root, self.evaluations_root):
            Path(directory).mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)

    # Faults and the audit trail. The HMAC key of the audit trail's note digests; unset: a random
    # key made once in the data directory (audit.key, mode 0600), shared by every process using it.
    audit_key: SecretStr | None = None
    # Temporary and orphaned files (partial uploads, evaluation arrays, model writes) older than this
    # are swept by the workers, every sweep_interval_s.
    temp_max_age_s: float = Field(default=3600.0, gt=0)
    sweep_interval_s: float = Field(default=300.0, gt=0)
