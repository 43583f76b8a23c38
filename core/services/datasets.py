"""Dataset uploads: validated before anything is stored, kept once per content hash."""

from __future__ import annotations

import hashlib
import os
import unicodedata
import uuid
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import Dataset
from core.db.repositories import DatasetRepository, Page
from core.errors import InvalidRequest, NotFound, PayloadTooLarge
from core.services.models import configured_base_model
from core.settings import Settings
from ml.vocabulary import DEFAULT_MAX_LENGTH

if TYPE_CHECKING:
    from ml.data import NoteLimits

DATASETS_SUBDIR = "datasets"
# Control characters and unpaired surrogates: dropped from a file name.
_UNPRINTABLE = frozenset({"Cc", "Cs"})


def register_dataset(
    session: Session, settings: Settings, content: bytes, filename: str | None
) -> tuple[Dataset, bool]:
    """Returns (dataset, created). The same bytes uploaded twice give the same dataset row."""
    from ml.data import inspect_csv

    check_upload_size(len(content), settings.max_upload_bytes)
    repository = DatasetRepository(session)
    sha256 = hashlib.sha256(content).hexdigest()
    existing = repository.by_sha256(sha256)
    if existing is not None:
        return existing, False
    _, summary = inspect_csv(
        content,
        max_length=token_limit(settings),
        base_model=configured_base_model(settings),
        limits=note_limits(settings),
    )
    relative = f"{DATASETS_SUBDIR}/{sha256}.csv"
    dataset = Dataset(
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
    _write_atomically(dataset_file(settings, dataset), content)
    return dataset, True


def check_upload_size(size: int, limit: int) -> None:
    if size > limit:
        raise PayloadTooLarge(
            f"the file is larger than the upload limit of {limit} bytes", details={"limit_bytes": limit}
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
    if DatasetRepository(session).by_sha256(dataset.sha256) is None:
        dataset_file(settings, dataset).unlink(missing_ok=True)


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    dataset = DatasetRepository(session).get(dataset_id)
    if dataset is None:
        raise NotFound.for_id("dataset", dataset_id)
    return dataset


def list_datasets(session: Session, offset: int, limit: int) -> Page[Dataset]:
    return DatasetRepository(session).list(offset, limit)


def dataset_file(settings: Settings, dataset: Dataset) -> Path:
    return settings.stored_file(dataset.path)


def _display_name(filename: str | None, sha256: str) -> str:
    # Browsers may send a full client path; keep only the last component. Control characters (NUL
    # cannot be stored in PostgreSQL text) are dropped: the name is only a label.
    printable = "".join(char for char in filename or "" if unicodedata.category(char) not in _UNPRINTABLE)
    name = PurePath(printable.replace("\\", "/")).name.strip()
    return name[:200] or f"{sha256[:12]}.csv"


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
