"""Where models live on disk: one directory per model id, written atomically.

A model directory only ever appears whole: writers fill a hidden temporary sibling and rename it
into place (a rename within one filesystem is atomic), so a crash mid-write leaves a `.tmp-*`
directory, never a half model under a real id. A failed or cancelled job's partials go with
`ModelStore.remove`; any others are swept by `sweep_partials` when a worker starts.
"""

from __future__ import annotations

import contextlib
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
TEMP_PREFIX = ".tmp-"
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


class ModelStore:
    """The model store root: a model's directory is its checked id below it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, model_id: str) -> Path:
        return self.root / check_model_id(model_id)

    def remove(self, model_id: str) -> None:
        """Delete the model's directory and any partial write of it (either may be absent)."""
        shutil.rmtree(self.path_for(model_id), ignore_errors=True)
        for partial in self.root.glob(f"{TEMP_PREFIX}{model_id}-*"):
            shutil.rmtree(partial, ignore_errors=True)

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


def _fsync_tree(directory: Path) -> None:
    # Flush file contents before the rename makes the directory visible under its real name.
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
