"""Every page, role and error state of the web app, through the app's test client, with the real
database, broker and worker behind it."""

from __future__ import annotations

import base64
import json
import re

import pytest

from tests.service.helpers import notes_csv, rows_csv
from tests.ui.helpers import (
    SMALL_FORM,
    browser,
    csrf_of,
    job_id_from,
    post_form,
    sign_in,
    wait_for_page_job,
)

TRAINING_PAGES = ["/ui/datasets", "/ui/finetune", "/ui/finetune/second", "/ui/evaluate", "/ui/jobs"]
CANARY = "Zebra-canary-4417 lives on the fourth floor."


@pytest.fixture
def trainer(app, client, keys):
    page = browser(app)
    sign_in(page, keys["trainer"])
    return page


@pytest.fixture
def predictor(app, client, keys):
    page = browser(app)
    sign_in(page, keys["predictor"])
    return page


@pytest.fixture(scope="module")
def trained(app, client, keys, workers):
    """A first and a second fine-tune of the tiny model, started from the pages."""
    workers.ensure_running()
    page = browser(app)
    sign_in(page, keys["trainer"])
    first = post_form(
        page,
        "/ui/finetune",
        {"method": "lora", "name": "first ui", **SMALL_FORM},
        files={"file": ("hospital_a.csv", notes_csv(40, seed=11), "text/csv")},
    )
    first_job = job_id_from(first)
    first_html = wait_for_page_job(page, first_job)
    first_model = re.search(r'href="/ui/models/(\w+)"', first_html).group(1)
    second = post_form(
        page,
        "/ui/finetune",
        {"parent_model_id": first_model, "stage": "2", **SMALL_FORM},
        files={"file": ("hospital_b.csv", notes_csv(40, seed=12), "text/csv")},
        page="/ui/finetune/second",
    )
    second_job = job_id_from(second)
    second_html = wait_for_page_job(page, second_job)
    second_model = re.search(r'href="/ui/models/(\w+)"', second_html).group(1)
    return {
        "first_job": first_job,
        "first_html": first_html,
        "first_model": first_model,
        "second_html": second_html,
        "second_model": second_model,
    }


# ------------------------------------------------------------------------------ session and CSRF


def test_sign_in_sets_a_signed_httponly_strict_cookie_without_the_key(app, client, keys):
    page = browser(app)
    assert page.get("/ui/sign-in").status_code == 200
    token = csrf_of(page)
    response = page.post("/ui/sign-in", data={"api_key": keys["trainer"], "csrf_token": token})
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert "path=/ui" in cookie.lower() and "max-age=" in cookie.lower()
    value = re.search(r"notetune_ui=([^;]+)", cookie).group(1)
    payload = json.loads(base64.b64decode(value.split(".")[0] + "=="))
    assert set(payload) == {"sid", "csrf"}
    assert keys["trainer"] not in cookie
    assert payload["csrf"] != token  # a token planted before sign-in is not kept
    assert page.get("/ui/models").status_code == 200


def test_a_wrong_key_is_refused_on_the_sign_in_page(app, client):
    page = browser(app)
    response = page.post("/ui/sign-in", data={"api_key": "ntk_wrong", "csrf_token": csrf_of(page)})
    assert response.status_code == 401
    assert "not valid or has been revoked" in response.text
    assert "notetune_ui" not in response.headers.get("set-cookie", "") or "key_id" not in response.text


def test_pages_need_a_session(app, client):
    page = browser(app)
    for path in ["/ui", "/ui/models", "/ui/predict", *TRAINING_PAGES]:
        response = page.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/ui/sign-in"
    htmx = page.get("/ui/jobs/" + "0" * 32 + "/progress", headers={"HX-Request": "true"})
    assert htmx.headers["HX-Redirect"] == "/ui/sign-in"


