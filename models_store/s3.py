"""The store in an S3-compatible bucket (AWS S3, or a server inside the hospital's network such as
SeaweedFS, MinIO or Ceph), read through a bounded local cache (models_store/cache.py).

The client is boto3: it is what operators already configure (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION` and the rest of the standard chain: instance roles,
profiles), it speaks to any S3-compatible endpoint, and it exposes the knobs this store needs:
server-side encryption, timeouts and bounded retries.

Layout under `s3://<bucket>/<prefix>/`:
- `data/<key>`: notes files and evaluation arrays, each with its sha256 in the object's metadata;
- `models/<id>/a<N>/<file>`: the files attempt N of a job wrote, then `models/<id>/a<N>/objects.json`
  (every file's sha256 and size), written last. S3 has no rename: an attempt's files stay under its
  own prefix, the model row names `<id>/a<N>`, and a reader that finds no objects.json, or a file
  that does not match it, refuses the model. A crash mid-upload leaves a prefix without
  objects.json that no row names; the sweeper removes it once its job has ended.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from models_store.artifacts import CHUNK_BYTES, ArtifactStore, StoredObject, sha256_of
from models_store.cache import DATA, MODELS, LocalCache
from models_store.errors import (
    MODEL_FILES_MISSING,
    IntegrityFailure,
    InvalidKey,
    ObjectMissing,
    StoreUnavailable,
)
from models_store.layout import MANIFEST_NAME, attempts_in, check_model_id
from models_store.local import checked_key

log = logging.getLogger("notetune.store")

COMMIT_RECORD = "objects.json"
SHA256_METADATA = "sha256"
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


def parse_store_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    if not url.startswith("s3://"):
        raise InvalidKey("NOTETUNE_STORE_URL must look like s3://bucket or s3://bucket/prefix")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise InvalidKey("NOTETUNE_STORE_URL names no bucket (s3://bucket/prefix)")
    return bucket, prefix.strip("/")


def model_key(model_id: str, attempt: int) -> str:
    return f"{check_model_id(model_id)}/a{int(attempt)}"


class S3Store(ArtifactStore):
    def __init__(
        self,
        url: str,
        *,
        cache: LocalCache,
        work_dir: Path,
        endpoint_url: str | None = None,
        server_side_encryption: str | None = None,
        kms_key_id: str | None = None,
        timeout_s: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = parse_store_url(url)
        self.cache, self.work_dir = cache, Path(work_dir).resolve()
        self.endpoint_url = endpoint_url
        config = Config(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        )
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
        self._write_args: dict[str, str] = {}
        if server_side_encryption:
            self._write_args["ServerSideEncryption"] = server_side_encryption
            if kms_key_id:
                self._write_args["SSEKMSKeyId"] = kms_key_id

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3 bucket {self.bucket}{where}, prefix '{self.prefix}' (cache {self.cache.root})"

    # --- object access, every call through _calling so that errors come out as the store's ---

    def _object(self, *parts: str) -> str:
        return "/".join(part for part in (self.prefix, *parts) if part)

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                raise ObjectMissing(f"{what}: not in the store") from None
            log.warning("store: %s failed (%s)", what, code)
            raise StoreUnavailable(f"{what}: the store refused the request ({code})") from None
        except BotoCoreError as error:
            log.warning("store: %s failed (%s)", what, type(error).__name__)
            raise StoreUnavailable(f"{what}: the store could not be reached; try again later") from None

    def _upload(self, source: Path, name: str, sha256: str) -> None:
        extra = {**self._write_args, "Metadata": {SHA256_METADATA: sha256}}
        self.client.upload_file(str(source), self.bucket, name, ExtraArgs=extra)

    def _download(self, name: str, target: Path, expected_sha256: str | None) -> None:
        """Stream an object to `target`, checking its sha256 against `expected_sha256` or, when None,
        against the one stored in its metadata."""
        response = self.client.get_object(Bucket=self.bucket, Key=name)
        expected = expected_sha256 or response.get("Metadata", {}).get(SHA256_METADATA)
        digest = hashlib.sha256()
        with open(target, "wb") as handle:
            for chunk in response["Body"].iter_chunks(CHUNK_BYTES):
                digest.update(chunk)
                handle.write(chunk)
        if expected is not None and digest.hexdigest() != expected:
            raise IntegrityFailure(
                f"the stored object {name} does not match the sha256 recorded when it was written: "
                "it was changed or damaged in the store, and is not used"
            )

    def _names(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _delete_prefix(self, prefix: str) -> None:
        names = [item["Key"] for item in self._names(prefix)]
        for start in range(0, len(names), 1000):
            batch = [{"Key": name} for name in names[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    # --- data files ---

    def put_bytes(self, key: str, content: bytes) -> None:
        checked_key(key)
        staging = self.work_dir / "uploads"
        staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = staging / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}-{time.time_ns()}"
        try:
            temporary.write_bytes(content)
            self.put_file(key, temporary)
        finally:
            temporary.unlink(missing_ok=True)

    def put_file(self, key: str, source: Path) -> None:
        with self._calling(f"storing {key}"):
            self._upload(Path(source), self._object(DATA, checked_key(key)), sha256_of(source))

    def file_path(self, key: str) -> Path:
        checked_key(key)
        cached = self.cache.lookup(DATA, key)
        if cached is not None:
            return cached
        with self._calling(f"reading {key}"), self.cache.filling(DATA, key) as temporary:
            self._download(self._object(DATA, key), temporary, None)
        return self.cache.entry(DATA, key)

    def delete_file(self, key: str) -> bool:
        self.cache.discard(DATA, checked_key(key))
        with self._calling(f"deleting {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._object(DATA, key))
        return True

    def list_files(self) -> list[StoredObject]:
        prefix = self._object(DATA) + "/"
        with self._calling("listing data files"):
            return [
                StoredObject(item["Key"].removeprefix(prefix), item["LastModified"].timestamp())
                for item in self._names(prefix)
            ]

    # --- models ---

    def attempt_dir(self, model_id: str, attempt: int) -> Path:
        return self.work_dir / "attempts" / f"{check_model_id(model_id)}.a{int(attempt)}"

    def stage_model(self, model_id: str, attempt: int) -> str:
        """Upload every file of the attempt's directory, then the commit record naming them all."""
        source, key = self.attempt_dir(model_id, attempt), model_key(model_id, attempt)
        if not (source / MANIFEST_NAME).is_file():
            raise FileNotFoundError(f"attempt {attempt} of model {model_id} has no finished directory")
        files = {}
        with self._calling(f"storing model {model_id}"):
            for path in sorted(item for item in source.rglob("*") if item.is_file()):
                relative = path.relative_to(source).as_posix()
                files[relative] = {"sha256": sha256_of(path), "size": path.stat().st_size}
                self._upload(path, self._object(MODELS, key, relative), files[relative]["sha256"])
            record = json.dumps({"files": files}, sort_keys=True).encode("utf-8")
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._object(MODELS, key, COMMIT_RECORD),
                Body=record,
                **self._write_args,
            )
        return key

    def publish_model(self, model_id: str, attempt: int) -> None:
        # Staged objects are what the row names: nothing to move in the bucket. The attempt's local
        # copy becomes this host's cache entry, so the next read here needs no download.
        source = self.attempt_dir(model_id, attempt)
        if source.is_dir():
            self.cache.adopt(MODELS, model_key(model_id, attempt), source)

    def unpublish_model(self, model_id: str, attempt: int) -> None:
        # The staged objects stay under the attempt's own prefix for the next try to name (or for the
        # sweeper, once the job has ended without a row).
        return None

    def model_dir(self, key: str) -> Path:
        model_id, _, attempt = key.partition("/")
        check_model_id(model_id)
        if not attempt:
            raise InvalidKey(f"not a model key of this store: {key!r}")
        cached = self.cache.lookup(MODELS, key)
        if cached is not None:
            return cached
        with self._calling(f"reading model {model_id}"):
            record = self._commit_record(key)
            with self.cache.filling(MODELS, key) as temporary:
                temporary.mkdir(mode=0o700)
                for relative, facts in record["files"].items():
                    target = temporary / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self._download(self._object(MODELS, key, relative), target, facts["sha256"])
        return self.cache.entry(MODELS, key)

    def _commit_record(self, key: str) -> dict:
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self._object(MODELS, key, COMMIT_RECORD)
            )
        except Exception as error:
            if _is_missing(error):
                raise ObjectMissing(MODEL_FILES_MISSING) from None
            raise
        return json.loads(response["Body"].read())

    def discard_attempt(self, model_id: str, attempt: int) -> None:
        shutil.rmtree(self.attempt_dir(model_id, attempt), ignore_errors=True)
        for path, owner, number in self.local_attempts():
            if (owner, number) == (model_id, attempt):
                shutil.rmtree(path, ignore_errors=True)
        with self._calling(f"deleting attempt {attempt} of model {model_id}"):
            self._delete_prefix(self._object(MODELS, model_key(model_id, attempt)) + "/")

    def remove_model(self, model_id: str) -> bool:
        for path, owner, _ in self.local_attempts():
            if owner == model_id:
                shutil.rmtree(path, ignore_errors=True)
        self.cache.discard(MODELS, check_model_id(model_id))
        with self._calling(f"deleting model {model_id}"):
            self._delete_prefix(self._object(MODELS, model_id) + "/")
        return True

    def local_attempts(self) -> list[tuple[Path, str, int]]:
        return attempts_in(self.work_dir / "attempts")

    def model_keys(self) -> list[str]:
        prefix = self._object(MODELS) + "/"
        with self._calling("listing models"):
            keys = {"/".join(item["Key"].removeprefix(prefix).split("/")[:2]) for item in self._names(prefix)}
        return sorted(key for key in keys if "/" in key)

    def remove_model_key(self, key: str) -> None:
        self.cache.discard(MODELS, key)
        with self._calling(f"deleting {key}"):
            self._delete_prefix(self._object(MODELS, key) + "/")

    def forget_local_copies(self, live_model_keys: set[str], live_data_keys: set[str]) -> int:
        removed = 0
        for folder, key in self.cache.entry_keys():
            if key not in (live_model_keys if folder == MODELS else live_data_keys):
                self.cache.discard(folder, key)
                removed += 1
        return removed

    def sweep_partials(self, older_than_s: float) -> int:
        """Temporary uploads and fetches this host left behind (a crash mid-transfer)."""
        cutoff = time.time() - older_than_s
        uploads = self.work_dir / "uploads"
        leftovers = [path for path in uploads.iterdir()] if uploads.is_dir() else []
        leftovers += self.cache.partials()
        removed = 0
        for path in leftovers:
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime <= cutoff:
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
                    removed += 1
        return removed


def _is_missing(error: Exception) -> bool:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) in _MISSING_CODES
