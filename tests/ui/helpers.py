"""Helpers for the page tests: a browser-like client with its own cookies, CSRF tokens, polling."""

from __future__ import annotations

import re
import time

from fastapi.testclient import TestClient

from tests.service.helpers import FINISHED

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
SMALL_FORM = {
    "hp.epochs": "1",
    "hp.max_length": "64",
    "hp.warmup_steps": "0",
    "hp.batch_size": "8",
    "hp.min_rows": "10",
}


def browser(app) -> TestClient:
    """A client with a cookie jar of its own, that sees redirects instead of following them."""
    return TestClient(app, raise_server_exceptions=False, follow_redirects=False)


def csrf_of(client: TestClient, page: str = "/ui/sign-in") -> str:
    match = CSRF.search(client.get(page).text)
    assert match, f"no CSRF token on {page}"
    return match.group(1)


def sign_in(client: TestClient, key: str) -> None:
    response = client.post("/ui/sign-in", data={"api_key": key, "csrf_token": csrf_of(client)})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui"


def post_form(client: TestClient, path: str, data: dict, files: dict | None = None, page: str | None = None):
    token = csrf_of(client, page or path)
    return client.post(path, data={**data, "csrf_token": token}, files=files)


def job_id_from(response) -> str:
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith("/ui/jobs/"), location
    return location.rsplit("/", 1)[1]


def wait_for_page_job(client: TestClient, job_id: str, timeout: float = 180.0) -> str:
    """Poll the job's progress fragment, as the page's htmx does, until the job ends; its last HTML."""
    deadline = time.monotonic() + timeout
    while True:
        fragment = client.get(f"/ui/jobs/{job_id}/progress", headers={"HX-Request": "true"})
        assert fragment.status_code == 200, fragment.text
        status = re.search(r'data-status="(\w+)"', fragment.text).group(1)
        if status in FINISHED:
            assert "hx-trigger" not in fragment.text  # a finished job stops the polling
            return fragment.text
        assert 'hx-trigger="every 2s"' in fragment.text
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {status} after {timeout:.0f} s")
        time.sleep(0.3)
