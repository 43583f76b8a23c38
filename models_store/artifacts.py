"""One store for everything the service keeps besides its database rows: uploaded notes files,
evaluation arrays, and models (with their TF-IDF baseline files).

Rows name objects by key: a data file's key is its row's `path` (`datasets/<org>/<id>.csv`,
`evaluations/<id>.npz`), a model's key is its row's `path` (what `stage_model` returned). Callers
never build paths themselves: they ask for a local path to read (`file_path`, `model_dir`), hand
over a file or a finished attempt directory, and delete by key.

Two backends:
- `LocalStore` (models_store/local.py): the data directory itself, objects read in place. The
  embedded default, and a shared volume.
- `S3Store` (models_store/s3.py): an S3-compatible bucket, read through a bounded local cache, so
  API replicas and workers on several hosts share nothing but the database, the broker and the bucket.

A model is written by one attempt of its job into a local directory (`attempt_dir`), then
`stage_model` makes it durable where every host can read it without making it visible (no row names
it yet), `publish_model` runs inside the transaction that records the model row, and
`unpublish_model` undoes it when that commit is known to have failed.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass
from pathlib import Path

# How many bytes a hash reads at a time.
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class StoredObject:
    """A data file in the store: its key and when it was last written (seconds since the epoch)."""

    key: str
    modified: float


class ArtifactStore(abc.ABC):
    """What services, the worker and the sweeper may do with stored files (module docstring)."""

    # --- data files: uploaded notes and evaluation arrays ---

    @abc.abstractmethod
    def put_bytes(self, key: str, content: bytes) -> None:
        """Store `content` under `key`, whole or not at all."""

    @abc.abstractmethod
    def put_file(self, key: str, source: Path) -> None:
        """Store a local file under `key`, whole or not at all; `source` is left alone."""

    @abc.abstractmethod
    def file_path(self, key: str) -> Path:
        """A local path to read the object from (raises ObjectMissing when it is not stored)."""

    @abc.abstractmethod
    def delete_file(self, key: str) -> bool:
        """Delete the object; True once nothing is left under `key` (also when nothing was there)."""

    @abc.abstractmethod
    def list_files(self) -> list[StoredObject]:
        """Every data file (notes files and evaluation arrays), with temporary ones."""

    # --- models ---

    @abc.abstractmethod
    def attempt_dir(self, model_id: str, attempt: int) -> Path:
        """The local directory one attempt of a job writes its model into (it must not exist yet)."""

    @abc.abstractmethod
    def stage_model(self, model_id: str, attempt: int) -> str:
        """Make the attempt's finished directory durable and readable by every host, without any
        reader seeing it; returns the key the model's row will name."""

    @abc.abstractmethod
    def publish_model(self, model_id: str, attempt: int) -> None:
        """Called inside the transaction that records the model row, once the attempt holds the job."""

    @abc.abstractmethod
    def unpublish_model(self, model_id: str, attempt: int) -> None:
        """Undo `publish_model` after the recording transaction failed to commit."""

    @abc.abstractmethod
    def model_dir(self, key: str) -> Path:
        """A local directory holding the committed model named by `key` (fetched and checked against
        its recorded hashes when it comes from elsewhere). Raises ObjectMissing, IntegrityFailure or
        StoreUnavailable."""

    @abc.abstractmethod
    def discard_attempt(self, model_id: str, attempt: int) -> None:
        """Delete one attempt's own files (local and staged); never the published model."""

    @abc.abstractmethod
    def remove_model(self, model_id: str) -> bool:
        """Delete everything of a model id: published files, every attempt's, partial writes. True
        once nothing is left."""

    @abc.abstractmethod
    def local_attempts(self) -> list[tuple[Path, str, int]]:
        """This host's attempt directories and partial writes: (path, model id, attempt)."""

    @abc.abstractmethod
    def model_keys(self) -> list[str]:
        """Every stored model key, committed or staged (the sweeper compares them with the rows)."""

    @abc.abstractmethod
    def remove_model_key(self, key: str) -> None:
        """Delete what one model key holds (a staged attempt no row will ever name)."""

    @abc.abstractmethod
    def sweep_partials(self, older_than_s: float) -> int:
        """Delete this host's temporary writes older than `older_than_s`; returns how many."""

    def forget_local_copies(self, live_model_keys: set[str], live_data_keys: set[str]) -> int:
        """Remove this host's copies of objects no live row names (a deleted model, dataset or
        evaluation, fetched here before another host deleted it); returns how many. A store read in
        place keeps no copies."""
        return 0

    def describe(self) -> str:
        """Where the store is, for logs and the operator (never credentials)."""
        return type(self).__name__


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def model_id_of(key: str) -> str:
    """The model id a model key belongs to: `<id>` or `<id>/a<N>`."""
    return key.split("/", 1)[0]
