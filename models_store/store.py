"""Where models live on disk: one directory per model id, written atomically.

A model directory only ever appears whole: writers fill a hidden temporary sibling and rename it
into place (a rename within one filesystem is atomic), so a crash mid-write leaves a `.tmp-*`
directory, never a half model under a real id. A failed or cancelled job's partials go with
`ModelStore.remove`; any others are swept by `sweep_partials` when a worker starts.

A job may run more than once (a reaped attempt can still be alive), so each attempt of a job writes
its own directory under `.attempts/` and touches nothing else; only the attempt that holds the job
publishes (renames its directory to the model's id), at the moment the job is recorded succeeded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ml.errors import UserError

MANIFEST_NAME = "manifest.json"
# The files that hold a model's weights (full models, adapters, the TF-IDF baseline), directly in its
# directory.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".npz")
WEIGHTS_HASHED = (
    "sha256 over the weight files (*.safetensors, *.bin, and the baseline's *.npz) in the directory, "
    "sorted by name"
)
TEMP_PREFIX = ".tmp-"
ATTEMPTS_DIR = ".attempts"
_ATTEMPT_NAME = re.compile(
    r"^(?:\.tmp-)?(?P<model_id>[A-Za-z0-9][A-Za-z0-9_-]{0,63})\.a(?P<attempt>\d+)(?:-.*)?$"
)
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class ModelNotFound(UserError, LookupError):
    status_code = 404
    code = "model_not_found"


def check_model_id(model_id: str) -> str:
    """Ids become directory names: only letters, digits, '-' and '_' (no separators, no dots)."""
    if not isinstance(model_id, str) or not _SAFE_ID.match(model_id):
        raise UserError("a model id may only contain letters, digits, '-' and '_' (at most 64)")
    return model_id


@contextlib.contextmanager
def atomic_directory(final_path: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success rename it to `final_path`, on any error delete it."""
    final_path = Path(final_path)
    if final_path.exists():
        raise FileExistsError(f"{final_path.name} already exists: models are never overwritten")
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = final_path.parent / f"{TEMP_PREFIX}{final_path.name}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        yield temporary
        _fsync_tree(temporary)
        os.rename(temporary, final_path)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def write_manifest(directory: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False)
    (Path(directory) / MANIFEST_NAME).write_text(text + "\n", encoding="utf-8")


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ModelNotFound(f"no model at {Path(directory).name} (manifest.json missing)")
    return json.loads(path.read_text(encoding="utf-8"))


def weights_sha256(directory: Path) -> str | None:
    """Which weights a model directory holds (WEIGHTS_HASHED): each weight file's name, then its bytes.
    None when the directory has no weight files."""
    files = sorted(
        path for path in Path(directory).iterdir() if path.is_file() and path.suffix in WEIGHT_SUFFIXES
    )
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode("utf-8") + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


class ModelStore:
    """The model store root: a model's directory is its checked id below it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, model_id: str) -> Path:
        return self.root / check_model_id(model_id)

    def remove(self, model_id: str) -> None:
        """Delete the model's directory and any partial write of it (either may be absent): only for a
        job that has ended without a model, so that none of its attempts may publish any more."""
        shutil.rmtree(self.path_for(model_id), ignore_errors=True)
        for partial in self.root.glob(f"{TEMP_PREFIX}{model_id}-*"):
            shutil.rmtree(partial, ignore_errors=True)
        for attempt_dir in self.attempt_dirs(model_id):
            shutil.rmtree(attempt_dir, ignore_errors=True)

    def attempt_path(self, model_id: str, attempt: int) -> Path:
        """Where one attempt of a job writes its model (atomically, like any model directory)."""
        return self.root / ATTEMPTS_DIR / f"{check_model_id(model_id)}.a{int(attempt)}"

    def attempt_dirs(self, model_id: str | None = None) -> list[Path]:
        """Attempt directories and their partial writes: all, or one model's."""
        folder = self.root / ATTEMPTS_DIR
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            parsed = parse_attempt(path.name)
            if parsed is not None and model_id in (None, parsed[0]):
                found.append(path)
        return found

    def discard_attempt(self, model_id: str, attempt: int) -> None:
        """Delete one attempt's own files (finished or partial): never the published model."""
        for path in self.attempt_dirs(model_id):
            if parse_attempt(path.name) == (model_id, attempt):
                shutil.rmtree(path, ignore_errors=True)

    def publish(self, model_id: str, attempt: int) -> Path:
        """Rename the attempt's finished directory to the model's id. Call it only from the attempt
        that holds the job: a directory already there is then a leftover of an earlier attempt whose
        success was never committed, and is replaced."""
        source, target = self.attempt_path(model_id, attempt), self.path_for(model_id)
        if not (source / MANIFEST_NAME).is_file():
            raise FileNotFoundError(f"attempt {attempt} of model {model_id} has no finished directory")
        if target.exists():
            shutil.rmtree(target)
        os.rename(source, target)
        _fsync_directory(self.root)
        return target

    def sweep_partials(self, older_than_s: float = 0.0) -> int:
        """Delete temporary directories left by a crashed writer; returns how many.

        Workers may share one store: `older_than_s` spares a partial that another, live worker may
        still be writing (nothing writes for longer than a job may run)."""
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        partials = [
            path
            for path in self.root.iterdir()
            if path.name.startswith(TEMP_PREFIX) and path.is_dir() and path.stat().st_mtime <= cutoff
        ]
        for partial in partials:
            shutil.rmtree(partial, ignore_errors=True)
        return len(partials)


def parse_attempt(name: str) -> tuple[str, int] | None:
    """(model id, attempt) of an attempt directory or of its partial write; None for other names."""
    match = _ATTEMPT_NAME.match(name)
    return (match["model_id"], int(match["attempt"])) if match else None


def _fsync_directory(directory: Path) -> None:
    # The rename is durable once the directory holding it is flushed.
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _fsync_tree(directory: Path) -> None:
    # Flush file contents before the rename makes the directory visible under its real name.
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
