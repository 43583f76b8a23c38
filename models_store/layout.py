"""A model directory's format and the local filesystem's model layout: one directory per model id,
written atomically.

A model directory only ever appears whole: writers fill a hidden temporary sibling and rename it
into place (a rename within one filesystem is atomic), so a crash mid-write leaves a `.tmp-*`
directory, never a half model under a real id.

A job may run more than once (a reaped attempt can still be alive), so each attempt of a job writes
its own directory (`<id>.a<N>` under `.attempts/`) and touches nothing else; how an attempt becomes
the model is the store's business (models_store/local.py, models_store/s3.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from models_store.errors import InvalidKey, ModelNotFound

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


def check_model_id(model_id: str) -> str:
    """Ids become directory names: only letters, digits, '-' and '_' (no separators, no dots)."""
    if not isinstance(model_id, str) or not _SAFE_ID.match(model_id):
        raise InvalidKey("a model id may only contain letters, digits, '-' and '_' (at most 64)")
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
        fsync_tree(temporary)
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


def attempts_in(folder: Path) -> list[tuple[Path, str, int]]:
    """The attempt directories (and their partial writes) in `folder`: (path, model id, attempt)."""
    if not folder.is_dir():
        return []
    return [(path, *parsed) for path in folder.iterdir() if (parsed := parse_attempt(path.name))]


def parse_attempt(name: str) -> tuple[str, int] | None:
    """(model id, attempt) of an attempt directory or of its partial write; None for other names."""
    match = _ATTEMPT_NAME.match(name)
    return (match["model_id"], int(match["attempt"])) if match else None


def fsync_directory(directory: Path) -> None:
    # The rename is durable once the directory holding it is flushed.
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_tree(directory: Path) -> None:
    # Flush file contents before the rename makes the directory visible under its real name.
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
