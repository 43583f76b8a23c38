"""The artefact store's own rules, on both backends: keys, whole-or-nothing writes, hashes checked on
the way back, the bounded cache, deleting a model's every copy."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from models_store.cache import LocalCache
from models_store.errors import IntegrityFailure, InvalidKey, ObjectMissing
from models_store.layout import write_manifest
from models_store.local import LocalStore


@pytest.fixture
def s3_store(s3_server, tmp_path, monkeypatch):
    from models_store.s3 import S3Store

    for name, value in s3_server.credentials.items():
        monkeypatch.setenv(name, value)
    bucket = f"store-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    store = S3Store(
        f"s3://{bucket}/unit",
        cache=LocalCache(tmp_path / "cache", max_bytes=10 * 1024 * 1024),
        work_dir=tmp_path / "work",
        endpoint_url=s3_server.endpoint,
        server_side_encryption="AES256",
        timeout_s=2,
        max_attempts=1,
    )
    store.bucket_name = bucket
    return store


@pytest.fixture
def local_store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "data", tmp_path / "data" / "models")


def finished_attempt(store, model_id: str, attempt: int) -> Path:
    directory = store.attempt_dir(model_id, attempt)
    directory.mkdir(parents=True)
    write_manifest(directory, {"model_id": model_id, "attempt": attempt})
    (directory / "adapter_model.safetensors").write_bytes(os.urandom(2048))
    (directory / "baseline").mkdir()
    (directory / "baseline" / "weights.npz").write_bytes(b"baseline")
    return directory


@pytest.mark.parametrize("backend", ["local_store", "s3_store"])
def test_data_files_round_trip_list_and_delete(backend, request):
    store = request.getfixturevalue(backend)
    key = "datasets/org/notes.csv"
    store.put_bytes(key, b"Text,label\nsome note,1\n")
    assert store.file_path(key).read_bytes() == b"Text,label\nsome note,1\n"
    assert key in {stored.key for stored in store.list_files()}
    assert store.delete_file(key)
    with pytest.raises(ObjectMissing):
        store.file_path(key)
    for bad in ("../etc/passwd", "/abs/path.csv", "models/x", "datasets/../../x", "datasets//x"):
        with pytest.raises(InvalidKey):
            store.put_bytes(bad, b"x")


@pytest.mark.parametrize("backend", ["local_store", "s3_store"])
def test_a_model_is_readable_only_once_staged_and_every_copy_goes_with_it(backend, request):
    store = request.getfixturevalue(backend)
    model_id = uuid.uuid4().hex
    finished_attempt(store, model_id, 1)
    key = store.stage_model(model_id, 1)
    store.publish_model(model_id, 1)
    directory = store.model_dir(key)
    assert json.loads((directory / "manifest.json").read_text())["model_id"] == model_id
    assert (directory / "baseline" / "weights.npz").read_bytes() == b"baseline"
    assert key in store.model_keys()
    assert store.remove_model(model_id)
    assert key not in store.model_keys()
    with pytest.raises(ObjectMissing):
        store.model_dir(key)


def test_an_upload_without_its_commit_record_is_not_a_model(s3_store):
    model_id = uuid.uuid4().hex
    finished_attempt(s3_store, model_id, 1)
    key = s3_store.stage_model(model_id, 1)
    record = f"unit/models/{key}/objects.json"
    s3_store.client.delete_object(Bucket=s3_store.bucket_name, Key=record)  # a cut upload
    with pytest.raises(ObjectMissing):
        s3_store.model_dir(key)


def test_a_changed_object_is_refused_and_not_cached(s3_store):
    model_id = uuid.uuid4().hex
    finished_attempt(s3_store, model_id, 1)
    key = s3_store.stage_model(model_id, 1)
    name = f"unit/models/{key}/adapter_model.safetensors"
    s3_store.client.put_object(Bucket=s3_store.bucket_name, Key=name, Body=b"tampered")
    with pytest.raises(IntegrityFailure):
        s3_store.model_dir(key)
    assert s3_store.cache.lookup("models", key) is None
    data_key = "evaluations/e.npz"
    s3_store.put_bytes(data_key, b"arrays")
    s3_store.client.put_object(
        Bucket=s3_store.bucket_name,
        Key=f"unit/data/{data_key}",
        Body=b"other",
        Metadata={"sha256": "0" * 64},
    )
    with pytest.raises(IntegrityFailure):
        s3_store.file_path(data_key)


def test_objects_are_written_with_server_side_encryption_when_asked(s3_store):
    s3_store.put_bytes("datasets/org/a.csv", b"x")
    head = s3_store.client.head_object(Bucket=s3_store.bucket_name, Key="unit/data/datasets/org/a.csv")
    # The request carried the header (botocore's own record of it); what the server does with it
    # is the server's (SeaweedFS accepts it; AWS encrypts).
    assert head["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3_store._write_args == {"ServerSideEncryption": "AES256"}


def test_the_cache_keeps_to_its_size_least_recently_used_out(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_bytes=3000, grace_s=0)
    for name in ("a", "b", "c"):
        with cache.filling("data", f"datasets/{name}.csv") as temporary:
            temporary.write_bytes(b"x" * 1000)
        time.sleep(0.01)
    os.utime(cache.entry("data", "datasets/a.csv"))  # a was read again: b is now the oldest
    with cache.filling("data", "datasets/d.csv") as temporary:
        temporary.write_bytes(b"x" * 1000)
    kept = {path.name for path in (tmp_path / "cache" / "data" / "datasets").iterdir()}
    assert kept == {"a.csv", "c.csv", "d.csv"}
    assert cache.size_bytes() <= 3000
    assert oct(cache.entry("data", "datasets/d.csv").stat().st_mode & 0o777) == "0o600"


def test_the_cache_spares_entries_in_use(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_bytes=1000, grace_s=60)
    for name in ("a", "b"):
        with cache.filling("data", f"datasets/{name}.csv") as temporary:
            temporary.write_bytes(b"x" * 1000)
    # Both were used within the grace period (another process may be loading a): over budget, kept.
    assert cache.lookup("data", "datasets/a.csv") is not None
    assert cache.lookup("data", "datasets/b.csv") is not None


def test_copies_of_objects_no_row_names_leave_this_hosts_cache(s3_store):
    kept, erased = uuid.uuid4().hex, uuid.uuid4().hex
    for model_id in (kept, erased):
        finished_attempt(s3_store, model_id, 1)
        s3_store.stage_model(model_id, 1)
        s3_store.publish_model(model_id, 1)  # this host's copy becomes a cache entry
    s3_store.put_bytes("datasets/org/kept.csv", b"a")
    s3_store.put_bytes("datasets/org/erased.csv", b"b")
    for key in ("datasets/org/kept.csv", "datasets/org/erased.csv"):
        s3_store.file_path(key)
    removed = s3_store.forget_local_copies({f"{kept}/a1"}, {"datasets/org/kept.csv"})
    assert removed == 2
    assert set(s3_store.cache.entry_keys()) == {("models", f"{kept}/a1"), ("data", "datasets/org/kept.csv")}
