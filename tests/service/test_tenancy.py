"""Organisations: every route x every key of organisation B x organisation A's objects answers exactly
as for a missing object (404; 403 where the key's role is not enough), and no answer B gets holds an
id of A's that B did not send itself. The routes come from the OpenAPI document, so a new route is
in the matrix (or the classification test fails) without anyone adding it here.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

import pytest

from tests.service.helpers import SMALL_JOB, bearer, error_of, notes_csv, stored_file, upload, wait_for_job
from tests.service.test_auth import PUBLIC, RANK, REQUIRED_ROLE, api_routes

ROLES = ("admin", "trainer", "predictor")
# The object each path parameter names.
PATH_OBJECTS = {
    "dataset_id": "dataset",
    "job_id": "job",
    "model_id": "model",
    "evaluation_id": "evaluation",
    "key_id": "admin_key",
}
UNKNOWN_ID = "f" * 32
# Each JSON or form body that names objects: one request per object it can name, the rest B's own.
BODY_REFERENCES = {
    ("POST", "/jobs/finetune"): [
        lambda a, b: {"train_dataset_id": a.dataset, "method": "lora", "hyperparameters": SMALL_JOB},
        lambda a, b: {
            "train_dataset_id": b.dataset,
            "parent_model_id": a.model,
            "hyperparameters": SMALL_JOB,
        },
    ],
    ("POST", "/jobs/evaluate"): [
        lambda a, b: {"test_dataset_id": a.dataset, "models": ["base"], "n_resamples": 100},
        lambda a, b: {"test_dataset_id": b.dataset, "models": ["base", a.model], "n_resamples": 100},
        lambda a, b: {"test_dataset_id": b.dataset, "models": [a.model, b.model], "n_resamples": 100},
        lambda a, b: {"test_dataset_id": b.dataset, "models": [f"baseline:{a.model}"], "n_resamples": 100},
    ],
    ("POST", "/predict"): [
        lambda a, b: {"model_id": a.model, "texts": ["a short note"]},
        lambda a, b: {"model_id": b.model, "texts": ["a short note"], "compare_with": [a.model]},
        lambda a, b: {"model_id": b.model, "texts": ["a short note"], "compare_with": ["base", a.model]},
    ],
}
# Routes without a path id whose body names no object of another organisation.
NO_REFERENCES = {
    ("POST", "/datasets"),
    ("POST", "/keys"),
    ("GET", "/datasets"),
    ("GET", "/jobs"),
    ("GET", "/models"),
    ("GET", "/keys"),
    ("GET", "/version"),
    ("GET", "/metrics"),
}


@dataclass
class Tenant:
    name: str
    organisation_id: str
    keys: dict[str, str] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)
    dataset: str = ""
    job: str = ""
    model: str = ""
    evaluation_job: str = ""
    evaluation: str = ""

    @property
    def admin_key(self) -> str:
        return self.key_ids["admin"]

    def ids(self) -> set[str]:
        objects = {
            self.organisation_id,
            self.dataset,
            self.job,
            self.model,
            self.evaluation_job,
            self.evaluation,
        }
        return objects | set(self.key_ids.values())

    def headers(self, role: str) -> dict[str, str]:
        return bearer(self.keys[role])


def new_tenant(client, database, name: str, notes: bytes) -> Tenant:
    """An organisation made as an operator makes one, its other keys made by its admin through the
    API, then a dataset, a fine-tune and an evaluation of its own."""
    from core.services.auth import create_organisation

    with database.transaction() as session:
        organisation, admin_key = create_organisation(session, name)
    tenant = Tenant(name, organisation.id, keys={"admin": admin_key})
    for role in ("trainer", "predictor"):
        created = client.post("/keys", json={"role": role, "name": role}, headers=tenant.headers("admin"))
        assert created.status_code == 201, created.text
        tenant.keys[role], tenant.key_ids[role] = created.json()["key"], created.json()["id"]
    listed = client.get("/keys", headers=tenant.headers("admin")).json()["data"]
    tenant.key_ids["admin"] = next(key["id"] for key in listed if key["role"] == "admin")
    uploaded = upload(client, tenant.keys["trainer"], notes)
    assert uploaded.status_code == 201, uploaded.text  # the other organisation's copy does not count
    tenant.dataset = uploaded.json()["id"]
    return tenant


def train_and_evaluate(client, tenant: Tenant) -> None:
    trainer = tenant.headers("trainer")
    body = {"train_dataset_id": tenant.dataset, "method": "lora", "hyperparameters": SMALL_JOB}
    job = client.post("/jobs/finetune", json=body, headers=trainer)
    assert job.status_code == 202, job.text
    tenant.job = job.json()["id"]
    finished = wait_for_job(client, tenant.keys["trainer"], tenant.job)
    assert finished["status"] == "succeeded", finished
    tenant.model = finished["model_id"]
    body = {"test_dataset_id": tenant.dataset, "models": ["base", tenant.model], "n_resamples": 100}
    evaluation = client.post("/jobs/evaluate", json=body, headers=trainer)
    assert evaluation.status_code == 202, evaluation.text
    tenant.evaluation_job = evaluation.json()["id"]
    finished = wait_for_job(client, tenant.keys["trainer"], tenant.evaluation_job)
    assert finished["status"] == "succeeded", finished
    tenant.evaluation = finished["evaluation_id"]


@pytest.fixture(scope="module")
def tenants(client, database, workers) -> tuple[Tenant, Tenant]:
    workers.ensure_running()
    suffix = uuid.uuid4().hex[:8]
    notes = notes_csv(40, seed=901)  # the same file in both: deduplication stays inside each
    a = new_tenant(client, database, f"Hospital A {suffix}", notes)
    b = new_tenant(client, database, f"Hospital B {suffix}", notes)
    for tenant in (a, b):
        train_and_evaluate(client, tenant)
    return a, b


def concrete(path: str, objects: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name == "kind":
            return "roc"
        assert name in PATH_OBJECTS, f"path parameter {{{name}}} is not in the tenancy matrix: classify it"
        return objects[PATH_OBJECTS[name]]

    return re.sub(r"\{([a-z_]+)\}", value, path)


def objects_of(tenant: Tenant) -> dict[str, str]:
    return {
        "dataset": tenant.dataset,
        "job": tenant.job,
        "model": tenant.model,
        "evaluation": tenant.evaluation,
        "admin_key": tenant.admin_key,
    }


def allowed(role: str, method: str, path: str) -> bool:
    return RANK[role] >= RANK[REQUIRED_ROLE[(method, path)]]


def leaked(response, a: Tenant, sent: str) -> set[str]:
    """A's ids in the answer that the request did not itself carry."""
    return {identifier for identifier in a.ids() if identifier in response.text and identifier not in sent}


