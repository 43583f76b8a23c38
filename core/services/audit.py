"""The prediction audit trail's note digests: an HMAC-SHA256 with a server secret.

A plain SHA-256 of a short clinical note can be guessed (hash candidate notes until one matches);
with a secret key, a digest can only be checked by someone holding the key. The key is
NOTETUNE_AUDIT_KEY, or, when unset, 32 random bytes made once in the data directory (`audit.key`,
mode 0600) that every process sharing the data directory reads. Losing that file means old digests
can no longer be matched against a note: back it up with the database.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from pathlib import Path

from core.settings import Settings

KEY_FILE = "audit.key"
KEY_BYTES = 32

_lock = threading.Lock()
_file_keys: dict[Path, bytes] = {}


def note_digest(settings: Settings, text: str) -> str:
    """The audit trail's digest of one note (64 hex characters); never the note itself."""
    return hmac.new(audit_key(settings), text.encode("utf-8"), hashlib.sha256).hexdigest()


def audit_key(settings: Settings) -> bytes:
    if settings.audit_key is not None:
        return settings.audit_key.get_secret_value().encode("utf-8")
    path = (settings.data_dir / KEY_FILE).resolve()
    with _lock:
        if path not in _file_keys:
            _file_keys[path] = _read_or_create_key(path)
        return _file_keys[path]


def _read_or_create_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of several processes starting at once, one creates the key and the others read it.
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(handle, "wb") as file:
        file.write(key.hex().encode("ascii"))
        file.flush()
        os.fsync(file.fileno())
    return key


def _read_key(path: Path) -> bytes:
    # A process that lost the race may read before the creator has written: wait for the full key.
    for _ in range(100):
        text = path.read_text(encoding="ascii").strip()
        if len(text) == KEY_BYTES * 2:
            return bytes.fromhex(text)
        threading.Event().wait(0.05)
    raise RuntimeError(
        f"the audit key file {path.name} is malformed: expected {KEY_BYTES * 2} hex characters"
    )