@pytest.mark.parametrize("token", [None, "forged-token"])
def test_a_post_without_the_sessions_csrf_token_is_refused(trainer, token):
    data = {"name": "refused upload"} if token is None else {"name": "refused upload", "csrf_token": token}
    upload = {"file": ("refused.csv", notes_csv(20, seed=41), "text/csv")}
    response = trainer.post("/ui/datasets", data=data, files=upload)
    assert response.status_code == 403
    assert "security token" in response.text
    assert "refused upload" not in trainer.get("/ui/datasets").text
    sign_in_without = trainer.post("/ui/sign-in", data={"api_key": "ntk_x"})
    assert sign_in_without.status_code == 403


def test_sign_out_ends_the_session_for_every_copy_of_its_cookie(app, trainer):
    copy = browser(app)
    copy.cookies.update(trainer.cookies)  # what someone took from the browser before sign-out
    assert copy.get("/ui/models").status_code == 200
    response = post_form(trainer, "/ui/sign-out", {}, page="/ui/models")
    assert response.status_code == 303
    assert trainer.get("/ui/models").status_code == 303
    assert copy.get("/ui/models").status_code == 303  # ended on the server, not only in this browser


def test_a_revoked_key_loses_its_pages_at_once(app, client, database):
    from core.db.models import Role
    from core.services.auth import create_key, default_organisation, revoke_key

    with database.transaction() as session:
        organisation_id = default_organisation(session).id
        row, plaintext = create_key(session, Role.trainer, "to revoke", organisation_id=organisation_id)
    page = browser(app)
    sign_in(page, plaintext)
    assert page.get("/ui/datasets").status_code == 200
    with database.transaction() as session:
        revoke_key(session, row.id, organisation_id=organisation_id)
    assert page.get("/ui/datasets").status_code == 303


def test_pages_are_never_cached_and_allow_only_local_scripts(trainer):
    for path in ["/ui/sign-in", "/ui/predict", "/ui/models", *TRAINING_PAGES]:
        response = trainer.get(path)
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert "https://" not in response.text and "http://" not in response.text


# ------------------------------------------------------------------------------------------ roles


def test_a_predictor_sees_predict_and_models_only(predictor):
    home = predictor.get("/ui")
    assert home.headers["location"] == "/ui/predict"
    page = predictor.get("/ui/predict").text
    assert 'href="/ui/models"' in page
    for path in TRAINING_PAGES:
        assert f'href="{path}"' not in page
        response = predictor.get(path)
        assert response.status_code == 403, path
        assert "insufficient_role" in response.text
    refused = post_form(predictor, "/ui/finetune", {"method": "full"}, page="/ui/predict")
    assert refused.status_code == 403
    assert predictor.get("/ui/models").status_code == 200


def test_a_trainer_starts_on_the_first_fine_tune(trainer):
    assert trainer.get("/ui").headers["location"] == "/ui/finetune"


# --------------------------------------------------------------------------------------- datasets


def test_upload_shows_the_validation_summary(trainer):
    content = rows_csv(
        [("Stage IV. Liver metastases.", 1)] * 2 + [(f"Stage I, note {i}.", 0) for i in range(20)]
    )
    response = post_form(trainer, "/ui/datasets", {}, files={"file": ("summary.csv", content, "text/csv")})
    assert response.status_code == 201
    assert "Stored: summary.csv" in response.text
    summary = re.sub(r"\s+", " ", response.text)
    assert "<dt>Rows</dt><dd>22</dd>" in summary and "<dd>20 / 2</dd>" in summary
    assert "<dt>Duplicate notes</dt><dd>1</dd>" in summary
    again = post_form(trainer, "/ui/datasets", {}, files={"file": ("again.csv", content, "text/csv")})
    assert again.status_code == 200 and "uploaded before" in again.text


def test_a_bad_csv_shows_the_error_with_its_rows(trainer, client, keys):
    content = rows_csv([("fine", 0), ("bad label", 2), ("ok", 1), ("also bad", 7)])
    page = post_form(trainer, "/ui/datasets", {}, files={"file": ("bad.csv", content, "text/csv")})
    api = client.post(
        "/datasets",
        files={"file": ("bad.csv", content, "text/csv")},
        headers={"Authorization": f"Bearer {keys['trainer']}"},
    )
    error = api.json()["error"]
    assert page.status_code == api.status_code == 422
    assert error["message"] in page.text.replace("&#39;", "'")
    assert "Rows (counted from 1 after the header): 2, 4" in page.text
    assert error["details"]["rows"] == [2, 4]


