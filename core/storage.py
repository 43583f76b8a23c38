"""The artefact store a process uses, made once per configuration (models_store/ says what it is)."""

from __future__ import annotations

import threading

from core.settings import Settings
from models_store.artifacts import ArtifactStore

_stores: dict[tuple, ArtifactStore] = {}
_lock = threading.Lock()


def artifact_store(settings: Settings) -> ArtifactStore:
    """The store these settings name: the data directory, or an S3-compatible bucket with a cache in
    the data directory. One per configuration and process (its client and cache are reused)."""
    identity = (
        settings.store_url,
        settings.s3_endpoint_url,
        str(settings.data_dir.resolve()),
        str(settings.models_root),
        settings.store_server_side_encryption,
        settings.store_cache_bytes,
    )
    with _lock:
        if identity not in _stores:
            _stores[identity] = _open(settings)
        return _stores[identity]


def _open(settings: Settings) -> ArtifactStore:
    if settings.store_url is None:
        from models_store.local import LocalStore

        return LocalStore(settings.data_dir, settings.models_root)
    from models_store.cache import LocalCache
    from models_store.s3 import S3Store

    data_dir = settings.data_dir.resolve()
    return S3Store(
        settings.store_url,
        cache=LocalCache(data_dir / "cache", settings.store_cache_bytes),
        work_dir=data_dir / "work",
        endpoint_url=settings.s3_endpoint_url,
        server_side_encryption=settings.store_server_side_encryption,
        kms_key_id=settings.store_kms_key_id,
        timeout_s=settings.store_timeout_s,
        max_attempts=settings.store_max_attempts,
    )
