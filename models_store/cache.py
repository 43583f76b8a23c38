"""A bounded local cache of objects fetched from a remote store, shared by the processes of one host.

Each entry (a file or a model directory) appears whole: it is fetched into a temporary sibling and
renamed into place, so a reader sees a complete entry or none. Reading an entry touches it; after
each fetch the least recently used entries go until the cache is back under its size, except those
read in the last `grace_s` seconds (another process of this host may be loading them right now), so
the cache may run over its size for that long. Everything is owner-only (0700 folders, 0600 files):
the cache holds notes and models.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX = ".fetch-"
# The folders of entries: one level (data files keep their key's folders below it).
MODELS, DATA = "models", "data"


class LocalCache:
    def __init__(self, root: Path, max_bytes: int, grace_s: float = 60.0) -> None:
        self.root = Path(root).resolve()
        self.max_bytes, self.grace_s = max_bytes, grace_s

    def entry(self, folder: str, key: str) -> Path:
        return self.root / folder / key

    def lookup(self, folder: str, key: str) -> Path | None:
        """The entry's path when it is cached (and marks it as just used), else None."""
        path = self.entry(folder, key)
        if not path.exists():
            return None
        with contextlib.suppress(FileNotFoundError):  # evicted by another process just now
            os.utime(path)
            return path
        return None

    @contextlib.contextmanager
    def filling(self, folder: str, key: str) -> Iterator[Path]:
        """Yield a temporary path to fetch into; on success it becomes the entry (another process's
        copy of the same entry, if it got there first, is kept and ours dropped)."""
        target = self.entry(folder, key)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = target.parent / f"{TEMP_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}"
        try:
            yield temporary
            _owner_only(temporary)
            try:
                os.rename(temporary, target)
            except OSError:
                if not target.exists():
                    raise
        finally:
            _remove(temporary)
        self.evict(keep=target)

    def adopt(self, folder: str, key: str, source: Path) -> None:
        """Move a local directory or file into the cache as an entry (a model this host just wrote)."""
        target = self.entry(folder, key)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _owner_only(source)
        try:
            os.rename(source, target)
        except OSError:
            _remove(source)
        self.evict(keep=target)

    def discard(self, folder: str, key_prefix: str) -> None:
        """Drop an entry (or every entry below a key prefix) from this host's cache."""
        _remove(self.entry(folder, key_prefix))

    def evict(self, keep: Path | None = None) -> int:
        """Remove least recently used entries until the cache fits; returns how many went."""
        entries = sorted(self._entries(), key=lambda item: item[1])  # oldest use first
        total = sum(size for _, _, size in entries)
        now, removed = time.time(), 0
        for path, used, size in entries:
            if total <= self.max_bytes:
                break
            if path == keep or now - used < self.grace_s:
                continue
            _remove(path)
            total -= size
            removed += 1
        return removed

    def entry_keys(self) -> list[tuple[str, str]]:
        """(folder, key) of every entry: a model's key is `<id>/a<N>`, a data file's its path below
        `data/`."""
        found = []
        for path, _, _ in self._entries():
            folder = MODELS if path.is_relative_to(self.root / MODELS) else DATA
            found.append((folder, path.relative_to(self.root / folder).as_posix()))
        return found

    def partials(self) -> list[Path]:
        """Temporary fetches (a process died mid-download)."""
        return [path for path in self.root.rglob(f"{TEMP_PREFIX}*")] if self.root.is_dir() else []

    def size_bytes(self) -> int:
        return sum(size for _, _, size in self._entries())

    def _entries(self) -> list[tuple[Path, float, int]]:
        """(path, last use, bytes) of each entry: model directories are `models/<id>/a<N>`, data files
        any file below `data/`."""
        found = []
        models = self.root / MODELS
        if models.is_dir():
            for model in models.iterdir():
                for attempt in model.iterdir() if model.is_dir() else []:
                    if not attempt.name.startswith(TEMP_PREFIX):
                        found.append((attempt, _mtime(attempt), _size(attempt)))
        data = self.root / DATA
        if data.is_dir():
            for path in data.rglob("*"):
                if path.is_file() and not path.name.startswith(TEMP_PREFIX):
                    found.append((path, _mtime(path), _size(path)))
        return found


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _size(path: Path) -> int:
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    except FileNotFoundError:
        return 0


def _owner_only(path: Path) -> None:
    if path.is_dir():
        path.chmod(0o700)
        for item in path.rglob("*"):
            item.chmod(0o700 if item.is_dir() else 0o600)
    elif path.exists():
        path.chmod(0o600)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