def test_an_upload_without_a_file_is_a_form_error(trainer):
    response = post_form(trainer, "/ui/datasets", {"name": "nothing"})
    assert response.status_code == 422
    assert "choose a CSV file to upload" in response.text


# ------------------------------------------------------------------------------------ fine-tunes


def test_the_first_fine_tune_form_is_generated_from_the_config(trainer):
    from ml.config import hyperparameter_fields

    page = trainer.get("/ui/finetune").text
    for spec in hyperparameter_fields():
        assert f'name="hp.{spec.name}"' in page, spec.name
    assert page.index('name="hp.weight_multiplier"') < page.index("<details>")
    assert page.index('name="hp.lr"') < page.index("<details>") < page.index('name="hp.batch_size"')
    assert 'placeholder="0.8"' in page and 'placeholder="8"' in page
    assert "full 2e-05 · lora 0.001 · adalora 0.002" in page
    for method in ("Full:", "LoRA:", "AdaLoRA:"):
        assert method in page


def test_a_bad_hyperparameter_is_named_on_the_form(trainer, client):
    datasets = trainer.get("/ui/datasets")
    assert datasets.status_code == 200
    response = post_form(
        trainer,
        "/ui/finetune",
        {"method": "lora", "hp.epochs": "0"},
        files={"file": ("bad-epochs.csv", notes_csv(30, seed=5), "text/csv")},
    )
    assert response.status_code == 422
    assert "epochs must be between 1 and 100, got 0" in response.text
    assert 'value="0"' in response.text  # what the person typed stays in the form
    no_data = post_form(trainer, "/ui/finetune", {"method": "lora"})
    assert no_data.status_code == 422 and "choose a dataset or upload a CSV file" in no_data.text


def test_first_fine_tune_runs_to_the_base_comparison(trained, trainer):
    html = trained["first_html"]
    assert 'data-status="succeeded"' in html
    assert "Untrained base vs fine-tuned" in html and "ROC AUC" in html
    page = trainer.get(f"/ui/jobs/{trained['first_job']}")
    assert page.status_code == 200 and "<svg" in page.text and "<polyline" in page.text
    assert page.headers["cache-control"] == "no-store"


def test_the_second_fine_tune_shows_lineage_inherits_the_method_and_words_the_forgetting(trained, trainer):
    form = trainer.get(f"/ui/finetune/second?parent={trained['first_model']}").text
    assert f'value="{trained["first_model"]}" checked' in form
    assert "inherited from the model you continue (lora)" in form
    assert 'name="method"' not in form
    assert 'placeholder="6"' in form and 'placeholder="0.0005"' in form  # the second stage's defaults
    html = trained["second_html"]
    assert "Parent vs second model" in html
    assert re.search(r"The second model (lost|gained) \d\.\d{3} AUC on the first data", html)
    assert "95% CI" in html and "notes the first model was validated on" in html
    model = trainer.get(f"/ui/models/{trained['second_model']}").text
    assert f'href="/ui/models/{trained["first_model"]}"' in model  # lineage: base -> first -> second


def test_a_second_fine_tune_needs_a_parent(trainer):
    response = post_form(
        trainer,
        "/ui/finetune",
        {"stage": "2"},
        files={"file": ("p.csv", notes_csv(30, seed=6), "text/csv")},
        page="/ui/finetune/second",
    )
    assert response.status_code == 422 and "choose the model to continue" in response.text


def test_jobs_and_models_lists(trained, trainer, predictor):
    jobs = trainer.get("/ui/jobs").text
    assert trained["first_job"] in jobs and "succeeded" in jobs
    models = predictor.get("/ui/models").text
    assert "first ui" in models and trained["second_model"][:8] in models
    assert predictor.get(f"/ui/models/{trained['second_model']}").status_code == 200


