"""Fair shares between organisations: the worker's claim order, per-organisation limits on jobs and
stored bytes, the per-key /predict rate, and the throttle on failed authentications. (The
micro-batcher's per-organisation share and turn order: tests/ml/test_model_cache.py.)"""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from tests.service.helpers import bearer, error_of, notes_csv, upload, wait_for_job


def new_organisation(database, name: str) -> dict[str, str]:
    from core.db.models import Role
    from core.services.auth import create_key, create_organisation

    with database.transaction() as session:
        organisation, admin = create_organisation(session, f"{name} {uuid.uuid4().hex[:8]}")
        keys = {"admin": admin, "organisation_id": organisation.id}
        for role in (Role.trainer, Role.predictor):
            _, keys[role.value] = create_key(session, role, role.value, organisation_id=organisation.id)
    return keys


@pytest.fixture(scope="module")
def hospitals(client, database, workers):
    workers.ensure_running()
    found = {}
    for name in ("Hospital A", "Hospital B"):
        keys = new_organisation(database, name)
        response = upload(client, keys["trainer"], notes_csv(20, seed=len(found) + 971))
        assert response.status_code == 201, response.text
        found[name[-1]] = {**keys, "dataset": response.json()["id"]}
    return found


def limited_client(settings, **limits) -> TestClient:
    from api.main import create_app

    return TestClient(create_app(settings.model_copy(update=limits)), raise_server_exceptions=False)


def evaluate(client, hospital: dict) -> str:
    body = {"test_dataset_id": hospital["dataset"], "models": ["base"], "n_resamples": 100}
    response = client.post("/jobs/evaluate", json=body, headers=bearer(hospital["trainer"]))
    assert response.status_code == 202, response.text
    return response.json()["id"]


def started_at(database, job_id: str):
    from core.db.models import Job

    with database.session() as session:
        return session.get(Job, job_id).started_at


def test_one_organisations_backlog_does_not_hold_back_anothers_job(client, database, hospitals):
    """Hospital A queues four jobs, then hospital B one: B's goes second (A's first was already
    running), not fifth."""
    a, b = hospitals["A"], hospitals["B"]
    backlog = [evaluate(client, a) for _ in range(4)]
    single = evaluate(client, b)
    for job_id in [*backlog, single]:
        owner = b if job_id == single else a
        assert wait_for_job(client, owner["trainer"], job_id)["status"] == "succeeded"
    order = sorted([*backlog, single], key=lambda job_id: started_at(database, job_id))
    assert order.index(single) <= 1, "hospital B's job waited behind hospital A's backlog"


def queued_rows(database, organisation_id: str, n: int) -> None:
    """Jobs that count as queued for the limit and that no worker will claim (cancel requested)."""
    from core.db.base import new_id, utcnow
    from core.db.models import Job, JobKind, JobStatus

    with database.transaction() as session:
        for _ in range(n):
            session.add(
                Job(
                    id=new_id(),
                    organisation_id=organisation_id,
                    kind=JobKind.evaluate,
                    status=JobStatus.queued,
                    cancel_requested=True,
                    hyperparameters={},
                    created_at=utcnow(),
                )
            )


def test_past_its_active_job_limit_an_organisation_gets_429_and_the_other_does_not(
    settings, database, hospitals
):
    a, b = hospitals["A"], hospitals["B"]
    with limited_client(settings, max_active_jobs_per_organisation=2) as limited:
        queued_rows(database, a["organisation_id"], 2)
        body = {"test_dataset_id": a["dataset"], "models": ["base"]}
        refused = limited.post("/jobs/evaluate", json=body, headers=bearer(a["trainer"]))
        assert refused.status_code == 429, refused.text
        error = error_of(refused)
        assert error["code"] == "too_many_active_jobs"
        assert error["details"]["limit"] == {
            "setting": "NOTETUNE_MAX_ACTIVE_JOBS_PER_ORGANISATION",
            "jobs": 2,
        }
        assert int(refused.headers["Retry-After"]) >= 1
        other = {"test_dataset_id": b["dataset"], "models": ["base"], "n_resamples": 100}
        accepted = limited.post("/jobs/evaluate", json=other, headers=bearer(b["trainer"]))
        assert accepted.status_code == 202, accepted.text
        assert wait_for_job(limited, b["trainer"], accepted.json()["id"])["status"] == "succeeded"


