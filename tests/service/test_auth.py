"""Every route but /healthz and the docs needs a key (401), and the right role (403)."""

from __future__ import annotations

import re

import pytest

from tests.service.helpers import bearer, wait_until

PUBLIC = {("GET", "/healthz")}
# The least role each route accepts; admin may do everything, a trainer may also predict.
REQUIRED_ROLE = {
    ("POST", "/datasets"): "trainer",
    ("GET", "/datasets"): "trainer",
    ("GET", "/datasets/{dataset_id}"): "trainer",
    ("DELETE", "/datasets/{dataset_id}"): "trainer",
    ("POST", "/jobs/finetune"): "trainer",
    ("POST", "/jobs/evaluate"): "trainer",
    ("GET", "/jobs"): "trainer",
    ("GET", "/jobs/{job_id}"): "trainer",
    ("GET", "/jobs/{job_id}/events"): "trainer",
    ("POST", "/jobs/{job_id}/cancel"): "trainer",
    ("GET", "/models"): "predictor",
    ("GET", "/models/{model_id}"): "predictor",
    ("DELETE", "/models/{model_id}"): "trainer",
    ("POST", "/predict"): "predictor",
    ("GET", "/evaluations/{evaluation_id}"): "trainer",
    ("GET", "/evaluations/{evaluation_id}/plots/{kind}.png"): "trainer",
    ("DELETE", "/evaluations/{evaluation_id}"): "trainer",
    ("POST", "/keys"): "admin",
    ("GET", "/keys"): "admin",
    ("DELETE", "/keys/{key_id}"): "admin",
    ("GET", "/version"): "predictor",
}
RANK = {"predictor": 0, "trainer": 1, "admin": 2}


def api_routes(app) -> list[tuple[str, str]]:
    # The OpenAPI document lists every API route (this FastAPI nests included routers, so
    # app.routes does not hold them flat).
    return sorted((method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item)


def concrete(path: str) -> str:
    return re.sub(r"\{kind\}", "roc", re.sub(r"\{[a-z_]+_id\}", "0" * 32, path))


# Routes for the deployment's operator, with a token of their own: no organisation's key reads them.
OPERATOR = {("GET", "/metrics")}


def test_every_route_is_classified(app):
    assert set(api_routes(app)) == set(REQUIRED_ROLE) | PUBLIC | OPERATOR


def test_metrics_need_the_operators_token_and_no_organisations_key(client, keys):
    from tests.service_fixtures import METRICS_TOKEN

    for key in keys.values():
        refused = client.get("/metrics", headers=bearer(key))
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(METRICS_TOKEN)).status_code == 200


def test_with_metrics_off_a_request_without_the_header_is_still_401_as_the_schema_says(settings, keys):
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(settings.model_copy(update={"metrics_token": None}))) as off:
        assert off.get("/metrics").status_code == 401
        answer = off.get("/metrics", headers=bearer(keys["admin"]))
        assert answer.status_code == 404 and "metrics are off" in answer.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path"), sorted(REQUIRED_ROLE))
def test_route_needs_a_valid_key_of_the_right_role(client, keys, method, path):
    url = concrete(path)
    for headers in ({}, bearer("ntk_not-a-real-key"), {"Authorization": "Basic dXNlcjpwYXNz"}):
        response = client.request(method, url, headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
    for role, rank in RANK.items():
        response = client.request(method, url, headers=bearer(keys[role]))
        if rank < RANK[REQUIRED_ROLE[(method, path)]]:
            assert response.status_code == 403, (method, path, role, response.text)
            assert response.json()["error"]["code"] == "insufficient_role"
        else:
            # Allowed: the answer may be 404 or 422 for these made-up ids and empty bodies, never 5xx.
            assert response.status_code not in (401, 403), (method, path, role, response.text)
            assert response.status_code < 500, (method, path, role, response.text)


def test_public_routes_and_docs_need_no_key(client, workers):
    workers.ensure_running()
    # /healthz answers from a probe that checks every NOTETUNE_HEALTH_INTERVAL_S: a worker just
    # restarted by an earlier test shows up at its next check.
    wait_until(lambda: client.get("/healthz").status_code == 200, timeout=15, message="/healthz stayed 503")
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in ("/jobs/finetune", "/jobs/evaluate"):
        assert {"application/json", "multipart/form-data"} <= set(
            paths[path]["post"]["requestBody"]["content"]
        )
    evaluate = paths["/jobs/evaluate"]["post"]["requestBody"]["content"]["application/json"]
    assert "models" in evaluate["schema"]["required"]
    assert all("models" in example["value"] for example in evaluate["examples"].values())


def test_revoked_key_is_refused(client, keys):
    admin = bearer(keys["admin"])
    created = client.post("/keys", json={"role": "predictor", "name": "short-lived"}, headers=admin)
    assert created.status_code == 201
    key = created.json()["key"]
    assert client.get("/models", headers=bearer(key)).status_code == 200
    listed = client.get("/keys", headers=admin).json()["data"]
    assert all("key" not in item for item in listed)
    assert client.delete(f"/keys/{created.json()['id']}", headers=admin).status_code == 204
    refused = client.get("/models", headers=bearer(key))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


@pytest.fixture
def sqlite_database(tmp_path):
    from alembic import command
    from core.db.migrations import alembic_config
    from core.db.session import Database

    url = f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    command.upgrade(alembic_config(url), "head")
    database = Database(url)
    yield database
    database.dispose()


def test_two_admins_revoking_each_other_at_once_leave_one_on_sqlite(sqlite_database):
    """Each revocation reads two active admins before the other writes. SQLite ignores FOR UPDATE (and
    its driver reads outside a transaction), so the guard must be in the write itself. (On PostgreSQL
    the row locks make the second revocation wait for the first.)"""
    from sqlalchemy import event

    from core.db.models import ApiKey, Role
    from core.errors import Conflict
    from core.services.auth import create_key, default_organisation, revoke_key

    db = sqlite_database
    with db.transaction() as session:
        organisation = default_organisation(session)
        first, _ = create_key(session, Role.admin, "first", organisation_id=organisation.id)
        second, _ = create_key(session, Role.admin, "second", organisation_id=organisation.id)
    other = type(db)(db.url)
    fired: list[bool] = []

    def revoke_first_meanwhile(conn, cursor, statement, *_):
        if statement.lstrip().upper().startswith("UPDATE API_KEYS") and not fired:
            fired.append(True)
            with other.transaction() as session:
                revoke_key(session, first.id, organisation_id=organisation.id)

    event.listen(db.engine, "before_cursor_execute", revoke_first_meanwhile)
    try:
        with pytest.raises(Conflict) as refused, db.transaction() as session:
            revoke_key(session, second.id, organisation_id=organisation.id)
    finally:
        event.remove(db.engine, "before_cursor_execute", revoke_first_meanwhile)
        other.dispose()
    assert fired and refused.value.code == "last_admin_key"
    with db.session() as session:
        assert session.query(ApiKey).filter(ApiKey.revoked_at.is_(None)).count() == 1
