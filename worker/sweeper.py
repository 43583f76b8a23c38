"""Leftovers of crashed or stale runs and requests, removed by the workers from time to time, and
the file removals that deletions and retention leave to it.

What counts as garbage is decided from the database: an attempt's model directory is kept while its
attempt holds the job; a model directory without a model row, once its job has ended; a dataset or
evaluation file without a row (or a temporary one) once it is older than `temp_max_age_s`, which
no upload or evaluation in progress can be. Files in the deletion journal (a deletion's, or one a
crash interrupted) go at every sweep, as do notes files past the retention period.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass

import sqlalchemy as sa

from core.db.models import JobStatus
from core.db.repositories import JobRunRepository, StoredFileRepository
from core.services.deletion import forget_erased_copies, remove_pending_files
from core.services.retention import apply_retention, retention_days
from models_store.artifacts import model_id_of
from worker.runtime import WorkerRuntime

log = logging.getLogger("notetune.worker.sweeper")


@dataclass
class SweepResult:
    attempt_dirs: int = 0
    orphan_models: int = 0
    partial_models: int = 0
    data_files: int = 0
    broker_messages: int = 0
    journalled_files: int = 0
    cached_copies: int = 0
    # Reported, not removed: rows whose objects the store does not hold (a lost volume or bucket).
    rows_without_objects: int = 0
    retained_datasets: int = 0

    def total(self) -> int:
        """What was removed (the report of rows without objects is logged on its own)."""
        return sum(value for name, value in vars(self).items() if name != "rows_without_objects")


def sweep(runtime: WorkerRuntime) -> SweepResult:
    settings = runtime.settings
    result = SweepResult()
    result.retained_datasets = apply_dataset_retention(runtime)
    result.journalled_files = finish_pending_deletions(runtime)
    with runtime.database.session() as session:
        result.cached_copies = forget_erased_copies(session, settings)
    result.attempt_dirs = sweep_attempt_dirs(runtime)
    result.orphan_models = sweep_orphan_models(runtime)
    result.partial_models = runtime.sweep_partial_models()
    result.data_files = sweep_data_files(runtime, settings.temp_max_age_s)
    result.rows_without_objects = report_rows_without_objects(runtime)
    if settings.celery_broker_url.startswith("sqla+"):
        result.broker_messages = delete_delivered_messages(settings.celery_broker_url)
    if result.total():
        log.info("swept leftovers: %s", result)
    return result


def apply_dataset_retention(runtime: WorkerRuntime) -> int:
    """Journal the notes files past the retention period (their removal follows in this sweep)."""
    with runtime.database.transaction() as session:
        return len(apply_retention(session, retention_days(runtime.settings)))


def finish_pending_deletions(runtime: WorkerRuntime) -> int:
    """Remove the files of committed deletions that no one removed yet (a crash, a lost request)."""
    with runtime.database.session() as session:
        return remove_pending_files(session, runtime.settings)


def sweep_attempt_dirs(runtime: WorkerRuntime) -> int:
    """This host's attempt directories (and partial writes) of attempts that no longer hold their job."""
    attempts = runtime.store.local_attempts()
    with runtime.database.session() as session:
        owners = JobRunRepository(session).owners_of_model_ids(sorted({model for _, model, _ in attempts}))
    removed = 0
    for path, model_id, attempt in attempts:
        owner = owners.get(model_id)
        if owner is not None and owner[0] == JobStatus.running and owner[1] == attempt:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def sweep_orphan_models(runtime: WorkerRuntime) -> int:
    """Stored models that no row names and never will: a success whose commit never landed, or an
    upload cut short, once their job has ended. Keys of running jobs stay (an attempt may be about to
    commit), and so do keys no job names (models copied in by hand, or by the CLI)."""
    keys = runtime.store.model_keys()
    with runtime.database.session() as session:
        owners = JobRunRepository(session).owners_of_model_ids(sorted({model_id_of(key) for key in keys}))
    removed = 0
    for key in keys:
        owner = owners.get(model_id_of(key))
        if owner is None or owner[0] == JobStatus.running or owner[2] == key:
            continue
        runtime.store.remove_model_key(key)
        removed += 1
    return removed


def sweep_data_files(runtime: WorkerRuntime, older_than_s: float) -> int:
    """Dataset and evaluation files that no row names (a crash between the write and the commit),
    and temporary files left by a crash mid-write."""
    with runtime.database.session() as session:
        named = StoredFileRepository(session).named_data_paths()
    cutoff = time.time() - older_than_s
    removed = 0
    for stored in runtime.store.list_files():
        if stored.modified <= cutoff and stored.key not in named:
            runtime.store.delete_file(stored.key)
            removed += 1
    return removed


def report_rows_without_objects(runtime: WorkerRuntime) -> int:
    """Live rows that name objects the store does not hold: logged with their keys (ids, never
    content) for the operator, since only a backup can bring them back. /predict answers 503 for
    such a model, and a job that needs such a file fails naming it."""
    with runtime.database.session() as session:
        files = StoredFileRepository(session)
        model_paths, data_paths = files.named_model_paths(), files.named_data_paths()
    missing = sorted(model_paths - set(runtime.store.model_keys()))
    missing += sorted(data_paths - {stored.key for stored in runtime.store.list_files()})
    if missing:
        log.warning(
            "%d stored object(s) named by rows are missing from the store: %s", len(missing), missing[:20]
        )
    return len(missing)


def delete_delivered_messages(broker_url: str) -> int:
    """Kombu's SQLAlchemy transport marks a delivered message invisible and never deletes it, so the
    embedded broker file grows with every job. A delivered message is never read again (an
    unacknowledged one is re-sent as a new row when its channel closes), so it can go."""
    engine = sa.create_engine(broker_url.removeprefix("sqla+"), connect_args={"timeout": 30})
    try:
        with engine.begin() as connection:
            if not sa.inspect(connection).has_table("kombu_message"):
                return 0
            result = connection.execute(
                sa.text("DELETE FROM kombu_message WHERE visible = :delivered"), {"delivered": False}
            )
            return result.rowcount or 0
    finally:
        engine.dispose()