def test_an_upload_past_the_organisations_stored_bytes_is_413_and_stores_nothing(
    settings, database, hospitals
):
    from core.db.repositories import DatasetRepository

    a = hospitals["A"]
    with database.session() as session:
        used = DatasetRepository(session, a["organisation_id"]).stored_bytes()
    content = notes_csv(30, seed=975)
    with limited_client(settings, max_stored_bytes_per_organisation=used + len(content) - 1) as limited:
        refused = upload(limited, a["trainer"], content)
        assert refused.status_code == 413, refused.text
        error = error_of(refused)
        assert error["code"] == "organisation_storage_full"
        assert error["details"]["limit_bytes"] == used + len(content) - 1
        assert error["details"]["used_bytes"] == used
        listed = limited.get("/datasets", headers=bearer(a["trainer"])).json()["data"]
        assert len(listed) == 1  # the module's own dataset only


def test_a_declared_body_that_cannot_fit_is_refused_before_it_is_read(settings, database, hospitals):
    a = hospitals["A"]
    with limited_client(settings, max_stored_bytes_per_organisation=2048) as limited:

        def body():  # a stream that counts what the server reads of it
            body.read += 1
            yield b"x" * 4096

        body.read = 0
        headers = {**bearer(a["trainer"]), "Content-Type": "multipart/form-data; boundary=b"}
        headers["Content-Length"] = str(8 * 1024 * 1024)
        refused = limited.post("/datasets", content=body(), headers=headers)
        assert refused.status_code == 413, refused.text
        assert error_of(refused)["code"] == "organisation_storage_full"
        assert body.read == 0


def test_a_keys_prediction_rate_is_limited_and_other_keys_are_not(settings, database, hospitals, client):
    from core.db.models import Role
    from core.services.auth import create_key

    a = hospitals["A"]
    body = {
        "train_dataset_id": a["dataset"],
        "method": "lora",
        "hyperparameters": {"epochs": 1, "min_rows": 10},
    }
    job = client.post("/jobs/finetune", json=body, headers=bearer(a["trainer"])).json()
    model_id = wait_for_job(client, a["trainer"], job["id"])["model_id"]
    with database.transaction() as session:
        _, second_key = create_key(session, Role.predictor, "second", organisation_id=a["organisation_id"])
    limits = {"predict_notes_per_second_per_key": 0.01, "predict_burst_notes_per_key": 4}
    with limited_client(settings, **limits) as limited:

        def predict(key: str, n: int):
            texts = [f"Stage II, node negative. Visit {index}." for index in range(n)]
            return limited.post("/predict", json={"model_id": model_id, "texts": texts}, headers=bearer(key))

        assert predict(a["predictor"], 3).status_code == 200
        assert predict(a["predictor"], 1).status_code == 200
        refused = predict(a["predictor"], 1)
        assert refused.status_code == 429, refused.text
        error = error_of(refused)
        assert error["code"] == "key_rate_limited"
        assert error["details"]["limit"]["setting"] == "NOTETUNE_PREDICT_NOTES_PER_SECOND_PER_KEY"
        assert int(refused.headers["Retry-After"]) >= 1
        assert predict(second_key, 4).status_code == 200


def test_an_address_that_fails_to_authenticate_too_often_is_throttled(settings, keys):
    from tests.service_fixtures import METRICS_TOKEN

    with limited_client(settings, auth_failures_per_minute=3) as limited:
        attacker = TestClient(limited.app, client=("203.0.113.7", 40000), raise_server_exceptions=False)
        wrong = [attacker.get("/models", headers=bearer(f"nt_wrong{index}")) for index in range(3)]
        assert [response.status_code for response in wrong] == [401, 401, 401]
        # The fourth try is refused before any key is looked up, even the right key.
        throttled = attacker.get("/models", headers=bearer(keys["trainer"]))
        assert throttled.status_code == 429, throttled.text
        assert error_of(throttled)["code"] == "too_many_failed_authentications"
        assert 1 <= int(throttled.headers["Retry-After"]) <= 60
        signing_in = attacker.post("/ui/sign-in", data={"api_key": keys["trainer"]}, follow_redirects=False)
        assert signing_in.status_code == 429
        assert attacker.get("/healthz").status_code in (200, 503)  # no credentials: not throttled
        # Another address is not affected.
        assert limited.get("/models", headers=bearer(keys["trainer"])).status_code == 200
        metrics = limited.get("/metrics", headers=bearer(METRICS_TOKEN)).text
    assert "notetune_auth_failures_total 3.0" in metrics
    assert "notetune_auth_throttled_total 2.0" in metrics
