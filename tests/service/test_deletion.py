"""Deleting datasets, models and evaluations: who may, what refuses it (409 naming the caller's own
objects), what `cascade` takes along, tombstones in lineage, the journal that makes it crash-safe
(a real kill -9 between the commit and the file removal), and retention of notes files."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest

from tests.service.helpers import (
    REPO_ROOT,
    SMALL_JOB,
    bearer,
    error_of,
    notes_csv,
    stored_file,
    stored_model,
    upload,
    wait_for_job,
)


@dataclass
class Hospital:
    organisation_id: str
    keys: dict[str, str]
    dataset: str
    model: str  # trained for real, once: the other models are copies of it

    def headers(self, role: str = "trainer") -> dict[str, str]:
        return bearer(self.keys[role])


@pytest.fixture(scope="module")
def hospital(client, database, workers) -> Hospital:
    workers.ensure_running()
    from core.db.models import Role
    from core.services.auth import create_key, create_organisation

    with database.transaction() as session:
        organisation, admin = create_organisation(session, f"Deleting hospital {uuid.uuid4().hex[:8]}")
        keys = {"admin": admin}
        for role in (Role.trainer, Role.predictor):
            _, keys[role.value] = create_key(session, role, role.value, organisation_id=organisation.id)
    trainer = bearer(keys["trainer"])
    dataset = upload(client, keys["trainer"], notes_csv(40, seed=951)).json()["id"]
    body = {"train_dataset_id": dataset, "method": "lora", "hyperparameters": SMALL_JOB}
    job = client.post("/jobs/finetune", json=body, headers=trainer).json()
    finished = wait_for_job(client, keys["trainer"], job["id"])
    assert finished["status"] == "succeeded", finished
    return Hospital(organisation.id, keys, dataset, finished["model_id"])


def copy_model(
    database, settings, hospital: Hospital, *, parent: str | None = None, dataset: str | None = None
):
    """A model row and files copied from the hospital's trained model: a child of `parent` when given."""
    from core.db.base import new_id, utcnow
    from core.db.models import Job, JobKind, JobStatus, Model

    with database.session() as session:
        source = session.get(Model, hospital.model)
        source_dir = stored_model(settings, source.path)
        job_id, model_id = new_id(), new_id()
        session.add(
            Job(
                id=job_id,
                organisation_id=hospital.organisation_id,
                kind=JobKind.finetune,
                status=JobStatus.succeeded,
                method=source.method,
                stage=2 if parent else 1,
                train_dataset_id=dataset or hospital.dataset,
                parent_model_id=parent,
                hyperparameters={},
                output_model_id=model_id,
                created_at=utcnow(),
            )
        )
        session.flush()
        session.add(
            Model(
                id=model_id,
                organisation_id=hospital.organisation_id,
                job_id=job_id,
                parent_id=parent,
                method=source.method,
                stage=2 if parent else 1,
                base_model=source.base_model,
                path=model_id,
                train_dataset_id=dataset or hospital.dataset,
                hyperparameters=source.hyperparameters,
                data_summary=source.data_summary,
                metrics=source.metrics,
                threshold=source.threshold,
                manifest=source.manifest,
                created_at=utcnow(),
            )
        )
        session.commit()
    shutil.copytree(source_dir, stored_model(settings, model_id))
    return model_id


def queued_job(database, hospital: Hospital, **values) -> str:
    """A queued job row that no worker is sent (it stays queued for the test)."""
    from core.db.base import new_id, utcnow
    from core.db.models import Job, JobKind, JobStatus

    fields = {
        "id": new_id(),
        "organisation_id": hospital.organisation_id,
        "kind": JobKind.finetune,
        "status": JobStatus.queued,
        "method": "lora",
        "stage": 1,
        "train_dataset_id": hospital.dataset,
        "hyperparameters": SMALL_JOB,
        "output_model_id": new_id(),
        "created_at": utcnow(),
    }
    with database.transaction() as session:
        session.add(Job(**{**fields, **values}))
    return fields["id"] if "id" not in values else values["id"]


def journal(database) -> list[str]:
    from core.db.models import PendingFileDeletion

    with database.session() as session:
        return [entry.path for entry in session.query(PendingFileDeletion)]


