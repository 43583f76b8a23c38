"""Every list route pages the same way: offset/limit, the limit bounded by Settings.page_size_limit."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.service.helpers import bearer, error_of

# Each list route, the role that may read it, and its documented default page size.
LISTS = [
    ("/datasets", "trainer", 50),
    ("/jobs", "trainer", 50),
    ("/models", "predictor", 50),
    ("/keys", "admin", 50),
]


def test_every_list_route_documents_its_page_bounds(client):
    paths = client.get("/openapi.json").json()["paths"]
    documented = {
        path: {parameter["name"]: parameter["schema"] for parameter in paths[path]["get"]["parameters"]}
        for path in [*(path for path, _, _ in LISTS), "/jobs/{job_id}/events"]
    }
    defaults = {path: default for path, _, default in LISTS} | {"/jobs/{job_id}/events": 100}
    for path, parameters in documented.items():
        assert parameters["offset"]["minimum"] == 0, path
        assert parameters["limit"]["minimum"] == 1 and parameters["limit"]["maximum"] == 200, path
        assert parameters["limit"]["default"] == defaults[path], path


@pytest.mark.parametrize(("path", "role", "default"), LISTS)
def test_a_list_answers_with_its_page(client, keys, path, role, default):
    response = client.get(path, headers=bearer(keys[role]))
    assert response.status_code == 200, response.text
    assert response.json()["offset"] == 0 and response.json()["limit"] == default
    paged = client.get(f"{path}?offset=1&limit=2", headers=bearer(keys[role])).json()
    assert paged["offset"] == 1 and paged["limit"] == 2 and len(paged["data"]) <= 2


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "offset=-1", "limit=x"])
def test_a_page_out_of_bounds_is_a_validation_error(client, keys, query):
    response = client.get(f"/datasets?{query}", headers=bearer(keys["trainer"]))
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "validation_error"


def test_the_page_size_limit_is_the_setting(settings, database, keys):
    from api.main import create_app

    small = settings.model_copy(update={"page_size_limit": 3})
    with TestClient(create_app(small), raise_server_exceptions=False) as limited:
        trainer = bearer(keys["trainer"])
        assert limited.get("/datasets?limit=3", headers=trainer).status_code == 200
        refused = limited.get("/datasets?limit=4", headers=trainer)
        assert refused.status_code == 422
        [problem] = error_of(refused)["details"]["errors"]
        assert problem["location"] == ["query", "limit"] and "3" in problem["message"]
        events = limited.get(f"/jobs/{'0' * 32}/events?limit=4", headers=trainer)
        assert events.status_code == 422 and error_of(events)["code"] == "validation_error"
