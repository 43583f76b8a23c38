"""The API contract is exact (issue 12): schemathesis, every check and phase, against the app in
process, with real ids seeded so operations reach their logic. The schema must state what the server
enforces, and the server must answer only what the schema documents.

A fixed seed and a small example count keep it to seconds; `make fuzz` runs it longer
(NOTETUNE_FUZZ_EXAMPLES, NOTETUNE_FUZZ_SEED).
"""

from __future__ import annotations

import os
import uuid
from collections import Counter

import pytest

from tests.service.helpers import SMALL_JOB, bearer, notes_csv, upload, wait_for_job

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES = int(os.environ.get("NOTETUNE_FUZZ_EXAMPLES", "8"))
# 429: a valid request may also meet a limit of its caller (the key's rate of predicted notes).
DATA_DEPENDENT = ["2xx", 401, 403, 404, 409, 422, 429]
SEED = int(os.environ.get("NOTETUNE_FUZZ_SEED", "12"))


@pytest.fixture(scope="module")
def seeded(client, keys, workers, database) -> dict[str, str]:
    """A dataset, a tiny trained model, an evaluation of it, and a key that may be revoked."""
    workers.ensure_running()
    trainer = keys["trainer"]
    dataset = upload(client, trainer, notes_csv(24, seed=1207), "fuzz.csv").json()["id"]
    body = {"train_dataset_id": dataset, "method": "lora", "hyperparameters": SMALL_JOB}
    job = wait_for_job(
        client, trainer, client.post("/jobs/finetune", json=body, headers=bearer(trainer)).json()["id"]
    )
    assert job["status"] == "succeeded", job["error"]
    evaluate = {"test_dataset_id": dataset, "models": ["base", job["model_id"]], "n_resamples": 100}
    evaluation_job = wait_for_job(
        client, trainer, client.post("/jobs/evaluate", json=evaluate, headers=bearer(trainer)).json()["id"]
    )
    assert evaluation_job["status"] == "succeeded", evaluation_job["error"]
    spare = client.post(
        "/keys", json={"role": "predictor", "name": "fuzz"}, headers=bearer(keys["admin"])
    ).json()
    return {
        "dataset_id": dataset,
        "model_id": job["model_id"],
        "job_id": job["id"],
        "evaluation_id": evaluation_job["evaluation_id"],
        "key_id": spare["id"],
    }


@pytest.fixture(scope="module")
def fuzzed_app(settings, database, api_log):
    """The app with the documented defaults for the limits the schema states, and a queue of its own:
    the jobs the fuzzer starts are never run, and are cancelled afterwards."""
    from api.main import create_app

    documented = {
        name: settings.model_fields[name].default for name in ("max_predict_texts", "max_text_chars")
    }
    queue = f"fuzz-{uuid.uuid4().hex[:8]}"
    return create_app(settings.model_copy(update={**documented, "queue_name": queue}))


def run_schemathesis(app, headers: dict[str, str], ids: dict[str, str]) -> dict[tuple[str, str, str], str]:
    """(operation, check, title) of every unique failure, with its message and a curl to repeat it."""
    from schemathesis.config import SchemathesisConfig
    from schemathesis.engine import events, from_schema

    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "headers": headers,
            "generation": {"max-examples": EXAMPLES, "deterministic": False},
            "checks": {"enabled": True},
            "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}},
            "parameters": {f"path.{name}": value for name, value in ids.items()},
            "suppress-health-check": ["all"],
            "operations": [
                {
                    # Whether a CSV can be stored, or a dataset trained or tested on, depends on its
                    # content (columns, labels, classes, rows): no JSON schema can state it, so a
                    # schema-valid request may be refused with 422 naming the problem.
                    "include-path-regex": "^/(datasets|jobs/finetune|jobs/evaluate)$",
                    "include-method": "POST",
                    "checks": {"positive_data_acceptance": {"expected-statuses": DATA_DEPENDENT}},
                },
                {
                    # key_id is the spare key's: revoked once, then 404, so not a created resource.
                    "include-path": "/keys/{key_id}",
                    "phases": {"stateful": {"enabled": False}},
                },
            ],
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    failures: dict[tuple[str, str, str], str] = {}
    tested: set[str] = set()
    for event in from_schema(schema).execute():
        if isinstance(event, events.FatalError):
            raise AssertionError(f"schemathesis could not run: {event.exception!r}")
        if isinstance(event, events.ScenarioFinished):
            tested.add(event.recorder.label)
            for check in event.recorder.checks.values():
                for result in check:
                    if result.failure_info is not None:
                        failure = result.failure_info
                        key = (event.recorder.label, result.name, failure.failure.title)
                        failures.setdefault(key, f"{failure.failure.message}\n{failure.code_sample[:600]}")
        if isinstance(event, events.NonFatalError):
            failures.setdefault((event.label, "error", type(event.value).__name__), str(event.value)[:600])
    # Every operation of the schema, and the stateful scenarios, were exercised.
    assert len(tested) > len(list(schema.get_all_operations())), sorted(tested)
    return failures


def test_schemathesis_finds_no_failures(fuzzed_app, seeded, keys, client):
    failures = run_schemathesis(fuzzed_app, bearer(keys["admin"]), seeded)  # it runs the lifespan
    queued = client.get("/jobs?status=queued&limit=200", headers=bearer(keys["admin"])).json()["data"]
    for job in queued:
        client.post(f"/jobs/{job['id']}/cancel", headers=bearer(keys["admin"]))
    summary = Counter(check for _, check, _ in failures)
    report = "\n\n".join(f"{key}\n{detail}" for key, detail in sorted(failures.items()))
    assert not failures, f"{len(failures)} unique failures {dict(summary)}:\n{report}"


@pytest.mark.parametrize(
    ("path", "dataset_field"), [("/jobs/evaluate", "test_dataset_id"), ("/jobs/finetune", "train_dataset_id")]
)
def test_the_multipart_forms_say_what_the_json_bodies_say(app, path, dataset_field):
    """Each form field has its JSON field's bounds and the form requires what the JSON requires (the
    form schema is derived, not written beside it)."""
    content = app.openapi()["paths"][path]["post"]["requestBody"]["content"]
    as_json, as_form = content["application/json"]["schema"], content["multipart/form-data"]["schema"]
    assert set(as_form["required"]) == {"file", *as_json.get("required", [])} - {dataset_field}
    for name, field in as_form["properties"].items():
        if name == "file":
            assert field["minLength"] == 1 and "422" in field["description"]
            continue
        json_field = as_json["properties"][name]
        for bound in ("minimum", "maximum", "minItems", "maxItems", "enum"):
            if bound in json_field:
                assert field[bound] == json_field[bound], (name, bound)
    if path == "/jobs/evaluate":
        assert "models" in as_form["required"] and as_form["properties"]["n_resamples"]["maximum"] == 10000