def model_dir(database, settings, model_id: str):
    from core.db.models import Model

    with database.session() as session:
        return stored_model(settings, session.get(Model, model_id).path)


def new_dataset(client, hospital: Hospital, seed: int) -> str:
    response = upload(client, hospital.keys["trainer"], notes_csv(30, seed=seed))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_only_a_trainer_or_admin_deletes(client, database, settings, hospital):
    model = copy_model(database, settings, hospital)
    for path in (f"/models/{model}", f"/datasets/{hospital.dataset}"):
        refused = client.delete(path, headers=hospital.headers("predictor"))
        assert refused.status_code == 403 and error_of(refused)["code"] == "insufficient_role"
    deleted = client.delete(f"/models/{model}", headers=hospital.headers("admin"))
    assert deleted.status_code == 200, deleted.text


def test_a_model_with_children_is_409_and_cascade_takes_them_all(client, database, settings, hospital):
    first = copy_model(database, settings, hospital)
    second = copy_model(database, settings, hospital, parent=first)
    third = copy_model(database, settings, hospital, parent=second)
    directories = [model_dir(database, settings, model) for model in (first, second, third)]
    refused = client.delete(f"/models/{first}", headers=hospital.headers())
    assert refused.status_code == 409, refused.text
    error = error_of(refused)
    assert error["code"] == "model_in_use" and set(error["details"]["models"]) == {second, third}
    assert all(directory.is_dir() for directory in directories)
    assert client.get(f"/models/{first}", headers=hospital.headers()).status_code == 200

    deleted = client.delete(f"/models/{first}?cascade=true", headers=hospital.headers())
    assert deleted.status_code == 200, deleted.text
    assert set(deleted.json()["models"]) == {first, second, third}
    for model, directory in zip((first, second, third), directories, strict=True):
        assert client.get(f"/models/{model}", headers=hospital.headers()).status_code == 404
        assert not directory.exists()
    assert not journal(database)
    listed = {item["id"] for item in client.get("/models", headers=hospital.headers()).json()["data"]}
    assert not listed & {first, second, third}
    answer = client.post(
        "/predict", json={"model_id": first, "texts": ["a note"]}, headers=hospital.headers()
    )
    assert answer.status_code == 404


def test_a_model_a_queued_job_continues_is_409_and_cascade_cancels_the_job(
    client, database, settings, hospital
):
    parent = copy_model(database, settings, hospital)
    job = queued_job(database, hospital, parent_model_id=parent, stage=2)
    refused = client.delete(f"/models/{parent}", headers=hospital.headers())
    assert refused.status_code == 409 and error_of(refused)["details"]["jobs"] == [job]
    deleted = client.delete(f"/models/{parent}?cascade=true", headers=hospital.headers())
    assert deleted.status_code == 200 and deleted.json()["cancelled_jobs"] == [job]
    assert client.get(f"/jobs/{job}", headers=hospital.headers()).json()["status"] == "cancelled"


def test_a_dataset_a_queued_job_reads_is_409_and_the_models_trained_on_it_stay(
    client, database, settings, hospital
):
    dataset = new_dataset(client, hospital, seed=952)
    model = copy_model(database, settings, hospital, dataset=dataset)
    job = queued_job(database, hospital, train_dataset_id=dataset)
    file = stored_file(settings, client_dataset_path(database, dataset))
    refused = client.delete(f"/datasets/{dataset}", headers=hospital.headers())
    assert refused.status_code == 409, refused.text
    assert error_of(refused)["code"] == "dataset_in_use" and error_of(refused)["details"]["jobs"] == [job]
    assert file.is_file()

    deleted = client.delete(f"/datasets/{dataset}?cascade=true", headers=hospital.headers())
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {
        "datasets": [dataset],
        "models": [],
        "evaluations": [],
        "cancelled_jobs": [job],
        "kept_models": [model],  # named: its weights were learnt from the deleted notes
    }
    assert not file.exists() and not journal(database)
    assert client.get(f"/datasets/{dataset}", headers=hospital.headers()).status_code == 404
    # The model stays; its lineage shows the dataset's tombstone, not a dangling id.
    kept = client.get(f"/models/{model}", headers=hospital.headers())
    assert kept.status_code == 200
    entry = kept.json()["lineage"][0]
    assert entry["train_dataset"]["id"] == dataset and entry["train_dataset"]["deleted_at"] is not None
    # The same bytes may be uploaded again: a new dataset, not the tombstone.
    again = upload(client, hospital.keys["trainer"], notes_csv(30, seed=952))
    assert again.status_code == 201 and again.json()["id"] != dataset
    refused = client.post(
        "/jobs/finetune", json={"train_dataset_id": dataset, "method": "lora"}, headers=hospital.headers()
    )
    assert refused.status_code == 404 and error_of(refused)["code"] == "dataset_not_found"


