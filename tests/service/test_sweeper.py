"""Leftovers are swept: attempts that lost their job, models whose success never committed, files no
row names, and the messages Kombu's SQLAlchemy transport keeps after delivery."""

from __future__ import annotations

import os
import time

import pytest
import sqlalchemy as sa

from tests.service.helpers import attempt_dirs, model_row_without_training, registered_dataset, stored_file
from tests.service.test_reaper import new_job


@pytest.fixture(scope="module")
def dataset_id(database, settings, organisation_id) -> str:
    return registered_dataset(database, settings, organisation_id, seed=701, name="sweep.csv")


def model_dir(path) -> None:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("{}")


def test_only_the_attempt_holding_the_job_keeps_its_directory(database, runtime, dataset_id):
    from core.db.models import JobStatus
    from worker.sweeper import sweep_attempt_dirs

    job = new_job(database, dataset_id, status=JobStatus.running, attempt=2)
    store, model_id = runtime.store, job.output_model_id
    for attempt in (1, 2):
        model_dir(store.attempt_dir(model_id, attempt))
    partial = store.attempt_dir(model_id, 1).parent / f".tmp-{model_id}.a1-0badf00d"
    partial.mkdir()
    sweep_attempt_dirs(runtime)
    assert [path.name for path in attempt_dirs(store, model_id)] == [f"{model_id}.a2"]


def test_a_published_model_without_its_row_goes_once_the_job_ended(database, runtime, dataset_id):
    from core.db.models import JobStatus
    from worker.sweeper import sweep_orphan_models

    ended = new_job(database, dataset_id, status=JobStatus.failed, attempt=1)
    running = new_job(database, dataset_id, status=JobStatus.running, attempt=1)
    unknown = runtime.store.path_for("f" * 32)
    for path in (
        runtime.store.path_for(ended.output_model_id),
        runtime.store.path_for(running.output_model_id),
        unknown,
    ):
        model_dir(path)
    sweep_orphan_models(runtime)
    assert not runtime.store.path_for(ended.output_model_id).exists()
    assert runtime.store.path_for(running.output_model_id).exists()  # may be committing right now
    assert unknown.exists()  # no job names it: not ours to judge


def test_old_files_without_rows_are_swept(database, settings, runtime, dataset_id):
    from core.db.models import Dataset
    from worker.sweeper import sweep_data_files

    an_hour_ago = time.time() - 2 * settings.temp_max_age_s
    orphan = settings.datasets_root / ("0" * 64 + ".csv")
    partial = settings.datasets_root / ".upload.csv.1234abcd.tmp"
    arrays = settings.evaluations_root / ".x.npz.tmp.npz"
    fresh = settings.datasets_root / ("1" * 64 + ".csv")
    for path in (orphan, partial, arrays, fresh):
        path.write_bytes(b"Text,label\n")
    for path in (orphan, partial, arrays):
        os.utime(path, (an_hour_ago, an_hour_ago))
    with database.session() as session:
        kept = stored_file(settings, session.get(Dataset, dataset_id).path)
    os.utime(kept, (an_hour_ago, an_hour_ago))
    assert sweep_data_files(runtime, settings.temp_max_age_s) == 3
    assert kept.is_file() and fresh.is_file()
    assert not orphan.exists() and not partial.exists() and not arrays.exists()
    fresh.unlink()


def test_delivered_broker_messages_are_deleted(tmp_path):
    from kombu import Connection

    from worker.sweeper import delete_delivered_messages

    url = f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"
    with Connection(url) as connection:
        queue = connection.SimpleQueue("sweep")
        for number in range(4):
            queue.put({"job_id": str(number)})
        for _ in range(3):
            queue.get(timeout=5).ack()
        queue.close()
    engine = sa.create_engine(url.removeprefix("sqla+"))

    def messages() -> tuple[int, int]:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT visible FROM kombu_message")).scalars().all()
        return sum(1 for row in rows if row), sum(1 for row in rows if not row)

    try:
        assert messages() == (1, 3)  # Kombu keeps each delivered message as an invisible row
        assert delete_delivered_messages(url) == 3
        assert messages() == (1, 0)
    finally:
        engine.dispose()


def test_rows_whose_objects_are_gone_are_reported(database, runtime, organisation_id, dataset_id, caplog):
    from worker.sweeper import report_rows_without_objects

    before = report_rows_without_objects(runtime)
    _, model_id = model_row_without_training(database, organisation_id, dataset_id)
    with caplog.at_level("WARNING", logger="notetune.worker.sweeper"):
        assert report_rows_without_objects(runtime) == before + 1
    assert model_id in caplog.text
