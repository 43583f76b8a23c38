"""End to end in a real headless browser: Debian's chromium driven by Playwright, against the API
served by uvicorn on 127.0.0.1 with the real worker and the tiny test model.

Each page is photographed at a laptop's width; NOTETUNE_SCREENSHOTS=docs/screenshots writes them
where the README shows them (`make screenshots`), otherwise they go to the test's temporary folder.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from ml.vocabulary import PLOT_KINDS
from tests.service.helpers import notes_csv

CHROMIUM = Path(os.environ.get("NOTETUNE_CHROMIUM", "/usr/bin/chromium"))
CANARY = "Zebra-canary-9051 was seen in the garden."
VIEWPORT = {"width": 1280, "height": 800}
JOB_TIMEOUT_MS = 90_000
TINY_TRAINING = {
    "hp-epochs": "1",
    "hp-max_length": "64",
    "hp-warmup_steps": "0",
    "hp-batch_size": "8",
    "hp-min_rows": "10",
}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM} (make test installs Debian's chromium)"
)


@pytest.fixture(scope="module")
def live_server(settings, database, api_log, workers):
    """The app served by uvicorn in a thread, as `notetune serve` serves it."""
    import uvicorn

    from api.main import create_app

    workers.ensure_running()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    target = os.environ.get("NOTETUNE_SCREENSHOTS")
    folder = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Visit:
    """One person's browser tab: signs in, photographs pages, and fails on any console error
    (a blocked script or style under the pages' Content-Security-Policy shows up there)."""

    def __init__(self, chromium, base: str, shots: Path) -> None:
        self.context = chromium.new_context(viewport=VIEWPORT, base_url=base)
        self.page = self.context.new_page()
        self.shots = shots
        self.console_errors: list[str] = []
        self.page.on(
            "console", lambda message: message.type == "error" and self.console_errors.append(message.text)
        )

    def sign_in(self, key: str) -> None:
        self.page.goto("/ui/sign-in")
        self.page.fill("#api_key", key)
        self.page.click("button:has-text('Sign in')")
        self.page.wait_for_load_state()

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def wait_for_job(self) -> None:
        """The job page polls with htmx until the job has ended; it must succeed."""
        self.page.wait_for_selector(
            "[data-status='succeeded'], [data-status='failed']", timeout=JOB_TIMEOUT_MS
        )
        assert self.page.get_attribute("[data-status]", "data-status") == "succeeded", self.page.inner_text(
            "main"
        )

    def fill_tiny_training(self) -> None:
        self.page.click("details > summary")
        for field, value in TINY_TRAINING.items():
            self.page.fill(f"#{field}", value)

    def close(self) -> None:
        self.context.close()
        assert not self.console_errors, self.console_errors


def test_the_four_steps_in_a_browser(chromium, live_server, keys, shots, tmp_path, api_log):
    files = {}
    for name, seed in (("hospital_a", 21), ("hospital_b", 22), ("new_notes", 23)):
        files[name] = tmp_path / f"{name}.csv"
        files[name].write_bytes(notes_csv(40, seed=seed))
    visit = Visit(chromium, live_server, shots)
    page = visit.page

    page.goto("/ui/sign-in")
    visit.shot("01-sign-in")
    visit.sign_in(keys["trainer"])
    assert page.url.endswith("/ui/finetune")

    page.goto("/ui/datasets")
    page.set_input_files("#file", str(files["hospital_a"]))
    page.click("button:has-text('Upload and check')")
    page.wait_for_selector("text=Stored: hospital_a.csv")
    visit.shot("02-datasets")

    page.goto("/ui/finetune")
    page.select_option("#dataset_id", label="hospital_a.csv (40 rows)")
    page.check("input[name=method][value=lora]")
    page.fill("#name", "hospital A")
    visit.fill_tiny_training()
    visit.shot("03-first-fine-tune-form")
    page.click("button:has-text('Start fine-tuning')")
    visit.wait_for_job()
    assert "Untrained base vs fine-tuned" in page.inner_text("main")
    page.wait_for_selector("svg circle")
    visit.shot("04-first-fine-tune-result")

    page.click("text=Second fine-tune from this model")
    assert "inherited from the model you continue (lora)" in page.inner_text("main")
    page.set_input_files("#file", str(files["hospital_b"]))
    page.fill("#name", "hospital B")
    visit.fill_tiny_training()
    visit.shot("05-second-fine-tune-form")
    page.click("button:has-text('Start fine-tuning')")
    visit.wait_for_job()
    assert "AUC on the first data" in page.inner_text("main")
    visit.shot("06-second-fine-tune-result")

    page.goto("/ui/evaluate")
    page.set_input_files("#file", str(files["new_notes"]))
    page.check("label:has-text('hospital A') input")
    page.check("label:has-text('hospital B') input")
    assert page.is_checked("input[name=models][value=base]")
    visit.shot("07-test-form")
    page.click("button:has-text('Run the test')")
    visit.wait_for_job()
    page.click("text=Open the report")
    page.wait_for_load_state("load")
    widths = page.evaluate("() => [...document.images].map(image => image.naturalWidth)")
    assert len(widths) == len(PLOT_KINDS) and all(width > 0 for width in widths)  # every plot drew
    report = page.inner_text("main")
    assert "DeLong p" in report and "hospital A" in report and "hospital B" in report
    visit.shot("08-test-report")

    page.goto("/ui/predict")
    page.select_option("#model_id", label="hospital B")
    page.fill("#note", f"Stage IV, liver metastases. {CANARY}\nECOG 3; progressive disease.")
    page.check("label:has-text('hospital A') input")
    page.click("button:has-text('Predict')")
    page.wait_for_selector("#result")
    assert "Probability of death" in page.inner_text("#result")
    assert CANARY not in page.url
    stored = page.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
    assert CANARY not in stored
    visit.shot("09-predict")

    page.goto("/ui/models")
    assert "hospital A" in page.inner_text("main") and "hospital B" in page.inner_text("main")
    visit.shot("10-models")
    page.goto("/ui/jobs")
    visit.shot("11-jobs")

    page.goto("/ui/predict")
    page.select_option("#language", "zh_Hant")
    page.click("button:has-text('Switch')")
    page.wait_for_selector("text=4. 預測")
    visit.shot("12-predict-zh-hant")
    visit.close()
    assert CANARY not in api_log.read_text()


def test_a_form_without_its_csrf_token_is_refused(chromium, live_server, keys, shots, tmp_path):
    visit = Visit(chromium, live_server, shots)
    visit.sign_in(keys["trainer"])
    page = visit.page
    page.goto("/ui/datasets")
    upload = tmp_path / "no-token.csv"
    upload.write_bytes(notes_csv(20, seed=31))
    page.set_input_files("#file", str(upload))
    page.evaluate("document.querySelector('main form input[name=csrf_token]').remove()")
    with page.expect_response(lambda response: response.request.method == "POST") as answer:
        page.click("button:has-text('Upload and check')")
    assert answer.value.status == 403
    assert "security token" in page.inner_text("main")
    page.goto("/ui/datasets")
    assert "no-token.csv" not in page.inner_text("main")
    visit.console_errors.clear()  # the 403 itself is reported on the console
    visit.close()


def test_a_predictor_cannot_see_the_training_pages(chromium, live_server, keys, shots):
    visit = Visit(chromium, live_server, shots)
    visit.sign_in(keys["predictor"])
    page = visit.page
    assert page.url.endswith("/ui/predict")
    navigation = page.inner_text("header nav")
    assert "4. Predict" in navigation and "Models" in navigation
    for hidden in ("Datasets", "First fine-tune", "Second fine-tune", "Test on new data", "Jobs"):
        assert hidden not in navigation
    response = page.goto("/ui/finetune")
    assert response.status == 403 and "Not allowed" in page.inner_text("main")
    visit.shot("13-predictor-refused")
    visit.console_errors.clear()
    visit.close()