def test_delete_models_takes_every_model_learnt_from_the_dataset_and_no_other(
    client, database, settings, hospital
):
    dataset = new_dataset(client, hospital, seed=953)
    trained = copy_model(database, settings, hospital, dataset=dataset)
    child = copy_model(database, settings, hospital, parent=trained)  # fine-tuned on other notes
    unrelated = copy_model(database, settings, hospital)
    directories = [model_dir(database, settings, model) for model in (trained, child)]
    reader = queued_job(database, hospital, parent_model_id=child, stage=2)
    refused = client.delete(f"/datasets/{dataset}?delete_models=true", headers=hospital.headers())
    assert refused.status_code == 409 and error_of(refused)["details"]["jobs"] == [reader]

    deleted = client.delete(
        f"/datasets/{dataset}?delete_models=true&cascade=true", headers=hospital.headers()
    )
    assert deleted.status_code == 200, deleted.text
    answer = deleted.json()
    assert sorted(answer.pop("models")) == sorted([trained, child])
    assert answer == {"datasets": [dataset], "evaluations": [], "cancelled_jobs": [reader], "kept_models": []}
    assert not any(directory.exists() for directory in directories)
    assert client.get(f"/models/{unrelated}", headers=hospital.headers()).status_code == 200


def test_without_delete_models_the_models_learnt_from_it_are_named(client, database, settings, hospital):
    dataset = new_dataset(client, hospital, seed=954)
    trained = copy_model(database, settings, hospital, dataset=dataset)
    child = copy_model(database, settings, hospital, parent=trained)
    deleted = client.delete(f"/datasets/{dataset}", headers=hospital.headers())
    assert deleted.status_code == 200 and deleted.json()["models"] == []
    assert deleted.json()["kept_models"] == [trained, child]


def test_deleting_an_evaluation_removes_its_scores(client, database, settings, hospital):
    from core.db.models import Evaluation, Job

    body = {"test_dataset_id": hospital.dataset, "models": ["base", hospital.model], "n_resamples": 100}
    job = client.post("/jobs/evaluate", json=body, headers=hospital.headers()).json()
    evaluation = wait_for_job(client, hospital.keys["trainer"], job["id"])["evaluation_id"]
    with database.session() as session:
        arrays = stored_file(settings, session.get(Evaluation, evaluation).arrays_path)
    assert arrays.is_file()
    with database.transaction() as session:  # what a person may have typed about the patients
        evaluation_job = session.get(Job, job["id"])
        evaluation_job.name = "ward 7 follow-up, Mrs Example"
        evaluation_job.evaluation_options = {
            **evaluation_job.evaluation_options,
            "subgroup_columns": ["ward"],
        }
    deleted = client.delete(f"/evaluations/{evaluation}", headers=hospital.headers())
    assert deleted.status_code == 200 and deleted.json()["evaluations"] == [evaluation]
    assert not arrays.exists()
    with database.session() as session:
        evaluation_job = session.get(Job, job["id"])
        assert evaluation_job.name is None and "subgroup_columns" not in evaluation_job.evaluation_options
    for path in (f"/evaluations/{evaluation}", f"/evaluations/{evaluation}/plots/roc.png"):
        assert client.get(path, headers=hospital.headers()).status_code == 404
    assert client.delete(f"/evaluations/{evaluation}", headers=hospital.headers()).status_code == 404
    with database.session() as session:
        tombstone = session.get(Evaluation, evaluation)
        assert tombstone.deleted_at is not None and tombstone.report == {}