def same_as_missing(response, missing) -> None:
    """Another organisation's object answers exactly as an id that exists nowhere."""
    assert response.status_code == missing.status_code == 404, (response.text, missing.text)
    error, expected = error_of(response), error_of(missing)
    assert (error["code"], error["message"]) == (expected["code"], expected["message"])
    assert set(error["details"]) == set(expected["details"])


def test_every_route_is_in_the_matrix(app):
    for method, path in api_routes(app):
        if (method, path) in PUBLIC:
            continue
        has_id = any(name in path for name in PATH_OBJECTS)
        assert has_id or (method, path) in BODY_REFERENCES or (method, path) in NO_REFERENCES, (
            f"{method} {path}: say how it names objects (a path id, BODY_REFERENCES or NO_REFERENCES)"
        )


def test_routes_with_an_id_of_another_organisation_answer_as_for_a_missing_one(client, app, tenants):
    a, b = tenants
    routes = [(m, p) for m, p in api_routes(app) if any(name in p for name in PATH_OBJECTS)]
    assert ("DELETE", "/models/{model_id}") in routes and ("GET", "/jobs/{job_id}/events") in routes
    for method, path in routes:
        for query in ("", "?cascade=true") if method == "DELETE" else ("",):
            url = concrete(path, objects_of(a)) + query
            missing_url = concrete(path, dict.fromkeys(objects_of(a), UNKNOWN_ID)) + query
            for role in ROLES:
                response = client.request(method, url, headers=b.headers(role))
                if not allowed(role, method, path):
                    assert response.status_code == 403, (method, path, role, response.text)
                    assert error_of(response)["code"] == "insufficient_role"
                else:
                    missing = client.request(method, missing_url, headers=b.headers(role))
                    same_as_missing(response, missing)
                assert not leaked(response, a, url), (method, path, role, response.text)
    assert_untouched(client, a)


def test_bodies_naming_another_organisations_objects_answer_as_for_missing_ones(client, tenants):
    a, b = tenants
    missing_tenant = Tenant("nobody", UNKNOWN_ID, dataset=UNKNOWN_ID, model=UNKNOWN_ID)
    for (method, path), variants in BODY_REFERENCES.items():
        for variant in variants:
            body = variant(a, b)
            for role in ROLES:
                response = client.request(method, path, json=body, headers=b.headers(role))
                if not allowed(role, method, path):
                    assert response.status_code == 403, (path, body, role, response.text)
                    continue
                missing = client.request(
                    method, path, json=variant(missing_tenant, b), headers=b.headers(role)
                )
                same_as_missing(response, missing)
                assert not leaked(response, a, str(body)), (path, body, role, response.text)
    assert_untouched(client, a)


