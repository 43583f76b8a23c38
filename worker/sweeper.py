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
from pathlib import Path

import sqlalchemy as sa

from core.db.models import JobStatus
from core.db.repositories import JobRunRepository, StoredFileRepository
from core.services.deletion import remove_pending_files
from core.services.retention import apply_retention, retention_days
from models_store.store import check_model_id, parse_attempt
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
    retained_datasets: int = 0

    def total(self) -> int:
        return sum(vars(self).values())


def sweep(runtime: WorkerRuntime) -> SweepResult:
    settings = runtime.settings
    result = SweepResult()
    result.retained_datasets = apply_dataset_retention(runtime)
    result.journalled_files = finish_pending_deletions(runtime)
    result.attempt_dirs = sweep_attempt_dirs(runtime)
    result.orphan_models = sweep_orphan_models(runtime)
    result.partial_models = runtime.sweep_partial_models()
    result.data_files = sweep_data_files(runtime, settings.temp_max_age_s)
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
    """Attempt directories (and partial writes) of attempts that no longer hold their job."""
    paths = runtime.store.attempt_dirs()
    parsed = {path: parse_attempt(path.name) for path in paths}
    with runtime.database.session() as session:
        owners = JobRunRepository(session).owners_of_model_ids(sorted({p[0] for p in parsed.values() if p}))
    removed = 0
    for path, (model_id, attempt) in ((path, value) for path, value in parsed.items() if value):
        owner = owners.get(model_id)
        if owner is not None and owner[0] == JobStatus.running and owner[1] == attempt:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def sweep_orphan_models(runtime: WorkerRuntime) -> int:
    """Model directories published by a success whose commit never landed: no model row, job ended.
    Directories no job names are left alone (models copied in by hand, or by the CLI)."""
    root = runtime.store.root
    if not root.is_dir():
        return 0
    names = [path.name for path in root.iterdir() if path.is_dir() and _is_model_id(path.name)]
    with runtime.database.session() as session:
        owners = JobRunRepository(session).owners_of_model_ids(names)
    removed = 0
    for name, (status, _attempt, has_row) in owners.items():
        if not has_row and status != JobStatus.running:
            shutil.rmtree(root / name, ignore_errors=True)
            removed += 1
    return removed


def sweep_data_files(runtime: WorkerRuntime, older_than_s: float) -> int:
    """Dataset and evaluation files that no row names (a crash between the write and the commit),
    and temporary files left by a crash mid-write."""
    settings = runtime.settings
    with runtime.database.session() as session:
        named = StoredFileRepository(session).named_data_paths()
    data_root = settings.data_dir.resolve()
    cutoff = time.time() - older_than_s
    removed = 0
    for folder in (settings.datasets_root, settings.evaluations_root):
        if not folder.is_dir():
            continue
        # Dataset files live in a folder per organisation (older ones directly in datasets/).
        for path in folder.rglob("*"):
            if not path.is_file() or path.stat().st_mtime > cutoff:
                continue
            if _relative(path, data_root) not in named:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


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


def _is_model_id(name: str) -> bool:
    try:
        check_model_id(name)
    except Exception:
        return False
    return True


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return path.name