def test_the_audit_keeps_its_rows_when_the_model_goes(client, database, settings, hospital):
    from core.db.models import PredictionAudit

    model = copy_model(database, settings, hospital)
    answer = client.post(
        "/predict", json={"model_id": model, "texts": ["a note"]}, headers=hospital.headers()
    )
    assert answer.status_code == 200, answer.text
    assert client.delete(f"/models/{model}", headers=hospital.headers()).status_code == 200
    with database.session() as session:
        rows = session.query(PredictionAudit).filter(PredictionAudit.model_id == model).all()
    assert len(rows) == 1 and rows[0].organisation_id == hospital.organisation_id


CRASHING_DELETION = """
import os, signal, sys
from core.db.session import Database
from core.services import deletion
from core.settings import Settings

model_id, organisation_id, crash_at = sys.argv[1:4]
settings = Settings()
if crash_at == "file_removal":
    # The real kill -9, at the moment the committed deletion starts removing files.
    deletion._remove = lambda store, entry: os.kill(os.getpid(), signal.SIGKILL)
database = Database(settings.sqlalchemy_url)
with database.session() as session:
    deletion.delete_model(session, model_id, organisation_id=organisation_id, cascade=True)
    if crash_at == "commit":
        os.kill(os.getpid(), signal.SIGKILL)
    deletion.commit_and_remove_files(session, settings)
"""


def delete_and_crash(service_env, model_id: str, organisation_id: str, crash_at: str) -> None:
    process = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CRASHING_DELETION), model_id, organisation_id, crash_at],
        cwd=REPO_ROOT,
        env=service_env,
        capture_output=True,
        timeout=120,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]


def test_a_kill_before_the_commit_leaves_the_model_whole(client, database, settings, service_env, hospital):
    model = copy_model(database, settings, hospital)
    directory = model_dir(database, settings, model)
    delete_and_crash(service_env, model, hospital.organisation_id, "commit")
    assert client.get(f"/models/{model}", headers=hospital.headers()).status_code == 200
    assert (directory / "manifest.json").is_file() and not journal(database)


def test_a_kill_between_the_commit_and_the_file_removal_is_finished_by_the_sweeper(
    client, database, settings, service_env, hospital
):
    from worker.runtime import WorkerRuntime
    from worker.sweeper import finish_pending_deletions

    parent = copy_model(database, settings, hospital)
    child = copy_model(database, settings, hospital, parent=parent)
    directories = [model_dir(database, settings, model) for model in (parent, child)]
    delete_and_crash(service_env, parent, hospital.organisation_id, "file_removal")
    # Gone as rows (tombstones), still on disk, but every file is accounted for by the journal.
    for model in (parent, child):
        assert client.get(f"/models/{model}", headers=hospital.headers()).status_code == 404
    assert all(directory.is_dir() for directory in directories)
    assert sorted(journal(database)) == sorted(directory.name for directory in directories)
    runtime = WorkerRuntime(settings)
    try:
        finish_pending_deletions(runtime)
    finally:
        runtime.database.dispose()
    assert not any(directory.exists() for directory in directories) and not journal(database)


def client_dataset_path(database, dataset_id: str) -> str:
    from core.db.models import Dataset

    with database.session() as session:
        return session.get(Dataset, dataset_id).path


def test_retention_removes_old_notes_files_and_keeps_the_rest(client, database, settings, hospital):
    from types import SimpleNamespace

    from sqlalchemy import update

    from core.db.base import utcnow
    from core.db.models import Dataset
    from core.services.deletion import remove_pending_files
    from core.services.retention import apply_retention, retained_until

    old, recent = new_dataset(client, hospital, seed=953), new_dataset(client, hospital, seed=954)
    model = copy_model(database, settings, hospital, dataset=old)
    files = {
        dataset: stored_file(settings, client_dataset_path(database, dataset)) for dataset in (old, recent)
    }
    with database.transaction() as session:
        session.execute(
            update(Dataset).where(Dataset.id == old).values(created_at=utcnow() - timedelta(days=40))
        )
    with database.session() as session:
        expired = apply_retention(session, days=30)
        assert old in expired and recent not in expired
        remove_pending_files(session, settings)
    assert not files[old].exists() and files[recent].is_file()

    row = client.get(f"/datasets/{old}", headers=hospital.headers()).json()
    assert row["file_deleted_at"] is not None and row["rows"] == 30  # the summary stays
    assert client.get(f"/models/{model}", headers=hospital.headers()).status_code == 200
    refused = client.post(
        "/jobs/finetune", json={"train_dataset_id": old, "method": "lora"}, headers=hospital.headers()
    )
    assert refused.status_code == 409 and error_of(refused)["code"] == "dataset_file_deleted"

    with database.session() as session:
        rows = [session.get(Dataset, dataset) for dataset in (old, recent)]
        due = retained_until(
            session,
            SimpleNamespace(dataset_retention_days=30),
            rows,
            organisation_id=hospital.organisation_id,
        )
    assert due[old] is None
    assert due[recent] == rows[1].created_at + timedelta(days=30)
    # A deletion of a dataset whose file retention already removed has no file to remove.
    assert client.delete(f"/datasets/{old}", headers=hospital.headers()).status_code == 200
    assert not journal(database)


