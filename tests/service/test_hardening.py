"""Inputs and races that used to end in a 500 or a wrong outcome: each gets a 4xx/503 or the right state."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

from tests.service.helpers import (
    SMALL_JOB,
    bearer,
    default_organisation_id,
    error_of,
    model_row_without_training,
    notes_csv,
    upload,
)

SECRET = "Mrs Example SECRET-KEY-4410"


@pytest.fixture(scope="module")
def dataset_id(client, keys) -> str:
    response = upload(client, keys["trainer"], notes_csv(40, seed=301))
    assert response.status_code in (200, 201), response.text
    return response.json()["id"]


def test_nan_and_infinity_in_a_json_body_are_422(client, keys, dataset_id):
    trainer = {**bearer(keys["trainer"]), "content-type": "application/json"}
    for constant in ("NaN", "Infinity", "-Infinity"):
        # Written by hand, with the bare constants that Python's json module reads and writes.
        body = '{"train_dataset_id": "%s", "method": "lora", "hyperparameters": {"lr": %s}}'
        response = client.post(
            "/jobs/finetune", content=(body % (dataset_id, constant)).encode(), headers=trainer
        )
        assert response.status_code == 422, (constant, response.text)
        assert error_of(response)["code"] == "non_finite_number"


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_target_modules_the_base_model_lacks_are_refused_at_submit(client, keys, dataset_id, method):
    before = client.get("/jobs", headers=bearer(keys["trainer"])).json()["count"]
    hyperparameters = {**SMALL_JOB, "target_modules": ["query", "attention.no_such_layer"]}
    body = {"train_dataset_id": dataset_id, "method": method, "hyperparameters": hyperparameters}
    response = client.post("/jobs/finetune", json=body, headers=bearer(keys["trainer"]))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "unknown_target_modules"
    assert error["details"]["unknown"] == ["attention.no_such_layer"]
    assert client.get("/jobs", headers=bearer(keys["trainer"])).json()["count"] == before  # nothing queued


def test_a_dataset_name_keeps_no_bidi_override_or_zero_width_character(client, keys):
    name = "report\u202evsc.exe\u200b\u2066.csv"
    response = upload(client, keys["trainer"], notes_csv(30, seed=331), name)
    assert response.status_code in (200, 201), response.text
    assert response.json()["name"] == "reportvsc.exe.csv"


def test_nan_in_a_form_field_is_422(client, keys):
    response = client.post(
        "/jobs/finetune",
        data={"method": "lora", "hyperparameters": '{"weight_multiplier": NaN}'},
        files={"file": ("x.csv", notes_csv(40, seed=302), "text/csv")},
        headers=bearer(keys["trainer"]),
    )
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "non_finite_number"


def test_the_job_stores_validated_hyperparameters(client, keys, dataset_id, database):
    from core.db.models import Job

    trainer = bearer(keys["trainer"])
    hyperparameters = {**SMALL_JOB, "epochs": 1.0, "lr": "0.001"}
    body = {"train_dataset_id": dataset_id, "method": "lora", "hyperparameters": hyperparameters}
    response = client.post("/jobs/finetune", json=body, headers=trainer)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    client.post(f"/jobs/{job_id}/cancel", headers=trainer)  # only its stored row matters here
    with database.session() as session:
        stored = session.get(Job, job_id).hyperparameters
    assert set(stored) == set(hyperparameters)
    assert stored["epochs"] == 1 and isinstance(stored["epochs"], int)
    assert stored["lr"] == 0.001


def test_a_note_with_a_lone_surrogate_is_422_naming_its_index(client, keys):
    # json.dumps escapes the surrogate as \ud800 (a client's UTF-8 encoder would refuse it).
    body = json.dumps({"model_id": "0" * 32, "texts": ["a readable note", "broken \ud800 note"]})
    headers = {**bearer(keys["predictor"]), "content-type": "application/json"}
    response = client.post("/predict", content=body.encode("ascii"), headers=headers)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "invalid_text" and error["details"]["indices"] == [1]
    assert "broken" not in response.text


@pytest.fixture
def model_without_files(database, dataset_id):
    """A model row whose directory is not in the store (a lost volume, a manual clean-up)."""
    from core.db.models import Job, Model

    job_id, model_id = model_row_without_training(database, default_organisation_id(database), dataset_id)
    yield model_id
    with database.transaction() as session:
        session.delete(session.get(Model, model_id))
        session.flush()
        session.delete(session.get(Job, job_id))


def test_predicting_with_a_model_whose_files_are_missing_is_503(client, keys, model_without_files):
    body = {"model_id": model_without_files, "texts": ["a note"]}
    response = client.post("/predict", json=body, headers=bearer(keys["predictor"]))
    assert response.status_code == 503, response.text
    assert error_of(response)["code"] == "model_unavailable"


def test_the_last_active_admin_key_cannot_be_revoked(client, keys, database):
    from core.db.models import ApiKey, Role
    from core.services.auth import hash_key

    admin = bearer(keys["admin"])
    with database.session() as session:
        own = session.query(ApiKey).filter(ApiKey.key_hash == hash_key(keys["admin"])).one()
        own_id = own.id
    spare = client.post("/keys", json={"role": "admin", "name": "spare admin"}, headers=admin)
    assert spare.status_code == 201
    with database.session() as session:
        others = [
            key.id
            for key in session.query(ApiKey).filter(
                ApiKey.role == Role.admin,
                ApiKey.revoked_at.is_(None),
                ApiKey.organisation_id == own.organisation_id,
            )
            if key.id != own_id
        ]
    assert spare.json()["id"] in others
    for key_id in others:  # with two admins left, revoking one is fine
        assert client.delete(f"/keys/{key_id}", headers=admin).status_code == 204
    refused = client.delete(f"/keys/{own_id}", headers=admin)
    assert refused.status_code == 409, refused.text
    assert error_of(refused)["code"] == "last_admin_key"
    assert client.get("/keys", headers=admin).status_code == 200


def test_a_cancel_after_the_last_step_wins_over_success(database, dataset_id):
    from core.db.base import new_id, utcnow
    from core.db.models import Job, JobKind, JobStatus, Model
    from core.services import runs

    job = Job(
        id=new_id(),
        organisation_id=default_organisation_id(database),
        kind=JobKind.finetune,
        status=JobStatus.running,
        attempt=1,
        cancel_requested=True,
        method="lora",
        stage=1,
        train_dataset_id=dataset_id,
        hyperparameters={},
        output_model_id=new_id(),
        heartbeat_at=utcnow(),
        created_at=utcnow(),
    )
    with database.transaction() as session:
        session.add(job)
    manifest = {"method": "lora", "stage": 1, "base_model": "b", "hyperparameters": {}, "threshold": 0.5}
    with database.transaction() as session:
        assert runs.record_finetune_success(session, job, 1, manifest, job.output_model_id) is False
        assert runs.record_cancelled_if_requested(session, job.id, 1) is True
    with database.session() as session:
        assert session.get(Job, job.id).status == JobStatus.cancelled
        assert session.get(Model, job.output_model_id) is None


def test_concurrent_uploads_of_one_file_give_one_dataset(database, settings, organisation_id):
    from core.services.datasets import register_dataset

    content = notes_csv(30, seed=303)
    results = {}
    with database.session() as first:
        dataset, created = register_dataset(
            first, settings, content, "a.csv", organisation_id=organisation_id
        )
        assert created

        def second_upload() -> None:
            with database.session() as second:
                row, was_created = register_dataset(
                    second, settings, content, "b.csv", organisation_id=organisation_id
                )
                second.commit()
                results["second"] = (row.id, was_created)

        # The second insert waits on the first one's uncommitted row, then finds it committed.
        thread = threading.Thread(target=second_upload)
        thread.start()
        thread.join(timeout=2)
        first.commit()
        thread.join(timeout=60)
    assert results["second"] == (dataset.id, False)


def test_a_rolled_back_upload_keeps_a_file_a_committed_row_points_at(database, settings, organisation_id):
    from core.db.models import Dataset
    from core.services.datasets import dataset_file, forget_dataset_file, register_dataset
    from models_store.errors import ObjectMissing

    with database.session() as session:
        committed, _ = register_dataset(
            session, settings, notes_csv(30, seed=304), "kept.csv", organisation_id=organisation_id
        )
        session.commit()
        kept = Dataset(organisation_id=organisation_id, sha256=committed.sha256, path=committed.path)
        forget_dataset_file(session, settings, kept)
        assert dataset_file(settings, committed).is_file()

        rolled_back, created = register_dataset(
            session, settings, notes_csv(30, seed=305), "gone.csv", organisation_id=organisation_id
        )
        assert created and dataset_file(settings, rolled_back).is_file()
        session.rollback()
        forget_dataset_file(session, settings, rolled_back)
        with pytest.raises(ObjectMissing):
            dataset_file(settings, rolled_back)


def test_old_queued_jobs_are_picked_for_a_resend_once_per_period(database, settings):
    from core.db.base import new_id, utcnow
    from core.db.models import Job, JobKind, JobStatus
    from core.services.jobs import queued_jobs_to_resend

    with database.session() as session:
        # Never committed: the running worker's own monitor cannot see (and send) this job.
        job = Job(
            id=new_id(),
            organisation_id=default_organisation_id(database),
            kind=JobKind.finetune,
            status=JobStatus.queued,
            hyperparameters={},
            created_at=utcnow(),
        )
        session.add(job)
        session.flush()
        assert job.id not in {item.id for item in queued_jobs_to_resend(session, settings)}
        later = utcnow() + timedelta(seconds=settings.resend_queued_after_s + 60)
        assert job.id in {item.id for item in queued_jobs_to_resend(session, settings, later)}
        assert job.id not in {item.id for item in queued_jobs_to_resend(session, settings, later)}
        session.rollback()


def test_validation_errors_mask_caller_chosen_keys(client, keys, dataset_id):
    trainer = bearer(keys["trainer"])
    extra = client.post(
        "/jobs/finetune",
        json={"train_dataset_id": dataset_id, "method": "lora", SECRET: 1},
        headers=trainer,
    )
    assert extra.status_code == 422 and "SECRET-KEY" not in extra.text
    assert ["<key>"] in [problem["location"] for problem in error_of(extra)["details"]["errors"]]
    thresholds = client.post(
        "/jobs/evaluate",
        json={"test_dataset_id": dataset_id, "models": ["base"], "thresholds": {SECRET: "high"}},
        headers=trainer,
    )
    assert thresholds.status_code == 422 and "SECRET-KEY" not in thresholds.text
    locations = [problem["location"] for problem in error_of(thresholds)["details"]["errors"]]
    assert ["thresholds", "<key>"] in locations
    listed = client.post(
        "/predict", json={"model_id": "0" * 32, "texts": ["ok", 5]}, headers=bearer(keys["predictor"])
    )
    assert ["body", "texts", "1"] in [p["location"] for p in error_of(listed)["details"]["errors"]]