def test_a_finished_job_cannot_be_cancelled_and_unknown_ids_are_404_pages(trained, trainer):
    response = post_form(trainer, f"/ui/jobs/{trained['first_job']}/cancel", {}, page="/ui/jobs")
    assert response.status_code == 409 and "cannot be cancelled" in response.text
    assert trainer.get("/ui/jobs/" + "0" * 32).status_code == 404
    missing = trainer.get("/ui/no-such-page")
    assert missing.status_code == 404 and "<html" in missing.text


def test_a_queued_job_is_cancelled_from_its_page(trainer, workers):
    workers.current.stop()  # no worker: the job stays queued until it is cancelled
    try:
        response = post_form(
            trainer,
            "/ui/finetune",
            {"method": "full", **SMALL_FORM},
            files={"file": ("cancel.csv", notes_csv(30, seed=9), "text/csv")},
        )
        job_id = job_id_from(response)
        page = trainer.get(f"/ui/jobs/{job_id}").text
        assert "waiting for a worker" in page
        cancelled = post_form(trainer, f"/ui/jobs/{job_id}/cancel", {}, page=f"/ui/jobs/{job_id}")
        assert cancelled.status_code == 303
        assert 'data-status="cancelled"' in trainer.get(f"/ui/jobs/{job_id}").text
    finally:
        workers.ensure_running()


# ---------------------------------------------------------------------------------- test and predict


def test_test_on_new_data_with_three_models(trained, trainer):
    response = post_form(
        trainer,
        "/ui/evaluate",
        {"models": ["base", trained["first_model"], trained["second_model"]]},
        files={"file": ("new.csv", notes_csv(30, seed=13), "text/csv")},
    )
    html = wait_for_page_job(trainer, job_id_from(response))
    evaluation_id = re.search(r'href="/ui/evaluations/(\w+)"', html).group(1)
    report = trainer.get(f"/ui/evaluations/{evaluation_id}")
    assert report.status_code == 200
    assert "DeLong p" in report.text and "McNemar p" in report.text and "base (untrained)" in report.text
    assert report.text.count("<tr>") >= 3 + 2  # three models, two comparisons
    for kind in ("roc", "pr", "calibration", "confusion"):
        plot = trainer.get(f"/ui/evaluations/{evaluation_id}/plots/{kind}.png")
        assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
    table = trainer.get(f"/ui/evaluations/{evaluation_id}/table.csv")
    assert table.headers["content-type"].startswith("text/csv") and table.text.startswith("model,")


def test_an_evaluation_form_error_keeps_the_choices(trained, trainer):
    response = post_form(
        trainer, "/ui/evaluate", {"models": []}, files={"file": ("e.csv", notes_csv(30), "text/csv")}
    )
    assert response.status_code == 422 and "models" in response.text


