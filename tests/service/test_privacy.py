"""A canary note string never reaches logs, broker messages or error bodies; the audit has hashes only."""

from __future__ import annotations

import csv
import hashlib
import io
import threading
import uuid

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.service.helpers import SMALL_JOB, bearer, notes_csv, rows_csv, upload, wait_for_job

CANARY = f"CANARY{uuid.uuid4().hex[:12]}"


def redis_contents(client: redis.Redis) -> bytes:
    """Every key and value in this session's Redis database, whatever the type."""
    chunks = []
    for key in client.scan_iter(count=1000):
        chunks.append(key)
        kind = client.type(key)
        if kind == b"string":
            chunks.append(client.get(key) or b"")
        elif kind == b"list":
            chunks.extend(client.lrange(key, 0, -1))
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                chunks.extend((field, value))
        elif kind == b"set":
            chunks.extend(client.smembers(key))
        elif kind == b"zset":
            chunks.extend(client.zrange(key, 0, -1))
    return b"\n".join(chunks)


class BrokerSampler:
    """Snapshots Redis every few milliseconds while a job is queued and running."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.samples: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(redis_contents(self.client))
            self._stop.wait(0.02)

    def __enter__(self) -> BrokerSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(redis_contents(self.client))
        self.client.close()


@pytest.fixture(scope="module")
def canary_model(client, keys, workers, redis_url) -> tuple[str, list[bytes]]:
    workers.ensure_running()
    trainer = keys["trainer"]
    dataset = upload(client, trainer, notes_csv(40, seed=401, canary=CANARY), "canary.csv")
    assert dataset.status_code in (200, 201)
    with BrokerSampler(redis_url) as sampler:
        body = {"train_dataset_id": dataset.json()["id"], "method": "lora", "hyperparameters": SMALL_JOB}
        job = client.post("/jobs/finetune", json=body, headers=bearer(trainer)).json()
        done = wait_for_job(client, trainer, job["id"])
    assert done["status"] == "succeeded", done["error"]
    return done["model_id"], sampler.samples


def test_canary_never_in_broker_messages(canary_model, settings):
    _, samples = canary_model
    # The sampler must have seen the task message itself for this check to mean anything.
    assert any(settings.queue_name.encode() in sample or b"training.run" in sample for sample in samples)
    assert all(CANARY.encode() not in sample for sample in samples)


def test_canary_never_in_error_bodies(client, keys, canary_model):
    trainer, predictor = bearer(keys["trainer"]), bearer(keys["predictor"])
    model_id, _ = canary_model
    bad_label = rows_csv([(f"note {CANARY}", 1), (f"other {CANARY}", "died")])
    short_row = f"Text,label\nfine,1\n{CANARY} without a label\n".encode()
    responses = [
        client.post("/datasets", files={"file": ("x.csv", bad_label, "text/csv")}, headers=trainer),
        client.post("/datasets", files={"file": ("x.csv", short_row, "text/csv")}, headers=trainer),
        client.post("/predict", json={"model_id": model_id, "texts": [CANARY * 400]}, headers=predictor),
        client.post("/predict", json={"model_id": model_id, "texts": CANARY}, headers=predictor),
        client.post("/predict", json={"model_id": CANARY, "texts": [CANARY]}, headers=predictor),
        client.post("/jobs/finetune", json={"train_dataset_id": CANARY, "method": "lora"}, headers=trainer),
        client.get(f"/jobs/{CANARY}", headers=trainer),
    ]
    for response in responses:
        assert 400 <= response.status_code < 500, response.text
        assert CANARY not in response.text


def audit_rows(database, model_id: str, after_id: int = 0) -> list:
    with database.session() as session:
        return session.execute(
            text(
                "SELECT id, note_sha256, output::text, api_key_id FROM prediction_audit "
                "WHERE model_id = :id AND id > :after ORDER BY id"
            ),
            {"id": model_id, "after": after_id},
        ).all()


def test_predictions_are_audited_without_the_note(client, keys, canary_model, database, settings):
    from core.services.audit import note_digest

    model_id, _ = canary_model
    note = f"Patient with stage IV disease {CANARY}"
    response = client.post(
        "/predict", json={"model_id": model_id, "texts": [note]}, headers=bearer(keys["predictor"])
    )
    assert response.status_code == 200
    assert CANARY not in response.text
    rows = audit_rows(database, model_id)
    digests = {row[1] for row in rows}
    # A keyed digest: the plain SHA-256 of a guessed note finds nothing.
    assert note_digest(settings, note) in digests
    assert hashlib.sha256(note.encode()).hexdigest() not in digests
    assert all(CANARY not in row[2] for row in rows)
    assert all(row[3] is not None for row in rows)


def test_n_predicted_notes_give_n_audit_rows(client, keys, canary_model, database, settings):
    import json

    from core.services.audit import note_digest
    from core.services.auth import hash_key

    model_id, _ = canary_model
    before = max([row[0] for row in audit_rows(database, model_id)], default=0)
    notes = [f"Patient {index}: stage {index % 4 + 1}, ECOG {index % 3}." for index in range(7)]
    response = client.post(
        "/predict", json={"model_id": model_id, "texts": notes}, headers=bearer(keys["predictor"])
    )
    assert response.status_code == 200, response.text
    rows = audit_rows(database, model_id, before)
    assert len(rows) == len(notes)
    assert [row[1] for row in rows] == [note_digest(settings, note) for note in notes]
    assert [json.loads(row[2]) for row in rows] == response.json()["predictions"]
    with database.session() as session:
        key_id = session.execute(
            text("SELECT id FROM api_keys WHERE key_hash = :h"), {"h": hash_key(keys["predictor"])}
        ).scalar_one()
    assert {row[3] for row in rows} == {key_id}


def test_audit_is_append_only(database, canary_model):
    statements = (
        "UPDATE prediction_audit SET model_id = 'x'",
        "DELETE FROM prediction_audit",
        "TRUNCATE prediction_audit",
    )
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"), database.transaction() as session:
            session.execute(text(statement))


def test_canary_never_in_logs_or_job_rows(canary_model, worker_log, api_log, database):
    for log in (worker_log, api_log):
        content = log.read_text(errors="replace")
        assert content, f"{log.name} is empty: the check would be meaningless"
        assert CANARY not in content
    with database.session() as session:
        rows = (
            session.execute(text("SELECT coalesce(error, '') || coalesce(metrics::text, '') FROM jobs"))
            .scalars()
            .all()
        )
    assert all(CANARY not in row for row in rows)


def test_everything_the_service_keeps_on_disk_is_owner_only(canary_model, settings):
    """Notes files, models, evaluation arrays (and, embedded, the database): no other local account
    may read them. The canary's notes file and model were written by the API and the worker."""
    import stat

    readable_by_others = [
        str(path.relative_to(settings.data_dir))
        for path in [settings.data_dir, *settings.data_dir.rglob("*")]
        if stat.S_IMODE(path.stat().st_mode) & 0o077
    ]
    assert readable_by_others == []
    assert any(settings.data_dir.rglob("*.csv")) and any(settings.data_dir.rglob("manifest.json"))


