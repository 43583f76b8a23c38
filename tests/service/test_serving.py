"""Serving /predict through the micro-batcher: exact answers under concurrency, other routes keep
answering during a flood, a full queue is a 503 with Retry-After, metrics an operator can scrape."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from tests.service.helpers import SMALL_JOB, bearer, error_of, notes_csv, upload, wait_for_job

NOTES = [
    "Stage IV with liver metastases. ECOG 3; declining.",
    "Stage I, node negative. Complete response after lumpectomy.",
    "ER positive, HER2 negative; grade 2.\nFollow-up in six months.",
    "Brain metastases; hospice discussed. Lives alone",
]
CANARY = "zebra-quasar-canary-7731"


@pytest.fixture(scope="module")
def served(client, keys, workers) -> dict[str, str]:
    """Two LoRA models and a full model, trained through the API."""
    workers.ensure_running()
    dataset = upload(client, keys["trainer"], notes_csv(40, seed=301)).json()["id"]
    models = {}
    for name, method in (("lora_a", "lora"), ("lora_b", "lora"), ("full", "full")):
        hyperparameters = {**SMALL_JOB, "seed": len(models) + 1}
        body = {"train_dataset_id": dataset, "method": method, "hyperparameters": hyperparameters}
        job = client.post("/jobs/finetune", json=body, headers=bearer(keys["trainer"])).json()
        done = wait_for_job(client, keys["trainer"], job["id"])
        assert done["status"] == "succeeded", done["error"]
        models[name] = done["model_id"]
    return models


def _predict(client, key, model_id, text, compare_with=()):
    body = {"model_id": model_id, "texts": [text], "compare_with": list(compare_with)}
    return client.post("/predict", json=body, headers=bearer(key))


def _probabilities(response) -> list[float]:
    prediction = response.json()["predictions"][0]
    return [prediction["probability"], *(item["probability"] for item in prediction["compared"].values())]


def test_concurrent_mixed_requests_get_the_answers_of_single_requests(client, keys, served):
    key = keys["predictor"]
    cases = [
        (served[primary], served[other], NOTES[index % len(NOTES)])
        for index, (primary, other) in enumerate(
            [("lora_a", "lora_b"), ("lora_b", "full"), ("full", "lora_a")] * 8
        )
    ]

    def ask(case):
        primary, other, text = case
        return _predict(client, key, primary, text, ["base", other])

    with ThreadPoolExecutor(max_workers=12) as pool:
        together = list(pool.map(ask, cases))
    alone = [ask(case) for case in cases]
    for case, crowded, single in zip(cases, together, alone, strict=True):
        assert crowded.status_code == 200 and single.status_code == 200, (crowded.text, single.text)
        assert _probabilities(crowded) == pytest.approx(_probabilities(single), abs=1e-5), case
    assert len({tuple(_probabilities(response)) for response in alone}) > 3, "models give their own answers"


def test_other_routes_answer_during_a_flood_of_predictions(client, keys, served):
    """Each prediction holds no database connection while it waits, so the pool never runs dry."""
    texts = [f"{NOTES[i % len(NOTES)]} Visit {i}." for i in range(16)]
    body = {"model_id": served["lora_a"], "texts": texts, "compare_with": ["base", served["lora_b"]]}

    def flood(_):
        return client.post("/predict", json=body, headers=bearer(keys["predictor"])).status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        predictions = [pool.submit(flood, index) for index in range(24)]
        others = [client.get("/jobs", headers=bearer(keys["trainer"])).status_code for _ in range(10)]
        health = [client.get("/healthz").status_code for _ in range(10)]
        statuses = [future.result() for future in predictions]
    # 429: the key's rate or the organisation's share of the queue; 503: the whole queue is full.
    assert set(statuses) <= {200, 429, 503}, statuses
    assert 200 in statuses
    assert others == [200] * 10
    assert set(health) <= {200, 503}  # 503 only if a dependency is down, never a timeout or 500


def test_a_busy_service_answers_503_with_retry_after(settings, database, served, keys):
    from api.main import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as busy_client:
        busy_client.app.state.runtime.predictor.stop()  # nothing drains the queue any more
        response = _predict(busy_client, keys["predictor"], served["full"], NOTES[0])
    assert response.status_code == 503
    assert error_of(response)["code"] == "busy"
    assert int(response.headers["Retry-After"]) >= 1


def test_metrics_show_batches_latency_models_and_jobs_but_no_note_text(client, keys, served):
    assert _predict(client, keys["predictor"], served["lora_a"], f"Stage II. {CANARY}").status_code == 200
    from tests.service_fixtures import METRICS_TOKEN

    assert client.get("/metrics", headers=bearer(keys["admin"])).status_code == 401
    response = client.get("/metrics", headers=bearer(METRICS_TOKEN))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "notetune_batch_notes_count",
        'notetune_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/predict",status="200"}',
        "notetune_predict_queue_notes",
        "notetune_models_loaded",
        'notetune_jobs{kind="finetune",status="succeeded"}',
        'notetune_job_duration_seconds_count{kind="finetune",status="succeeded"}',
    ):
        assert name in text, name
    assert CANARY not in text
    assert served["lora_a"] not in text, "no per-model or per-request label values"


def test_a_model_reads_as_loaded_once_it_has_served(client, keys, served):
    assert _predict(client, keys["predictor"], served["lora_b"], NOTES[1]).status_code == 200
    model = client.get(f"/models/{served['lora_b']}", headers=bearer(keys["predictor"])).json()
    assert model["loaded"] is True


def test_explain_returns_sentence_shares_that_add_up_to_the_served_score(client, keys, served):
    import math

    text = NOTES[2]
    body = {"model_id": served["lora_a"], "texts": [text], "explain": True, "compare_with": ["base"]}
    response = client.post("/predict", json=body, headers=bearer(keys["predictor"]))
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    explanation = prediction["explanation"]
    shares = explanation["sentences"]
    assert len(shares) == 3  # "ER positive, HER2 negative; grade 2." splits at ';' and the line break
    assert all(0 <= s["start"] < s["end"] <= len(text) for s in shares)
    total = sum(s["contribution"] for s in shares) + explanation["bias"]
    assert total == pytest.approx(explanation["logit_difference"], abs=1e-4)
    assert 1 / (1 + math.exp(-explanation["logit_difference"])) == pytest.approx(
        prediction["probability"], abs=1e-4
    )
    plain = client.post("/predict", json={**body, "explain": False}, headers=bearer(keys["predictor"])).json()
    assert "explanation" not in plain["predictions"][0]


def test_healthz_answers_from_the_last_check_and_a_stalled_probe_is_degraded():
    import time

    from core.services.health import CheckResult, HealthProbe

    calls = []

    def checks():
        calls.append(time.monotonic())
        return {"database": CheckResult(True), "worker": CheckResult(len(calls) < 3, "0 live worker(s)")}

    probe = HealthProbe(checks, interval_s=0.05).start()
    try:
        assert probe.latest()["database"].ok
        deadline = time.monotonic() + 5
        while probe.latest()["worker"].ok and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not probe.latest()["worker"].ok, "a later check's failure shows"
    finally:
        probe.stop()
    time.sleep(0.2)  # no more checks run: the last result grows stale
    assert not probe.latest()["checks"].ok


def test_the_health_port_answers_like_healthz_outside_the_event_loop(settings, database, workers):
    import socket

    import httpx

    from api.main import create_app

    workers.ensure_running()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(settings.model_copy(update={"health_port": port}))
    with TestClient(app) as main_port:
        own = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert own.status_code == main_port.get("/healthz").status_code == 200
        assert own.json()["status"] == "ok" and set(own.json()["checks"]) == {"database", "broker", "worker"}
        assert httpx.get(f"http://127.0.0.1:{port}/predict", timeout=5).status_code == 404
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)  # stopped with the app
