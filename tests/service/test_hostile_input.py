"""Hostile input (issue 12): large and streamed bodies, odd values and server paths, each answered
with a clear 4xx early and never a 500."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from tests.service.helpers import bearer, error_of, model_row_without_training, notes_csv, rows_csv, upload

CHUNK = 64 * 1024
HOSTILE_BYTES = 40 * 1024 * 1024
MULTIPART = "multipart/form-data; boundary=b"
FILE_PART = (
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\nContent-Type: text/csv\r\n\r\n'
)


class StreamedBody:
    """An ASGI receive that streams a chunked body (no Content-Length) and counts what the app read."""

    def __init__(self, total: int, opening: bytes = b"") -> None:
        self.total, self.read, self.opening = total, 0, opening

    async def __call__(self) -> dict:
        if self.read >= self.total:
            await asyncio.sleep(3600)  # the client waits for the answer
        size = min(CHUNK, self.total - self.read)
        chunk = (self.opening + b"[" * size)[:size] if self.read == 0 else b"[" * size
        self.read += size
        return {"type": "http.request", "body": chunk, "more_body": self.read < self.total}


def send_streamed(
    app, path: str, headers: dict[str, str], total: int, content_type: str = "application/json"
) -> tuple[int, dict, StreamedBody]:
    # A form opens with a file part that never ends; JSON is an array that never closes.
    opening = FILE_PART if content_type.startswith("multipart/") else b""
    body = StreamedBody(total, opening)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"transfer-encoding", b"chunked"), (b"content-type", content_type.encode())]
        + [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "state": {},
    }
    asyncio.run(asyncio.wait_for(app(scope, body, send), timeout=60))
    start = next(message for message in sent if message["type"] == "http.response.start")
    content = b"".join(
        message.get("body", b"") for message in sent if message["type"] == "http.response.body"
    )
    return start["status"], json.loads(content), body


def test_a_chunked_body_without_a_key_is_401_before_any_of_it_is_read(app, client):
    status, answer, body = send_streamed(app, "/predict", {}, HOSTILE_BYTES)
    assert status == 401 and answer["error"]["code"] == "missing_api_key"
    assert body.read == 0


def test_a_chunked_body_with_a_bad_key_is_401_before_any_of_it_is_read(app, client):
    status, answer, body = send_streamed(app, "/datasets", bearer("ntk_not-a-key"), HOSTILE_BYTES, MULTIPART)
    assert status == 401 and answer["error"]["code"] == "invalid_api_key"
    assert body.read == 0


def test_a_page_form_without_a_signed_in_session_is_refused_before_any_of_it_is_read(app, client):
    status, answer, body = send_streamed(app, "/ui/datasets", {}, HOSTILE_BYTES, MULTIPART)
    assert status == 401 and answer["error"]["code"] == "not_signed_in"
    assert body.read == 0


def test_an_upload_with_a_predictor_key_is_403_before_any_of_it_is_read(app, client, keys):
    status, answer, body = send_streamed(
        app, "/datasets", bearer(keys["predictor"]), HOSTILE_BYTES, MULTIPART
    )
    assert status == 403 and answer["error"]["code"] == "insufficient_role"
    assert body.read == 0


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/predict", "application/json"),
        ("/keys", "application/json"),
        ("/jobs/finetune", "application/json"),
        ("/jobs/evaluate", MULTIPART),
        ("/datasets", MULTIPART),
    ],
)
def test_a_chunked_body_over_the_route_limit_is_413_and_not_read_to_the_end(
    app, client, keys, settings, path, content_type
):
    over_any_limit = max(HOSTILE_BYTES, settings.max_upload_bytes + 4 * 1024 * 1024)
    status, answer, body = send_streamed(app, path, bearer(keys["admin"]), over_any_limit, content_type)
    assert status == 413 and answer["error"]["code"] == "payload_too_large", answer
    limit = answer["error"]["details"]["limit_bytes"]
    assert limit <= max(settings.predict_body_limit, settings.max_upload_bytes + 1024 * 1024)
    assert body.read <= limit + CHUNK


def test_the_predict_limit_leaves_room_for_the_largest_valid_request(settings):
    note = "é" * settings.max_text_chars
    largest = json.dumps({"model_id": "0" * 32, "texts": [note] * settings.max_predict_texts})
    assert len(largest.encode()) <= settings.predict_body_limit


def test_a_declared_length_over_the_limit_is_413_without_reading(client, keys):
    response = client.post(
        "/keys",
        content=b"{" * (2 * 1024 * 1024),
        headers={**bearer(keys["admin"]), "Content-Type": "application/json"},
    )
    assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "url",
    [
        "/datasets?offset=9367375746213507072",
        "/jobs?offset=1e20",
        "/models?offset=-1",
        "/keys?offset=99999999999999999999999",
    ],
)
def test_huge_offsets_are_422(client, keys, url):
    response = client.get(url, headers=bearer(keys["admin"]))
    assert response.status_code == 422 and error_of(response)["code"] == "validation_error"


@pytest.mark.parametrize("offset", ["1e20", "99999999999999999999", "9367375746213507072"])
def test_huge_event_offsets_are_422(client, keys, database, organisation_id, offset):
    from core.db.base import new_id, utcnow
    from core.db.models import Job, JobKind, JobStatus

    job = Job(
        id=new_id(),
        organisation_id=organisation_id,
        kind=JobKind.finetune,
        status=JobStatus.failed,
        hyperparameters={},
        created_at=utcnow(),
    )
    with database.transaction() as session:
        session.add(job)
    response = client.get(f"/jobs/{job.id}/events?offset={offset}", headers=bearer(keys["trainer"]))
    assert response.status_code == 422 and error_of(response)["code"] == "validation_error"


@pytest.mark.parametrize(
    "path", ["/datasets/{}", "/jobs/{}", "/jobs/{}/events", "/models/{}", "/evaluations/{}"]
)
@pytest.mark.parametrize("bad_id", ["a%00b", "%00", "x" * 300, "ABCDEF0123456789ABCDEF0123456789"])
def test_path_ids_not_of_our_shape_are_404_without_echo(client, keys, path, bad_id):
    response = client.get(path.format(bad_id), headers=bearer(keys["admin"]))
    assert response.status_code == 404, response.text
    assert bad_id.replace("%00", "") not in response.text or bad_id == "%00"
    assert error_of(response)["details"].get("id") in (None, "(not an id)")


def test_revoking_a_key_id_with_nul_is_404(client, keys):
    response = client.delete("/keys/a%00b", headers=bearer(keys["admin"]))
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/keys", {"role": "trainer", "name": "lab\u0000"}),
        ("/jobs/finetune", {"train_dataset_id": "a\u0000", "method": "lora"}),
        ("/jobs/finetune", {"train_dataset_id": "0" * 32, "method": "lora", "name": "x\u0000"}),
        ("/jobs/finetune", {"train_dataset_id": "0" * 32, "method": "lora", "base_model": "b\u0000"}),
        (
            "/jobs/finetune",
            {"train_dataset_id": "0" * 32, "method": "lora", "hyperparameters": {"pooling": "\u0000"}},
        ),
        (
            "/jobs/finetune",
            {"train_dataset_id": "0" * 32, "method": "lora", "hyperparameters": {"\u0000": 1}},
        ),
        ("/jobs/evaluate", {"test_dataset_id": "0" * 32, "models": ["base\u0000"]}),
        ("/jobs/evaluate", {"test_dataset_id": "0" * 32, "models": ["base"], "thresholds": {"\u0000": 0.5}}),
        ("/predict", {"model_id": "\u0000", "texts": ["a note"]}),
        ("/predict", {"model_id": "0" * 32, "texts": ["a note"], "compare_with": ["\u0000"]}),
    ],
)
def test_nul_characters_in_request_strings_are_422(client, keys, path, body):
    response = client.post(path, json=body, headers=bearer(keys["admin"]))
    assert response.status_code == 422, response.text
    assert "NUL" in json.dumps(error_of(response))


def test_a_nul_in_an_upload_name_is_422_and_in_a_file_name_is_dropped(client, keys):
    content = notes_csv(12, seed=1201)
    named = client.post(
        "/datasets",
        files={"file": ("a.csv", content, "text/csv")},
        data={"name": "x\u0000"},
        headers=bearer(keys["trainer"]),
    )
    assert named.status_code == 422
    response = upload(client, keys["trainer"], content, "no\u0000te.csv")
    assert response.status_code in (200, 201), response.text
    assert "\u0000" not in response.json()["name"]


def test_a_file_name_too_long_for_a_form_part_is_422_naming_the_limit(client, keys):
    refused = upload(client, keys["trainer"], notes_csv(12, seed=1202), "ward-list-" + "x" * 5000 + ".csv")
    assert refused.status_code == 422, refused.text
    error = error_of(refused)
    assert error["code"] == "part_headers_too_long" and "file name" in error["message"]
    assert error["details"]["limit_bytes"] >= 4096
    assert "ward-list" not in refused.text


def test_compare_with_an_unknown_well_formed_id_echoes_it_as_other_routes_do(client, keys):
    unknown = "0123456789abcdef0123456789abcdef"
    models = client.get("/models", headers=bearer(keys["trainer"])).json()["data"]
    body = {
        "model_id": models[0]["id"] if models else unknown,
        "texts": ["a note"],
        "compare_with": [unknown],
    }
    refused = client.post("/predict", json=body, headers=bearer(keys["predictor"]))
    assert refused.status_code == 404, refused.text
    assert error_of(refused)["details"]["id"] == unknown


def test_a_note_with_a_nul_byte_is_refused_naming_its_row(client, keys):
    content = rows_csv([("a fine note", 0), ("a note with \u0000 inside", 1), ("another", 0)])
    response = upload(client, keys["trainer"], content)
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "nul_character" and error["details"]["rows"] == [2]


def test_uploads_over_the_row_cap_are_422_naming_the_limit(settings, database, keys):
    from fastapi.testclient import TestClient

    from api.main import create_app

    capped = settings.model_copy(update={"max_upload_rows": 10})
    with TestClient(create_app(capped), raise_server_exceptions=False) as limited:
        response = upload(limited, keys["trainer"], notes_csv(11, seed=1202))
        assert response.status_code == 422 and error_of(response)["code"] == "too_many_rows"
        assert error_of(response)["details"]["limit"] == 10
        assert upload(limited, keys["trainer"], notes_csv(10, seed=1202)).status_code in (200, 201)


@pytest.mark.parametrize(
    ("update", "note", "code"),
    [
        ({"max_text_chars": 100}, "x" * 101, "text_too_long"),
        ({"max_note_sentences": 5}, ". ".join(["word"] * 6), "too_many_sentences"),
        ({"max_note_tokens": 20}, " ".join(["word"] * 40), "too_many_tokens"),
    ],
)
def test_notes_over_a_shape_cap_are_422_naming_the_limit(settings, database, keys, update, note, code):
    from fastapi.testclient import TestClient

    from api.main import create_app

    rows = [("a short note.", index % 2) for index in range(4)] + [(note, 1)]
    with TestClient(create_app(settings.model_copy(update=update)), raise_server_exceptions=False) as limited:
        response = upload(limited, keys["trainer"], rows_csv(rows))
        assert response.status_code == 422, response.text
        error = error_of(response)
        assert error["code"] == code and error["details"]["rows"] == [5]
        assert error["details"]["limit"] == next(iter(update.values()))


def test_an_evaluation_over_the_size_cap_is_422_naming_the_limit(settings, database, keys):
    from fastapi.testclient import TestClient

    from api.main import create_app

    capped = settings.model_copy(update={"max_evaluation_cells": 1000})
    with TestClient(create_app(capped), raise_server_exceptions=False) as limited:
        dataset = upload(limited, keys["trainer"], notes_csv(20, seed=1203)).json()["id"]
        body = {"test_dataset_id": dataset, "models": ["base"], "n_resamples": 100}
        response = limited.post("/jobs/evaluate", json=body, headers=bearer(keys["trainer"]))
        assert response.status_code == 422, response.text
        assert error_of(response)["code"] == "evaluation_too_large"
        assert error_of(response)["details"]["limit"] == 1000


def test_options_is_405_with_allow(client, keys):
    for path, allowed in (("/datasets", {"GET", "POST"}), (f"/keys/{'0' * 32}", {"DELETE"})):
        response = client.options(path, headers=bearer(keys["admin"]))
        assert response.status_code == 405
        assert set(response.headers["allow"].replace(" ", "").split(",")) == allowed


@pytest.fixture(scope="module")
def packaged_app(settings, database, api_log):
    """The service on its packaged base model (the session's uses a tiny BERT), on a queue no worker
    reads: its jobs are never run."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    packaged = settings.model_copy(
        update={"base_model": None, "queue_name": f"nowhere-{uuid.uuid4().hex[:8]}"}
    )
    with TestClient(create_app(packaged), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def packaged_model(database, packaged_app, keys, organisation_id) -> str:
    """A model row trained (as far as the database says) from the packaged base model."""
    from ml.config import default_base_model

    dataset = upload(packaged_app, keys["trainer"], notes_csv(24, seed=1204)).json()["id"]
    _, model_id = model_row_without_training(
        database, organisation_id, dataset, base_model=default_base_model()
    )
    return model_id


def test_no_response_shows_the_packaged_base_models_path(packaged_app, packaged_model, keys):
    from core.services.models import PACKAGED_BASE_MODEL
    from ml.config import default_base_model

    server_path = default_base_model()
    trainer = bearer(keys["trainer"])
    model = packaged_app.get(f"/models/{packaged_model}", headers=trainer)
    assert model.status_code == 200
    assert model.json()["base_model"] == PACKAGED_BASE_MODEL
    assert model.json()["lineage"][-1] == {
        "kind": "base_model",
        "id": None,
        "method": None,
        "stage": None,
        "name": PACKAGED_BASE_MODEL,
        "deleted_at": None,
        "train_dataset": None,
    }
    dataset = model.json()["train_dataset_id"]
    by_name = {"train_dataset_id": dataset, "method": "lora", "base_model": PACKAGED_BASE_MODEL}
    started = packaged_app.post("/jobs/finetune", json=by_name, headers=trainer)
    assert started.status_code == 202, started.text
    assert started.json()["base_model"] == PACKAGED_BASE_MODEL
    refused = packaged_app.post("/jobs/finetune", json={**by_name, "base_model": "/etc"}, headers=trainer)
    assert refused.status_code == 422 and error_of(refused)["code"] == "base_model_not_allowed"
    assert PACKAGED_BASE_MODEL in error_of(refused)["details"]["allowed"]
    responses = [
        model,
        started,
        refused,
        packaged_app.get("/models", headers=trainer),
        packaged_app.get(f"/jobs/{started.json()['id']}", headers=trainer),
        packaged_app.get("/jobs", headers=trainer),
        packaged_app.get(f"/datasets/{dataset}", headers=trainer),
        packaged_app.post(
            "/jobs/finetune", json={**by_name, "parent_model_id": packaged_model}, headers=trainer
        ),
        packaged_app.post(
            "/jobs/evaluate",
            json={"test_dataset_id": dataset, "models": ["base", packaged_model]},
            headers=trainer,
        ),
    ]
    for response in responses:
        assert server_path not in response.text, response.request.url
    packaged_app.post(f"/jobs/{started.json()['id']}/cancel", headers=trainer)
    for response in responses[-2:]:
        if response.status_code == 202:
            packaged_app.post(f"/jobs/{response.json()['id']}/cancel", headers=trainer)


def test_predict_notes_with_too_many_sentences_are_refused_naming_them(settings):
    from core.errors import InvalidRequest
    from core.services.datasets import check_predict_sentences

    capped = settings.model_copy(update={"max_note_sentences": 3})
    check_predict_sentences(capped, ["One. Two. Three.", "fine"])
    with pytest.raises(InvalidRequest) as refused:
        check_predict_sentences(capped, ["fine", "One. Two. Three. Four."])
    assert refused.value.code == "too_many_sentences" and refused.value.details == {
        "indices": [1],
        "limit": 3,
    }


def test_a_long_hyperparameter_text_is_422_at_once(client, keys):
    """threshold_mode is parsed with a pattern that backtracks on a long run of digits."""
    mode = "sensitivity>=" + "1" * 200_000 + "x"
    body = {"train_dataset_id": "0" * 32, "method": "lora", "hyperparameters": {"threshold_mode": mode}}
    started = time.perf_counter()
    response = client.post("/jobs/finetune", json=body, headers=bearer(keys["trainer"]))
    assert response.status_code == 422 and error_of(response)["code"] == "validation_error"
    assert time.perf_counter() - started < 2.0