def test_retention_is_off_by_default(database, settings):
    from core.services.retention import apply_retention, retention_days

    assert retention_days(settings) is None
    with database.session() as session:
        assert apply_retention(session, retention_days(settings)) == []


def test_notetune_orgs_create_prints_a_working_admin_key(client, capsys):
    from cli.main import main

    name = f"CLI hospital {uuid.uuid4().hex[:8]}"
    assert main(["orgs", "create", name]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert client.get("/keys", headers=bearer(key)).json()["count"] == 1
    assert main(["orgs", "create", name]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["keys", "create", "--role", "trainer", "--org", name]) == 0
    trainer = capsys.readouterr().out.strip().splitlines()[-1]
    assert client.get("/datasets", headers=bearer(trainer)).json()["count"] == 0
    assert main(["keys", "create", "--role", "trainer", "--org", "no such hospital"]) == 2


def test_a_deleted_models_job_forgets_the_name_it_was_given(client, database, settings, hospital):
    from sqlalchemy import select

    from core.db.models import Job

    model = copy_model(database, settings, hospital)
    with database.transaction() as session:
        job = session.scalar(select(Job).where(Job.output_model_id == model))
        job.name = "Mrs Example's ward, second opinion"
        job_id = job.id
    assert client.delete(f"/models/{model}", headers=hospital.headers()).status_code == 200
    shown = client.get(f"/jobs/{job_id}", headers=hospital.headers()).json()
    assert shown["name"] is None


def test_an_embedded_deletion_leaves_no_copy_of_the_row_in_the_database_files(tmp_path):
    """SQLite keeps a deleted row's text in free pages and in the write-ahead log unless told not to."""
    from sqlalchemy import text

    from core.db.base import new_id, utcnow
    from core.db.migrations import upgrade
    from core.db.models import Dataset
    from core.db.session import Database
    from core.services.auth import default_organisation
    from core.services.deletion import commit_and_remove_files, delete_dataset
    from core.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", database_url=None, broker_url=None)
    settings.ensure_directories()
    upgrade(settings)
    database = Database(settings.sqlalchemy_url)
    # Another process of the service (the worker) keeps the database open: SQLite then keeps the
    # write-ahead log, and whatever pages it holds, after this process is done.
    other_process = Database(settings.sqlalchemy_url)
    name = "Mrs Canary-Example MRN 99887766.csv"
    try:
        with other_process.session() as session:
            session.execute(text("SELECT 1"))
        with database.transaction() as session:
            organisation_id = default_organisation(session).id
            dataset = Dataset(
                id=new_id(), organisation_id=organisation_id, name=name, sha256="0" * 64,
                path=f"datasets/{organisation_id}/x.csv", size_bytes=1, rows=1, class_counts={},
                # Large enough to spill into overflow pages, which the deletion frees.
                summary={"columns": [name] * 400}, created_at=utcnow(),
            )  # fmt: skip
            session.add(dataset)
        with database.session() as session:
            delete_dataset(session, dataset.id, organisation_id=organisation_id)
            commit_and_remove_files(session, settings)
        database.dispose()
        files = sorted(settings.data_dir.glob("notetune.sqlite3*"))
        assert len(files) > 1  # the database and its write-ahead log
        assert [path.name for path in files if name.encode() in path.read_bytes()] == []
    finally:
        database.dispose()
        other_process.dispose()
