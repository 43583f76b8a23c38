"""The store on a local (or shared network) filesystem: the data directory as it always was.

Data files live at `<data_dir>/<key>`, written to a temporary sibling and renamed into place. A
model's key is its id: `<models_root>/<id>`. Each attempt writes `<models_root>/.attempts/<id>.a<N>`;
publishing renames that directory to the model's id inside the recording transaction, and a commit
that failed renames it back.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

from models_store.artifacts import ArtifactStore, StoredObject
from models_store.errors import MODEL_FILES_MISSING, InvalidKey, ObjectMissing
from models_store.layout import (
    ATTEMPTS_DIR,
    MANIFEST_NAME,
    TEMP_PREFIX,
    attempts_in,
    check_model_id,
    fsync_directory,
)

# The folders of data files below the data directory.
DATA_FOLDERS = ("datasets", "evaluations")


def checked_key(key: str) -> str:
    """A data file's key: a relative path below one of DATA_FOLDERS, without '..' or empty parts."""
    parts = key.split("/")
    if parts[0] not in DATA_FOLDERS or "\\" in key or any(part in ("", ".", "..") for part in parts):
        raise InvalidKey(f"not a data file key: {key!r}")
    return key


class LocalStore(ArtifactStore):
    def __init__(self, data_dir: Path, models_root: Path) -> None:
        self.data_root = Path(data_dir).resolve()
        self.root = Path(models_root).resolve()

    def describe(self) -> str:
        return f"local filesystem at {self.data_root} (models at {self.root})"

    # --- data files ---

    def _data_path(self, key: str) -> Path:
        return self.data_root / checked_key(key)

    def put_bytes(self, key: str, content: bytes) -> None:
        path = self._data_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def put_file(self, key: str, source: Path) -> None:
        path = self._data_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            shutil.copyfile(source, temporary)
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def file_path(self, key: str) -> Path:
        path = self._data_path(key)
        if not path.is_file():
            raise ObjectMissing(f"the stored file {key} is missing from the store")
        return path

    def delete_file(self, key: str) -> bool:
        path = self._data_path(key)
        path.unlink(missing_ok=True)
        return not path.exists()

    def list_files(self) -> list[StoredObject]:
        found = []
        for folder in DATA_FOLDERS:
            root = self.data_root / folder
            if not root.is_dir():
                continue
            # Dataset files live in a folder per organisation (older ones directly in datasets/).
            for path in root.rglob("*"):
                if path.is_file():
                    key = path.relative_to(self.data_root).as_posix()
                    found.append(StoredObject(key, path.stat().st_mtime))
        return found

    # --- models ---

    def path_for(self, model_id: str) -> Path:
        return self.root / check_model_id(model_id)

    def attempt_dir(self, model_id: str, attempt: int) -> Path:
        return self.root / ATTEMPTS_DIR / f"{check_model_id(model_id)}.a{int(attempt)}"

    def stage_model(self, model_id: str, attempt: int) -> str:
        # The attempt's directory is already durable (atomic_directory flushed it) and every process
        # reading this filesystem can see it: nothing to copy.
        if not (self.attempt_dir(model_id, attempt) / MANIFEST_NAME).is_file():
            raise FileNotFoundError(f"attempt {attempt} of model {model_id} has no finished directory")
        return check_model_id(model_id)

    def publish_model(self, model_id: str, attempt: int) -> None:
        """Rename the attempt's directory to the model's id. Only the attempt that holds the job calls
        it: a directory already there is a leftover of an earlier attempt whose success was never
        committed, and is replaced."""
        source, target = self.attempt_dir(model_id, attempt), self.path_for(model_id)
        if not (source / MANIFEST_NAME).is_file():
            raise FileNotFoundError(f"attempt {attempt} of model {model_id} has no finished directory")
        if target.exists():
            shutil.rmtree(target)
        os.rename(source, target)
        fsync_directory(self.root)

    def unpublish_model(self, model_id: str, attempt: int) -> None:
        mine, published = self.attempt_dir(model_id, attempt), self.path_for(model_id)
        if not mine.exists() and published.exists():
            published.rename(mine)

    def model_dir(self, key: str) -> Path:
        directory = self.path_for(key)
        if not (directory / MANIFEST_NAME).is_file():
            raise ObjectMissing(MODEL_FILES_MISSING)
        return directory

    def discard_attempt(self, model_id: str, attempt: int) -> None:
        for path, owner, number in self.local_attempts():
            if (owner, number) == (model_id, attempt):
                shutil.rmtree(path, ignore_errors=True)

    def remove_model(self, model_id: str) -> bool:
        shutil.rmtree(self.path_for(model_id), ignore_errors=True)
        for partial in self.root.glob(f"{TEMP_PREFIX}{model_id}-*"):
            shutil.rmtree(partial, ignore_errors=True)
        for path, owner, _ in self.local_attempts():
            if owner == model_id:
                shutil.rmtree(path, ignore_errors=True)
        return not self.path_for(model_id).exists()

    def local_attempts(self) -> list[tuple[Path, str, int]]:
        return attempts_in(self.root / ATTEMPTS_DIR)

    def model_keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [path.name for path in self.root.iterdir() if path.is_dir() and _is_model_id(path.name)]

    def remove_model_key(self, key: str) -> None:
        shutil.rmtree(self.path_for(key), ignore_errors=True)

    def sweep_partials(self, older_than_s: float) -> int:
        """Temporary directories a crashed writer left; `older_than_s` spares a partial that another,
        live worker sharing this filesystem may still be writing."""
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


def _is_model_id(name: str) -> bool:
    try:
        check_model_id(name)
    except InvalidKey:
        return False
    return True