def everything_the_service_keeps(settings, database, redis_url, logs: list) -> dict[str, bytes]:
    """Every file under the data directory, every row of every table (as text), the broker's keys
    and values, and the logs: by where it was found."""
    kept = {str(path): path.read_bytes() for path in settings.data_dir.rglob("*") if path.is_file()}
    with database.session() as session:
        tables = session.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        ).scalars()
        for table in list(tables):
            rows = session.execute(text(f'SELECT t::text FROM "{table}" t')).scalars().all()
            kept[f"table {table}"] = "\n".join(rows).encode()
    broker = redis.Redis.from_url(redis_url)
    kept["broker"] = redis_contents(broker)
    broker.close()
    kept.update({str(log): log.read_bytes() for log in logs})
    return kept


def test_after_a_datasets_deletion_no_byte_of_its_planted_identifiers_is_kept(
    client, keys, workers, settings, database, redis_url, worker_log, api_log
):
    """Identifiers written in a few notes (and in the file's name) are found nowhere the service keeps
    once the dataset is deleted, though the model trained on it stays."""
    workers.ensure_running()
    trainer = keys["trainer"]
    marker = f"Qzerase{uuid.uuid4().hex[:8]}"
    identifiers = [f"{marker}son", f"MRN 9{uuid.uuid4().int % 10**7:07d}"]
    rows = list(csv.reader(io.StringIO(notes_csv(40, seed=402).decode())))[1:]
    for row in rows[:3]:  # a few notes, as a name and a record number would be
        row[0] = f"Patient {identifiers[0]} {identifiers[1]}. {row[0]}"
    dataset = upload(client, trainer, rows_csv(rows), f"{marker} ward list.csv").json()["id"]
    body = {"train_dataset_id": dataset, "method": "lora", "hyperparameters": SMALL_JOB}
    job = client.post("/jobs/finetune", json=body, headers=bearer(trainer)).json()
    done = wait_for_job(client, trainer, job["id"])
    assert done["status"] == "succeeded", done["error"]
    needles = [marker, marker.lower(), identifiers[1].split()[1]]
    before = everything_the_service_keeps(settings, database, redis_url, [worker_log, api_log])
    assert any(needle.encode() in content for content in before.values() for needle in needles)

    deleted = client.delete(f"/datasets/{dataset}", headers=bearer(trainer))
    assert deleted.status_code == 200 and deleted.json()["kept_models"] == [done["model_id"]]
    after = everything_the_service_keeps(settings, database, redis_url, [worker_log, api_log])
    found = [where for where, content in after.items() for needle in needles if needle.encode() in content]
    assert found == []
    model = client.get(f"/models/{done['model_id']}", headers=bearer(trainer))
    assert model.status_code == 200