def test_lists_and_other_routes_hold_none_of_another_organisations_ids(client, app, tenants):
    a, b = tenants
    for method, path in sorted(NO_REFERENCES):
        for role in ROLES:
            if method == "POST" and path == "/datasets":
                response = upload(client, b.keys[role], notes_csv(30, seed=902))
            elif method == "POST" and path == "/keys":
                response = client.post("/keys", json={"role": "predictor"}, headers=b.headers(role))
            else:
                response = client.request(method, path, headers=b.headers(role))
            assert response.status_code < 500, (method, path, role, response.text)
            assert not leaked(response, a, ""), (method, path, role, response.text)
    # What B sees in its lists is B's own.
    for path, own in (("/datasets", b.dataset), ("/models", b.model), ("/jobs", b.job)):
        listed = {item["id"] for item in client.get(path, headers=b.headers("trainer")).json()["data"]}
        assert own in listed and not listed & a.ids(), path


def test_the_same_file_is_a_dataset_of_each_organisation(client, database, settings, tenants):
    from core.db.models import Dataset

    a, b = tenants
    assert a.dataset != b.dataset
    with database.session() as session:
        rows = [session.get(Dataset, dataset_id) for dataset_id in (a.dataset, b.dataset)]
    assert rows[0].sha256 == rows[1].sha256 and rows[0].path != rows[1].path
    for row, tenant in zip(rows, (a, b), strict=True):
        assert tenant.organisation_id in row.path and stored_file(settings, row.path).is_file()
    again = upload(client, b.keys["trainer"], notes_csv(40, seed=901))
    assert again.status_code == 200 and again.json()["id"] == b.dataset


def test_keys_are_made_listed_and_revoked_inside_the_organisation(client, tenants):
    a, b = tenants
    listed = {key["id"] for key in client.get("/keys", headers=b.headers("admin")).json()["data"]}
    assert set(b.key_ids.values()) <= listed and not listed & set(a.key_ids.values())
    revoked = client.delete(f"/keys/{a.key_ids['predictor']}", headers=b.headers("admin"))
    assert revoked.status_code == 404
    assert client.get("/models", headers=a.headers("predictor")).status_code == 200
    # Each organisation keeps its own last admin key.
    refused = client.delete(f"/keys/{b.admin_key}", headers=b.headers("admin"))
    assert refused.status_code == 409 and error_of(refused)["code"] == "last_admin_key"


def test_a_predictor_reads_only_its_own_organisations_models(client, tenants):
    a, b = tenants
    own = client.post(
        "/predict", json={"model_id": b.model, "texts": ["a short note"]}, headers=b.headers("predictor")
    )
    assert own.status_code == 200, own.text
    model = client.get(f"/models/{b.model}", headers=b.headers("predictor")).json()
    assert [entry["id"] for entry in model["lineage"] if entry["kind"] == "model"] == [b.model]


def assert_untouched(client, a: Tenant) -> None:
    """A's objects are all there for A after B's requests (B's deletions and cancels did nothing)."""
    trainer = a.headers("trainer")
    for path in (f"/datasets/{a.dataset}", f"/models/{a.model}", f"/evaluations/{a.evaluation}"):
        assert client.get(path, headers=trainer).status_code == 200, path
    assert client.get(f"/jobs/{a.job}", headers=trainer).json()["status"] == "succeeded"
    assert client.get("/models", headers=a.headers("predictor")).status_code == 200  # keys not revoked
    assert client.get("/keys", headers=a.headers("admin")).status_code == 200


# ------------------------------------------------------------------------------ the web pages

# Page forms that name objects: one request per object each can name (the rest B's own).
PAGE_FORM_REFERENCES = {
    "/ui/predict": [
        lambda a, b: {"model_id": a.model, "note": "a short note"},
        lambda a, b: {"model_id": b.model, "note": "a short note", "compare": a.model},
    ],
    "/ui/evaluate": [
        lambda a, b: {"dataset_id": a.dataset, "models": "base"},
        lambda a, b: {"dataset_id": b.dataset, "models": a.model},
    ],
    "/ui/finetune": [
        lambda a, b: {"dataset_id": a.dataset, "method": "lora"},
        lambda a, b: {"dataset_id": b.dataset, "parent_model_id": a.model, "stage": "2"},
    ],
}
# Page routes without an id in the path and no form naming another organisation's object.
PAGES_WITHOUT_REFERENCES = {
    ("GET", "/ui"),
    ("GET", "/ui/sign-in"),
    ("POST", "/ui/sign-in"),
    ("POST", "/ui/sign-out"),
    ("POST", "/ui/language"),
    ("GET", "/ui/datasets"),
    ("POST", "/ui/datasets"),
    ("GET", "/ui/evaluate"),
    ("GET", "/ui/models"),
    ("GET", "/ui/predict"),
    ("GET", "/ui/finetune"),
    ("GET", "/ui/finetune/second"),  # its ?parent= is checked below
    ("GET", "/ui/jobs"),
    ("GET", "/ui/{path:path}"),  # any other /ui path: the not-found page
}


