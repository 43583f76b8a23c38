"""Deleting an organisation's datasets, models and evaluations, crash-safe.

A deletion is one transaction that turns the rows into tombstones (the id and `deleted_at` stay, so
every reference and every lineage still resolves; the content goes) and writes one
`pending_file_deletions` entry per file. Only after that commit are the files removed, and then their
entries. A crash before the commit leaves the object whole; a crash after it leaves entries that the
worker's sweeper finishes (remove_pending_files). No row ever names a missing file, and no file is
left that neither a row nor the journal accounts for.

What a deletion refuses (409, naming the caller's own objects only), unless `cascade`:
- a model that other models were fine-tuned from: with cascade, they go too (all descendants);
- a dataset or model that a queued or running job reads: with cascade, the jobs are cancelled.
Models learnt from a deleted dataset's notes (trained on it, and the models fine-tuned from those)
stay unless the caller asks for them to go (`delete_models`): their weights are statistics of the
notes, and since baseline format 2 nothing in a model directory is text of them (ml/baseline.py).
Either way the deletion names them. Evaluations that used a deleted dataset or model stay: they are
results, not notes, and name the tombstone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import FileKind, Job, PendingFileDeletion
from core.db.repositories import (
    DatasetRepository,
    EvaluationRepository,
    JobRepository,
    ModelRepository,
    StoredFileRepository,
)
from core.db.session import checkpoint_sqlite
from core.errors import Conflict, NotFound
from core.services.jobs import request_cancel
from core.settings import Settings
from core.storage import artifact_store
from models_store.artifacts import ArtifactStore, model_id_of
from models_store.errors import StoreError

log = logging.getLogger("notetune.deletion")


@dataclass
class Deletion:
    """What one deletion removed (ids of the caller's organisation)."""

    datasets: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    evaluations: list[str] = field(default_factory=list)
    cancelled_jobs: list[str] = field(default_factory=list)
    # Models learnt from a deleted dataset's notes that were not deleted with it: the caller is told.
    kept_models: list[str] = field(default_factory=list)

    def add(self, other: Deletion) -> None:
        self.models += [model for model in other.models if model not in self.models]
        self.cancelled_jobs += [job for job in other.cancelled_jobs if job not in self.cancelled_jobs]


def delete_dataset(
    session: Session,
    dataset_id: str,
    *,
    organisation_id: str,
    cascade: bool = False,
    delete_models: bool = False,
) -> Deletion:
    datasets = DatasetRepository(session, organisation_id)
    dataset = datasets.get_for_update(dataset_id)
    if dataset is None:
        raise NotFound.for_id("dataset", dataset_id)
    models = ModelRepository(session, organisation_id)
    learnt = models.learnt_from(dataset.id)
    jobs = JobRepository(session, organisation_id)
    readers = jobs.active_reading(dataset_ids=[dataset.id], model_ids=learnt if delete_models else [])
    if readers and not cascade:
        raise _in_use("dataset", "queued or running jobs read it or the models to delete", jobs=readers)
    deletion = Deletion(cancelled_jobs=_cancel(session, readers))
    now = utcnow()
    if dataset.file_deleted_at is None:
        StoredFileRepository(session).journal(FileKind.data, [dataset.path], now)
    deletion.datasets = datasets.set_deleted([dataset.id], now)
    for model_id in models.trained_on(dataset.id) if delete_models else []:
        if model_id not in deletion.models:  # already gone as a descendant of another
            deletion.add(delete_model(session, model_id, organisation_id=organisation_id, cascade=True))
    deletion.kept_models = [model for model in learnt if model not in deletion.models]
    return deletion


def delete_model(session: Session, model_id: str, *, organisation_id: str, cascade: bool = False) -> Deletion:
    models = ModelRepository(session, organisation_id)
    model = models.get_for_update(model_id)
    if model is None:
        raise NotFound.for_id("model", model_id)
    descendants = models.descendants([model.id])
    doomed = [model.id, *descendants]
    readers = JobRepository(session, organisation_id).active_reading(model_ids=doomed)
    if (descendants or readers) and not cascade:
        raise _in_use(
            "model", "models were fine-tuned from it, or queued or running jobs read it", descendants, readers
        )
    deletion = Deletion(cancelled_jobs=_cancel(session, readers))
    now = utcnow()
    paths = [row.path for row in models.all_for_update(doomed)]
    StoredFileRepository(session).journal(FileKind.model, paths, now)
    # Children first: a tombstone never has a live child (a lineage reads the same either way).
    deletion.models = models.set_deleted(list(reversed(doomed)), now)
    JobRepository(session, organisation_id).forget_words(model_ids=doomed)
    return deletion


def delete_evaluation(session: Session, evaluation_id: str, *, organisation_id: str) -> Deletion:
    evaluations = EvaluationRepository(session, organisation_id)
    evaluation = evaluations.get_for_update(evaluation_id)
    if evaluation is None:
        raise NotFound.for_id("evaluation", evaluation_id)
    now = utcnow()
    StoredFileRepository(session).journal(FileKind.data, [evaluation.arrays_path], now)
    JobRepository(session, organisation_id).forget_words(job_ids=[evaluation.job_id])
    return Deletion(evaluations=evaluations.set_deleted([evaluation.id], now))


def _in_use(what: str, why: str, models: list[str] | None = None, jobs: list[Job] | None = None) -> Conflict:
    return Conflict(
        f"the {what} is in use ({why}); delete or cancel those first, or pass cascade=true",
        code=f"{what}_in_use",
        details={"models": models or [], "jobs": [job.id for job in jobs or []]},
    )


def _cancel(session: Session, jobs: list[Job]) -> list[str]:
    return [job.id for job in jobs if request_cancel(session, job) is not None]


def commit_and_remove_files(session: Session, settings: Settings) -> None:
    """Commit the deletion, then remove the files it journalled (and any a crash left behind)."""
    session.commit()
    checkpoint_sqlite(session)
    remove_pending_files(session, settings)


def forget_erased_copies(session: Session, settings: Settings) -> int:
    """This host's cached copies of deleted models, notes and arrays go too (a deletion on one host
    removes the objects in the store and that host's copy; every other host runs this from time to
    time: the worker's sweeper, the API's own timer)."""
    files = StoredFileRepository(session)
    return artifact_store(settings).forget_local_copies(files.named_model_paths(), files.named_data_paths())


def remove_pending_files(session: Session, settings: Settings) -> int:
    """Remove the files in the deletion journal, then their entries (committed): safe to repeat and
    to run beside another remover, as a file already gone counts as removed."""
    files, store = StoredFileRepository(session), artifact_store(settings)
    entries = list(files.pending())
    removed = [entry.id for entry in entries if _remove(store, entry)]
    files.done(removed)
    session.commit()
    if len(removed) < len(entries):
        log.warning(
            "%d journalled file(s) could not be removed; the next sweep tries again",
            len(entries) - len(removed),
        )
    return len(removed)


def _remove(store: ArtifactStore, entry: PendingFileDeletion) -> bool:
    """True once nothing is left of the entry's file (a model: every attempt's files, every copy)."""
    try:
        if entry.kind == FileKind.model:
            return store.remove_model(model_id_of(entry.path))
        return store.delete_file(entry.path)
    except StoreError as error:  # the store is down: the entry stays for the next sweep
        log.warning("could not remove a journalled file (%s)", error.code)
        return False
