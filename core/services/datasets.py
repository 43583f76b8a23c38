"""Dataset uploads: validated before anything is stored, kept once per content hash in each
organisation (another organisation's copy of the same file is a dataset of its own)."""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.base import new_id, utcnow
from core.db.models import Dataset
from core.db.repositories import DatasetRepository, Page
from core.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from core.services.models import configured_base_model
from core.settings import Settings
from core.storage import artifact_store
from ml.vocabulary import DEFAULT_MAX_LENGTH

if TYPE_CHECKING:
    from ml.data import NoteLimits

DATASETS_SUBDIR = "datasets"
# Control characters, unpaired surrogates and invisible format characters (bidi overrides that make
# "report\u202evsc.exe" read as "reportexe.csv", zero-width spaces): dropped from a file name.
_UNPRINTABLE = frozenset({"Cc", "Cs", "Cf"})


def register_dataset(
    session: Session, settings: Settings, content: bytes, filename: str | None, *, organisation_id: str
) -> tuple[Dataset, bool]:
    """Returns (dataset, created). The same bytes uploaded twice to one organisation give the same
    dataset row."""
    from ml.data import inspect_csv

    check_upload_size(len(content), settings.max_upload_bytes)
    repository = DatasetRepository(session, organisation_id)
    sha256 = hashlib.sha256(content).hexdigest()
    existing = repository.by_sha256(sha256)
    if existing is not None:
        return existing, False
    check_storage_room(session, settings, organisation_id, len(content))
    _, summary = inspect_csv(
        content,
        max_length=token_limit(settings),
        base_model=configured_base_model(settings),
        limits=note_limits(settings),
    )
    # A file per row, in a folder per organisation: no two rows (nor two organisations) share one, so
    # removing a deleted dataset's file can never take another's.
    dataset_id = new_id()
    relative = f"{DATASETS_SUBDIR}/{organisation_id}/{dataset_id}.csv"
    dataset = Dataset(
        id=dataset_id,
        name=_display_name(filename, sha256),
        sha256=sha256,
        path=relative,
        size_bytes=len(content),
        rows=summary.rows,
        class_counts=summary.class_counts,
        duplicates=summary.duplicates,
        truncated_at_max_length=summary.truncated_at_max_length,
        summary=summary.to_dict(),
        created_at=utcnow(),
    )
    try:
        repository.add(dataset)
    except IntegrityError:
        # The same bytes arrived twice at once and the other request's row was committed first. The
        # session held nothing else yet (this is the request's first write), so rolling back is safe.
        session.rollback()
        existing = repository.by_sha256(sha256)
        if existing is None:
            raise
        return existing, False
    # Written only once the row is ours: a concurrent upload of the same bytes waits on that row
    # before writing, so a rejected request (which removes the file only when no committed row
    # names it) can hardly remove a file the other upload has just put in place.
    artifact_store(settings).put_bytes(dataset.path, content)
    return dataset, True


def check_upload_size(size: int, limit: int) -> None:
    if size > limit:
        raise PayloadTooLarge(
            f"the file is larger than the upload limit of {limit} bytes", details={"limit_bytes": limit}
        )


class StorageFull(PayloadTooLarge):
    code = "organisation_storage_full"


def check_storage_room(
    session: Session, settings: Settings, organisation_id: str, incoming_bytes: int
) -> None:
    """The organisation's notes files and this upload must fit its share of the store (413 if not)."""
    used = DatasetRepository(session, organisation_id).stored_bytes()
    limit = settings.max_stored_bytes_per_organisation
    if used + incoming_bytes > limit:
        raise StorageFull(
            f"this organisation keeps {used} bytes of notes files and may keep {limit}: this upload of "
            f"{incoming_bytes} bytes does not fit; delete datasets it no longer needs",
            details={
                "limit_bytes": limit,
                "used_bytes": used,
                "upload_bytes": incoming_bytes,
                "setting": "NOTETUNE_MAX_STORED_BYTES_PER_ORGANISATION",
            },
        )


def note_limits(settings: Settings) -> NoteLimits:
    """The caps on an uploaded file's shape (settings max_upload_rows, max_text_chars,
    max_note_sentences, max_note_tokens)."""
    from ml.data import NoteLimits

    return NoteLimits(
        max_rows=settings.max_upload_rows,
        max_chars=settings.max_text_chars,
        max_sentences=settings.max_note_sentences,
        max_tokens=settings.max_note_tokens,
    )


def check_predict_sentences(settings: Settings, texts: list[str]) -> None:
    """Sentences per note for /predict (NOTETUNE_MAX_NOTE_SENTENCES): under sentence pooling each one
    is a model input, so a note of many tiny sentences would cost as much as a batch of notes."""
    from ml.data import sentence_count

    limit = settings.max_note_sentences
    too_many = [index for index, text in enumerate(texts) if sentence_count(text) > limit]
    if too_many:
        raise InvalidRequest(
            f"notes may have at most {limit} sentences (each is scored on its own)",
            code="too_many_sentences",
            details={"indices": too_many[:20], "limit": limit},
        )


def token_limit(settings: Settings) -> int:
    """Tokens per note above which a dataset summary counts the note as truncated."""
    return settings.dataset_max_length or DEFAULT_MAX_LENGTH


def forget_dataset_file(session: Session, settings: Settings, dataset: Dataset) -> None:
    """Remove the CSV of a dataset row that was rolled back, unless a committed row points at it."""
    if DatasetRepository(session, dataset.organisation_id).by_path(dataset.path) is None:
        artifact_store(settings).delete_file(dataset.path)


def get_dataset(session: Session, dataset_id: str, *, organisation_id: str) -> Dataset:
    dataset = DatasetRepository(session, organisation_id).get(dataset_id)
    if dataset is None:
        raise NotFound.for_id("dataset", dataset_id)
    return dataset


def dataset_for_job(session: Session, dataset_id: str, *, organisation_id: str) -> Dataset:
    """A dataset a new job will read: the organisation's, with its notes file still there. Its row
    stays locked against a deletion until the job is committed."""
    dataset = DatasetRepository(session, organisation_id).get(dataset_id, lock=True)
    if dataset is None:
        raise NotFound.for_id("dataset", dataset_id)
    if dataset.file_deleted_at is not None:
        raise Conflict(
            "this dataset's notes file was deleted (retention period); upload the file again to use it",
            code="dataset_file_deleted",
            details={"file_deleted_at": dataset.file_deleted_at.isoformat()},
        )
    return dataset


def list_datasets(session: Session, offset: int, limit: int, *, organisation_id: str) -> Page[Dataset]:
    return DatasetRepository(session, organisation_id).list(offset, limit)


def dataset_file(settings: Settings, dataset: Dataset) -> Path:
    """A local path to read the dataset's notes from (fetched into this host's cache if need be)."""
    return artifact_store(settings).file_path(dataset.path)


def _display_name(filename: str | None, sha256: str) -> str:
    # Browsers may send a full client path; keep only the last component. Control characters (NUL
    # cannot be stored in PostgreSQL text) are dropped: the name is only a label.
    printable = "".join(char for char in filename or "" if unicodedata.category(char) not in _UNPRINTABLE)
    name = PurePath(printable.replace("\\", "/")).name.strip()
    return name[:200] or f"{sha256[:12]}.csv"