def page_routes(app) -> list[tuple[str, str]]:
    """Every /ui route (this FastAPI nests included routers: their routes are read through each
    included router's effective routes)."""
    found = set()
    for entry in app.routes:
        routes = entry.effective_route_contexts() if hasattr(entry, "effective_route_contexts") else [entry]
        for route in routes:
            path = getattr(route, "path", "") or ""
            for method in getattr(route, "methods", None) or ():
                if path.startswith("/ui") and method != "HEAD":
                    found.add((method, path))
    assert ("GET", "/ui/models") in found, "the page routes were not found"
    return sorted(found)


def signed_in_pages(app, tenant: Tenant) -> dict[str, object]:
    from tests.ui.helpers import browser, sign_in

    pages = {}
    for role in ROLES:
        pages[role] = browser(app)
        sign_in(pages[role], tenant.keys[role])
    return pages


# Each form page draws a fresh submission token (its Idempotency-Key): not part of the comparison.
SUBMISSION_TOKEN = re.compile(r'(name="submission" value=")[^"]*"')


def page_text(response, a_ids=()) -> str:
    text = SUBMISSION_TOKEN.sub(r'\1"', response.text)
    for a_id in a_ids:
        text = text.replace(a_id, UNKNOWN_ID)
    return text


def as_if_missing(response, missing, a_id: str) -> None:
    """The page B gets for A's object is the page it gets for an object that exists nowhere."""
    assert response.status_code == missing.status_code, (response.status_code, missing.status_code)
    assert page_text(response, [a_id]) == page_text(missing)


def test_every_page_route_is_in_the_matrix(app):
    for method, path in page_routes(app):
        has_id = any(name in path for name in PATH_OBJECTS)
        assert has_id or path in PAGE_FORM_REFERENCES or (method, path) in PAGES_WITHOUT_REFERENCES, (
            f"{method} {path}: say how the page names objects"
        )


def test_pages_with_an_id_of_another_organisation_answer_as_for_a_missing_one(app, client, tenants):
    from tests.ui.helpers import csrf_of

    a, b = tenants
    pages = signed_in_pages(app, b)
    routes = [(m, p) for m, p in page_routes(app) if any(name in p for name in PATH_OBJECTS)]
    assert ("GET", "/ui/models/{model_id}") in routes and ("POST", "/ui/jobs/{job_id}/cancel") in routes
    for method, path in routes:
        url = concrete(path, objects_of(a))
        missing_url = concrete(path, dict.fromkeys(objects_of(a), UNKNOWN_ID))
        a_id = next(value for value in objects_of(a).values() if value in url)
        for role, page in pages.items():
            data = {"csrf_token": csrf_of(page, "/ui/predict")} if method == "POST" else None
            response = page.request(method, url, data=data)
            missing = page.request(method, missing_url, data=data)
            as_if_missing(response, missing, a_id)
            assert response.status_code in (303, 403, 404), (method, path, role, response.status_code)
            assert not leaked(response, a, url), (method, path, role)
    parent = pages["trainer"].get(f"/ui/finetune/second?parent={a.model}")
    missing = pages["trainer"].get(f"/ui/finetune/second?parent={UNKNOWN_ID}")
    as_if_missing(parent, missing, a.model)
    assert_untouched(client, a)


def test_page_forms_naming_another_organisations_objects_answer_as_for_missing_ones(app, client, tenants):
    from tests.ui.helpers import csrf_of

    a, b = tenants
    pages = signed_in_pages(app, b)
    nobody = Tenant("nobody", UNKNOWN_ID, dataset=UNKNOWN_ID, model=UNKNOWN_ID)
    for path, variants in PAGE_FORM_REFERENCES.items():
        for variant in variants:
            form = variant(a, b)
            a_ids = [value for value in form.values() if value in a.ids()]
            for role, page in pages.items():
                token = {"csrf_token": csrf_of(page, "/ui/predict")}
                response = page.post(path, data={**form, **token})
                missing = page.post(path, data={**variant(nobody, b), **token})
                assert response.status_code == missing.status_code, (path, form, role)
                assert page_text(response, a_ids) == page_text(missing), (path, form, role)
                assert not leaked(response, a, str(form)), (path, form, role)
    assert_untouched(client, a)
