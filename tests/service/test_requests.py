"""Bad uploads and bad requests get the right 4xx in the one error shape, and store nothing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.service.helpers import (
    SMALL_JOB,
    bearer,
    default_organisation_id,
    error_of,
    notes_csv,
    rows_csv,
    stored_datasets,
    upload,
    wait_for_job,
)

BAD_CSVS = [
    ("empty file", b"", "empty_file"),
    ("header only", b"Text,label\n", "no_rows"),
    ("missing Text column", rows_csv([("a note", 1)], header=("Note", "label")), "missing_column"),
    ("missing label column", rows_csv([("a note", "x")], header=("Text", "outcome")), "missing_column"),
    ("label not 0/1", rows_csv([("a note", 1), ("another note", 2)]), "bad_label"),
    ("empty note", rows_csv([("a note", 1), ("  ", 0)]), "empty_text"),
    ("short row", b"Text,label\nonly text\n", "malformed_row"),
    ("not UTF-8", b"Text,label\n\xff\xfe caf\xe9,1\n", "not_utf8"),
    ("broken quoting", b'Text,label\n"an unterminated note,1\n', "malformed_csv"),
]


@pytest.mark.parametrize(("case", "content", "code"), BAD_CSVS, ids=[case for case, _, _ in BAD_CSVS])
def test_bad_csv_upload_is_rejected_and_nothing_is_stored(client, keys, settings, case, content, code):
    before = stored_datasets(client, keys["trainer"], settings)
    response = upload(client, keys["trainer"], content)
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == code
    assert stored_datasets(client, keys["trainer"], settings) == before


def test_same_file_twice_gives_the_same_dataset(client, keys):
    content = notes_csv(30, seed=101)
    first = upload(client, keys["trainer"], content, "a.csv")
    second = upload(client, keys["trainer"], content, "renamed.csv")
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["rows"] == 30 and sum(first.json()["class_counts"].values()) == 30


def test_upload_over_the_size_limit_is_413_and_not_stored(settings, database, keys):
    from api.main import create_app

    small = settings.model_copy(update={"max_upload_bytes": 2048})
    with TestClient(create_app(small), raise_server_exceptions=False) as limited:
        before = stored_datasets(limited, keys["trainer"], settings)
        response = upload(limited, keys["trainer"], notes_csv(60, seed=102))
        assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"
        huge = upload(limited, keys["trainer"], b"Text,label\n" + b"x" * (2 * 1024 * 1024) + b",1\n")
        assert huge.status_code == 413 and error_of(huge)["code"] == "payload_too_large"
        assert stored_datasets(limited, keys["trainer"], settings) == before


@pytest.fixture(scope="module")
def datasets(client, keys) -> dict[str, str]:
    def dataset_id(content: bytes) -> str:
        response = upload(client, keys["trainer"], content)
        assert response.status_code in (200, 201), response.text
        return response.json()["id"]

    return {
        "good": dataset_id(notes_csv(40, seed=103)),
        "one_class": dataset_id(rows_csv([(f"note number {i}", 0) for i in range(30)])),
        "tiny": dataset_id(notes_csv(12, seed=104)),
    }


@pytest.fixture(scope="module")
def lora_model(client, keys, workers, datasets) -> str:
    workers.ensure_running()
    body = {"train_dataset_id": datasets["good"], "method": "lora", "hyperparameters": SMALL_JOB}
    job = client.post("/jobs/finetune", json=body, headers=bearer(keys["trainer"])).json()
    done = wait_for_job(client, keys["trainer"], job["id"])
    assert done["status"] == "succeeded", done["error"]
    return done["model_id"]


@pytest.fixture(scope="module")
def failed_job_model_id(database, datasets) -> str:
    """A model id whose job failed: the row is written directly, as a crashed run would leave it."""
    from core.db.base import new_id, utcnow
    from core.db.models import Job, JobKind, JobStatus

    output_id = new_id()
    with database.transaction() as session:
        session.add(
            Job(
                id=new_id(),
                organisation_id=default_organisation_id(database),
                kind=JobKind.finetune,
                status=JobStatus.failed,
                method="lora",
                stage=1,
                train_dataset_id=datasets["good"],
                hyperparameters={},
                output_model_id=output_id,
                error="the job failed",
                created_at=utcnow(),
            )
        )
    return output_id


def finetune_cases(datasets, lora_model, failed_job_model_id):
    good = datasets["good"]
    return [
        ("unknown dataset", {"train_dataset_id": "0" * 32, "method": "lora"}, 404, "dataset_not_found"),
        ("no method on a first fine-tune", {"train_dataset_id": good}, 422, "method_required"),
        ("unknown method", {"train_dataset_id": good, "method": "sgd"}, 422, "validation_error"),
        ("unknown field", {"train_dataset_id": good, "method": "lora", "epochs": 3}, 422, "validation_error"),
        (
            "unknown hyperparameter",
            {"train_dataset_id": good, "method": "lora", "hyperparameters": {"epochz": 3}},
            422,
            "invalid_hyperparameters",
        ),
        (
            "bad hyperparameter value",
            {"train_dataset_id": good, "method": "full", "hyperparameters": {"epochs": 0}},
            422,
            "invalid_hyperparameters",
        ),
        (
            "base model outside the allowed list",
            {"train_dataset_id": good, "method": "lora", "base_model": "/etc"},
            422,
            "base_model_not_allowed",
        ),
        ("one class only", {"train_dataset_id": datasets["one_class"], "method": "lora"}, 422, "one_class"),
        ("too few rows", {"train_dataset_id": datasets["tiny"], "method": "lora"}, 422, "too_few_rows"),
        ("unknown parent", {"train_dataset_id": good, "parent_model_id": "f" * 32}, 404, "model_not_found"),
        (
            "parent whose job failed",
            {"train_dataset_id": good, "parent_model_id": failed_job_model_id},
            409,
            "parent_not_ready",
        ),
        (
            "method differs from the parent's",
            {"train_dataset_id": good, "parent_model_id": lora_model, "method": "full"},
            422,
            "method_mismatch",
        ),
        (
            "base model differs from the parent's",
            {"train_dataset_id": good, "parent_model_id": lora_model, "base_model": "other"},
            422,
            "base_model_mismatch",
        ),
    ]


def test_bad_finetune_requests(client, keys, datasets, lora_model, failed_job_model_id):
    trainer = bearer(keys["trainer"])
    jobs_before = client.get("/jobs", headers=trainer).json()["count"]
    for case, body, status, code in finetune_cases(datasets, lora_model, failed_job_model_id):
        response = client.post("/jobs/finetune", json=body, headers=trainer)
        assert response.status_code == status, (case, response.text)
        assert error_of(response)["code"] == code, case
    assert client.get("/jobs", headers=trainer).json()["count"] == jobs_before


def test_error_messages_name_the_problem(client, keys, datasets, lora_model):
    trainer = bearer(keys["trainer"])
    mismatch = client.post(
        "/jobs/finetune",
        json={"train_dataset_id": datasets["good"], "parent_model_id": lora_model, "method": "adalora"},
        headers=trainer,
    )
    assert (
        "'lora'" in mismatch.json()["error"]["message"] and "'adalora'" in mismatch.json()["error"]["message"]
    )
    unknown = client.post(
        "/jobs/finetune",
        json={"train_dataset_id": datasets["good"], "method": "lora", "hyperparameters": {"epochz": 3}},
        headers=trainer,
    )
    assert "epochz" in unknown.json()["error"]["message"]


def test_validation_errors_never_echo_the_input(client, keys):
    secret = "Mrs Example, 58, metastatic disease SECRET-INPUT-7731"
    response = client.post(
        "/jobs/finetune",
        json={"train_dataset_id": ["not", "a", "string"], "name": {"x": secret}, "method": secret},
        headers=bearer(keys["trainer"]),
    )
    assert response.status_code == 422
    assert error_of(response)["code"] == "validation_error"
    assert "SECRET-INPUT-7731" not in response.text
    predict = client.post(
        "/predict", json={"model_id": 5, "texts": secret}, headers=bearer(keys["predictor"])
    )
    assert predict.status_code == 422 and "SECRET-INPUT-7731" not in predict.text


def test_not_json_and_unknown_routes_use_the_error_shape(client, keys):
    trainer = bearer(keys["trainer"])
    not_json = client.post(
        "/jobs/finetune", content=b"{not json", headers={**trainer, "content-type": "application/json"}
    )
    assert not_json.status_code == 422 and error_of(not_json)["code"] == "invalid_body"
    missing = client.get("/no/such/route", headers=trainer)
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    wrong_method = client.delete("/datasets", headers=trainer)
    assert wrong_method.status_code == 405 and error_of(wrong_method)["code"] == "method_not_allowed"
    bad_filter = client.get("/jobs?status=bogus", headers=trainer)
    assert bad_filter.status_code == 422 and error_of(bad_filter)["code"] == "validation_error"
    unknown_job = client.get("/jobs/" + "a" * 32, headers=trainer)
    assert unknown_job.status_code == 404 and error_of(unknown_job)["code"] == "job_not_found"


def test_multipart_finetune_uploads_and_starts(client, keys, settings):
    trainer = bearer(keys["trainer"])
    content = notes_csv(40, seed=105)
    form = {"method": "lora", "hyperparameters": '{"epochs": 1, "max_length": 64, "min_rows": 10}'}
    response = client.post(
        "/jobs/finetune", data=form, files={"file": ("inline.csv", content, "text/csv")}, headers=trainer
    )
    assert response.status_code == 202, response.text
    job = response.json()
    again = upload(client, keys["trainer"], content)
    assert again.status_code == 200 and again.json()["id"] == job["train_dataset_id"]

    before = stored_datasets(client, keys["trainer"], settings)
    bad_form = {"method": "lora", "hyperparameters": '{"epochz": 1}'}
    rejected = client.post(
        "/jobs/finetune",
        data=bad_form,
        files={"file": ("x.csv", notes_csv(40, seed=106), "text/csv")},
        headers=trainer,
    )
    assert rejected.status_code == 422 and error_of(rejected)["code"] == "invalid_hyperparameters"
    bad_csv = client.post(
        "/jobs/finetune",
        data={"method": "lora"},
        files={"file": ("x.csv", b"Note\nx\n", "text/csv")},
        headers=trainer,
    )
    assert bad_csv.status_code == 422 and error_of(bad_csv)["code"] == "missing_column"
    assert stored_datasets(client, keys["trainer"], settings) == before


def test_idempotency_key_returns_the_same_job(client, keys, datasets):
    trainer = bearer(keys["trainer"])
    body = {"train_dataset_id": datasets["good"], "method": "full", "hyperparameters": SMALL_JOB}
    headers = {**trainer, "Idempotency-Key": "retry-me-1"}
    first = client.post("/jobs/finetune", json=body, headers=headers)
    second = client.post("/jobs/finetune", json=body, headers=headers)
    assert first.status_code == 202 and second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    changed = client.post("/jobs/finetune", json={**body, "method": "lora"}, headers=headers)
    assert changed.status_code == 409 and error_of(changed)["code"] == "idempotency_key_reused"
    listed = client.get("/jobs?kind=finetune", headers=trainer).json()["data"]
    assert sum(1 for job in listed if job["id"] == first.json()["id"]) == 1


def test_predict_limits(client, keys, lora_model):
    predictor = bearer(keys["predictor"])
    cases = [
        ({"model_id": lora_model, "texts": []}, 422, "no_texts"),
        ({"model_id": lora_model, "texts": ["a note"] * 17}, 422, "too_many_texts"),
        ({"model_id": lora_model, "texts": ["x" * 5001]}, 422, "text_too_long"),
        ({"model_id": lora_model, "texts": ["   "]}, 422, "empty_text"),
        ({"model_id": "0" * 32, "texts": ["a note"]}, 404, "model_not_found"),
        ({"model_id": lora_model, "texts": ["a note"], "compare_with": ["1" * 32]}, 404, "model_not_found"),
        ({"model_id": lora_model, "texts": ["a note"], "threshold": 1.5}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        response = client.post("/predict", json=body, headers=predictor)
        assert response.status_code == status, (body, response.text)
        assert error_of(response)["code"] == code
    override = client.post(
        "/predict", json={"model_id": lora_model, "texts": ["a note"], "threshold": 0.01}, headers=predictor
    )
    assert override.status_code == 200
    assert override.json()["predictions"][0]["threshold"] == 0.01


def test_cancelling_a_finished_job_is_409(client, keys, lora_model, database):
    from core.db.models import Job

    with database.session() as session:
        job_id = session.query(Job).filter(Job.output_model_id == lora_model).one().id
    response = client.post(f"/jobs/{job_id}/cancel", headers=bearer(keys["trainer"]))
    assert response.status_code == 409 and error_of(response)["code"] == "job_finished"