def test_predict_shows_the_model_beside_the_base_and_keeps_the_note_out_of_logs(trained, predictor, api_log):
    note = f"Stage IV, liver metastases. {CANARY} ECOG 3; progressive disease."
    response = post_form(
        predictor,
        "/ui/predict",
        {"model_id": trained["second_model"], "note": note, "compare": ["base", trained["first_model"]]},
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert "Probability of death" in response.text and "base (untrained)" in response.text
    assert response.text.count("%</td>") >= 3
    assert CANARY in response.text  # the note stays in the form to edit
    from ml.data import sentences_of

    marks = response.text.count("<mark class=")
    assert marks == len(sentences_of(note)) > 1, "each sentence is marked by its share of the score"
    assert CANARY not in api_log.read_text()
    empty = post_form(predictor, "/ui/predict", {"model_id": trained["second_model"], "note": "  "})
    assert empty.status_code == 422 and "notes must not be empty" in empty.text
    unknown = post_form(predictor, "/ui/predict", {"model_id": "f" * 32, "note": "x"})
    assert unknown.status_code == 404


def test_explained_sentences_are_highlighted_in_the_note():
    from api.ui.views import highlighted

    note = "Stage IV. ER negative.\nLives alone."
    segments = highlighted(
        note,
        {
            "sentences": [
                {"start": 0, "end": 9, "contribution": 0.8},
                {"start": 10, "end": 22, "contribution": -0.5},
                {"start": 23, "end": 35, "contribution": 0.01},
            ]
        },
    )
    assert "".join(segment.text for segment in segments) == note
    assert [(s.text, s.tone) for s in segments if s.contribution is not None] == [
        ("Stage IV.", "raised"),
        ("ER negative.", "lowered"),
        ("Lives alone.", ""),
    ]


# ----------------------------------------------------------------------------- language and docs


def test_the_language_switch_and_the_browsers_language(app, client, keys):
    page = browser(app)
    assert "Sign in with your API key" in page.get("/ui/sign-in").text
    chinese = browser(app).get("/ui/sign-in", headers={"Accept-Language": "zh-TW,zh;q=0.9"})
    assert 'lang="zh-Hant"' in chinese.text and "登入" in chinese.text
    switched = post_form(
        page, "/ui/language", {"language": "zh_Hant", "next": "/ui/sign-in"}, page="/ui/sign-in"
    )
    assert switched.headers["location"] == "/ui/sign-in"
    assert "登入" in page.get("/ui/sign-in").text
    away = post_form(
        page, "/ui/language", {"language": "en", "next": "https://example.org/"}, page="/ui/sign-in"
    )
    assert away.headers["location"] == "/ui"  # never a redirect off the site


def test_every_page_string_has_a_traditional_chinese_translation():
    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import read_po

    from api.ui.i18n import LOCALE_DIR

    root = LOCALE_DIR.parent.parent
    extracted = {
        message[2] if isinstance(message[2], str) else message[2][0]
        for message in extract_from_dir(str(root), method_map=_method_map(root), options_map=_options(root))
    }
    with open(LOCALE_DIR / "zh_Hant" / "LC_MESSAGES" / "messages.po", "rb") as handle:
        catalog = read_po(handle)
    missing = sorted(
        m for m in extracted if not (catalog.get(m) and catalog.get(m).string and not catalog.get(m).fuzzy)
    )
    assert not missing, f"{len(missing)} strings without a translation, e.g. {missing[:5]}"


def _method_map(root):
    return [("api/ui/**.py", "python"), ("api/templates/**.html", "jinja2")]


def _options(root):
    return {"api/templates/**.html": {"extensions": "jinja2.ext.i18n"}}


def test_the_api_docs_load_their_assets_from_this_server(client):
    for path in ("/docs", "/redoc"):
        html = client.get(path).text
        assert "cdn" not in html.lower() and "fonts.googleapis" not in html
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            assert client.get(asset).status_code == 200, asset
    assert client.get("/static/vendor/htmx/htmx.min.js").status_code == 200


def test_the_baseline_is_shown_with_its_verdict_and_can_be_a_column(trained, trainer):
    first = trained["first_model"]
    assert "TF-IDF baseline vs fine-tuned" in trained["first_html"]
    model_page = trainer.get(f"/ui/models/{first}").text
    assert "TF-IDF baseline vs this model" in model_page
    assert re.search(r"TF-IDF baseline is better|fine-tuned model is better|are level", model_page)
    assert f'value="baseline:{first}"' in trainer.get("/ui/evaluate").text
    response = post_form(
        trainer,
        "/ui/evaluate",
        {"models": [f"baseline:{first}", first]},
        files={"file": ("new.csv", notes_csv(30, seed=14), "text/csv")},
    )
    html = wait_for_page_job(trainer, job_id_from(response))
    evaluation_id = re.search(r'href="/ui/evaluations/(\w+)"', html).group(1)
    report = trainer.get(f"/ui/evaluations/{evaluation_id}")
    assert report.status_code == 200 and "TF-IDF baseline · first ui" in report.text
