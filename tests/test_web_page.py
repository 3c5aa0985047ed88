"""The web page at / in a real browser: Debian's chromium (/usr/bin/chromium, installed by
`make test`), driven by Playwright's Python package (no browser download), against a live
stack (gunicorn, a Celery worker, redis-server). One browser for the module.

TABSERVE_SCREENSHOT=PATH saves the finished page (a prediction shown, a job done) there:
`make screenshot` writes docs/web-page.png."""

from __future__ import annotations

import http.client
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from shared.jobs.coordinator import run_job
from shared.models.store import ModelStore
from shared.models.training import train_from_file
from shared.security.keyfile import create_key
from shared.services import Services
from tests.artifacts import copy_demo
from tests.servers import ApiServer, tabserve_env

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = 20_000
IDLE_QUEUE = "webpage-idle"  # no worker consumes it: jobs submitted there stay queued


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (scripts/system-deps.sh "
                    "chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _open(browser, url: str, **context_options):
    """A fresh context on the page at `url`; the page's script errors are collected."""
    context = browser.new_context(base_url=url, accept_downloads=True, **context_options)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.script_errors = []
    page.on("pageerror", lambda exc: page.script_errors.append(str(exc)))
    # The API's 4xx answers are part of the tests; a page asset that does not load is not.
    page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith(
        "Failed to load resource") and page.script_errors.append(msg.text))
    page.on("response", lambda r: r.status >= 400 and "/static/" in r.url and
            page.script_errors.append(f"{r.url}: {r.status}"))
    page.goto("/")
    return context, page


@pytest.fixture
def page(browser, api_server, worker, redis_client):
    context, page = _open(browser, api_server.url, viewport={"width": 1280, "height": 1000})
    page.locator("#predict-fields input").first.wait_for()
    yield page
    errors = page.script_errors
    context.close()
    assert not errors, errors


def _expect_text(locator, pattern: str) -> None:
    from playwright.sync_api import expect

    expect(locator).to_have_text(re.compile(pattern), timeout=WAIT_MS)


def _csv(tmp_path: Path, frame: pd.DataFrame, name: str) -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_the_page_shell_is_static_with_a_strict_policy(api_server):
    r = requests.get(api_server.url + "/", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    policy = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    # No inline script or handler: every <script> has a src, no on...= attribute.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text)
    assert not re.search(r"\son[a-z]+\s*=", r.text)
    assert not re.search(r"(src|href)=\"(https?:)?//", r.text)  # nothing from elsewhere
    for asset, kind in [("app.js", "javascript"), ("app.css", "text/css")]:
        served = requests.get(f"{api_server.url}/static/ui/{asset}", timeout=5)
        assert served.status_code == 200 and kind in served.headers["Content-Type"]


def test_the_form_predicts_one_row(page, api_server, demo_rows):
    row = demo_rows[7]
    for name, value in row.items():
        page.get_by_label(name, exact=True).fill(repr(value))
    page.get_by_role("button", name="Predict", exact=True).click()
    expected = requests.post(api_server.url + "/predict", json={"features": row},
                             timeout=5).json()
    _expect_text(page.locator("#prediction-label"), f"^{expected['prediction']}$")
    shown = page.locator("#probabilities-body tr").all_inner_texts()
    assert len(shown) == len(expected["probabilities"])
    for text, (cls, p) in zip(shown, expected["probabilities"].items(), strict=True):
        assert text.startswith(cls) and f"{p * 100:.1f}%" in text


def test_a_field_left_empty_shows_the_servers_message(page):
    page.get_by_role("button", name="Fill with typical values").click()
    page.get_by_label("mean texture", exact=True).fill("")
    page.get_by_role("button", name="Predict", exact=True).click()
    error = page.locator("#predict-error")
    _expect_text(error, "mean texture")
    assert page.locator("#prediction").is_hidden()


def test_an_uploaded_csv_is_scored_live_and_its_result_downloads(page, customer_frame,
                                                                 tmp_path, demo_rows,
                                                                 api_server):
    # A prediction first, so that the finished page shows both.
    page.get_by_role("button", name="Fill with typical values").click()
    page.get_by_role("button", name="Predict", exact=True).click()
    _expect_text(page.locator("#prediction-label"), r"^\d$")

    page.get_by_label("ID column").fill("customer")
    page.set_input_files("#file-input", _csv(tmp_path, customer_frame, "customers.csv"))
    _expect_text(page.locator("#job-status"), "^succeeded$")
    _expect_text(page.locator("#job-text"), rf"{len(customer_frame)} / {len(customer_frame)}"
                 r" rows \(100%\)")
    assert page.locator("#job-progress").evaluate("p => p.value") == 100
    assert page.locator("#upload-progress").evaluate("p => p.value") == 100
    assert "(100%)" in page.locator("#upload-text").inner_text()
    job_id = page.locator("#job-id").inner_text()
    row = page.locator(f'#jobs-body tr[data-job="{job_id}"]')
    _expect_text(row.locator("td[data-label=Status]"), "^succeeded$")
    assert row.get_by_role("link", name=f"result of job {job_id}").is_visible()

    if os.environ.get("TABSERVE_SCREENSHOT"):
        page.evaluate("document.activeElement.blur()")
        page.screenshot(path=os.environ["TABSERVE_SCREENSHOT"], full_page=True)

    with page.expect_download() as info:
        page.get_by_role("link", name="Download result", exact=False).first.click()
    download = info.value
    assert download.suggested_filename == "customers-predictions.csv"
    result = pd.read_csv(download.path())
    assert len(result) == len(customer_frame)
    assert result["customer"].tolist() == customer_frame["customer"].tolist()
    online = requests.post(api_server.url + "/predict", json={"instances": demo_rows},
                           timeout=10).json()
    assert result["prediction"].tolist() == online["predictions"]


def test_a_refused_upload_shows_the_servers_message(page, customer_frame, tmp_path,
                                                    api_server):
    missing = _csv(tmp_path, customer_frame.drop(columns=["mean radius"]), "short.csv")
    refused = requests.post(api_server.url + "/jobs", files={"file": missing.open("rb")},
                            timeout=10)
    assert refused.status_code == 422
    message = refused.json()["error"]["message"]
    page.set_input_files("#file-input", missing)
    _expect_text(page.locator("#upload-error .message"), "^" + re.escape(message) + "$")
    assert "mean radius" in message
    assert page.locator("#job").is_hidden()

    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    page.set_input_files("#file-input", empty)
    _expect_text(page.locator("#upload-error .message"), ".")
    refused = requests.post(api_server.url + "/jobs", files={"file": empty.open("rb")},
                            timeout=10)
    assert 400 <= refused.status_code < 500
    assert page.locator("#upload-error .message").inner_text() == \
        refused.json()["error"]["message"]


def test_a_job_that_fails_shows_why(page, customer_frame, tmp_path):
    bad = customer_frame.astype(object)
    bad.iloc[3, 2] = "oops"  # text in a numeric column: the worker fails the job there
    page.set_input_files("#file-input", _csv(tmp_path, bad, "bad-row.csv"))
    _expect_text(page.locator("#job-status"), "^failed$")
    error = page.locator("#upload-error")
    _expect_text(error, "The job failed: .*row 3")
    assert str(bad.columns[2]) in error.inner_text()

    # The same file with bad rows skipped: a result without row 3, and its errors file.
    page.get_by_label("Bad rows").select_option("skip")
    page.set_input_files("#file-input", _csv(tmp_path, bad, "bad-row.csv"))
    _expect_text(page.locator("#job-status"), "^succeeded$")
    assert page.locator("#upload-error").is_hidden()
    with page.expect_download() as info:
        page.get_by_role("link", name="Download skipped rows").click()
    skipped = pd.read_csv(info.value.path())
    assert skipped["row"].tolist() == [3] and skipped["field"].tolist() == [bad.columns[2]]


def test_the_page_fits_a_phone_and_labels_every_control(browser, api_server, redis_client):
    context, page = _open(browser, api_server.url, viewport={"width": 375, "height": 740},
                          is_mobile=True, has_touch=True)
    try:
        page.locator("#predict-fields input").first.wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select')]
            .filter(e => !e.labels.length && !e.getAttribute('aria-label'))
            .map(e => e.id || e.name)""")
        assert unlabelled == []
        # The file input is reachable from the keyboard (it is drawn by its label).
        page.get_by_role("button", name="Predict", exact=True).focus()
        for _ in range(20):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "file-input":
                break
        assert page.evaluate("document.activeElement.id") == "file-input"
        assert not page.script_errors
    finally:
        context.close()


def test_the_pages_files_ship_in_the_package(tmp_path):
    """A wheel built from the source holds every file of the page (the images and a plain
    `pip install` serve it from the installed package)."""
    root = Path(__file__).resolve().parent.parent
    source = tmp_path / "src"
    source.mkdir()
    for name in ["setup.cfg", "pyproject.toml", "README.md"]:
        shutil.copy(root / name, source / name)
    for package in ["api", "shared", "cli", "worker"]:
        shutil.copytree(root / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "-w",
                    str(tmp_path / "wheel"), str(source)], check=True, timeout=120)
    [wheel] = (tmp_path / "wheel").glob("tabserve-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    page_files = {p.relative_to(root).as_posix() for p in (root / "api/static/ui").iterdir()}
    assert {"api/static/ui/index.html", "api/static/ui/app.js"} <= page_files <= shipped


# ---- with API keys on -----------------------------------------------------------------------


def _loans(rows: int = 240) -> pd.DataFrame:
    """A small table with every kind of feature: number, integer, category, boolean."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({
        "income": rng.normal(50_000, 15_000, rows).round(2),
        "age": rng.integers(18, 80, rows),
        "region": rng.choice(["east", "north", "south"], rows),
        "member": rng.random(rows) < 0.4,
    })
    frame["approved"] = np.where((frame["income"] > 50_000) | frame["member"], "yes", "no")
    return frame


@pytest.fixture(scope="module")
def keyed(base_settings, artifacts_dir, tmp_path_factory):
    """A gunicorn with API keys on, whose jobs go to a queue no worker reads (they stay
    queued until the test runs one in process), serving the demo model and a `loans` model
    with categorical, boolean and integer features; its settings and a submit key."""
    keys_file = tmp_path_factory.mktemp("web-keys") / "keys.json"
    token = create_key(keys_file, "analyst", "submit")
    artifacts = tmp_path_factory.mktemp("web-artifacts") / "artifacts"
    copy_demo(artifacts_dir, artifacts)
    table = tmp_path_factory.mktemp("web-loans") / "loans.csv"
    _loans().to_csv(table, index=False)
    train_from_file(ModelStore(artifacts), table, "approved", name="loans")
    settings = base_settings.with_overrides(api_keys_file=keys_file, queue_name=IDLE_QUEUE,
                                            artifacts_dir=artifacts)
    server = ApiServer(tabserve_env(settings.as_env()), tmp_path_factory.mktemp("web-logs"),
                       workers=1)
    yield server, settings, token
    server.stop()


def test_with_keys_on_the_shell_is_public_and_the_api_needs_the_key(keyed):
    server, _, _ = keyed
    assert requests.get(server.url + "/", timeout=5).status_code == 200
    assert requests.get(server.url + "/static/ui/app.js", timeout=5).status_code == 200
    assert requests.get(server.url + "/models", timeout=5).status_code == 401
    # Only the page's own assets are public, in their normal form.
    for path in ["/static/ui/../ui/app.js", "/static/ui//app.js", "/static/ui/./app.js",
                 "/static/other.js"]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("GET", path)  # sent as written (requests would drop the dots)
        assert connection.getresponse().status == 401, path
        connection.close()


def test_with_keys_on_the_page_asks_for_a_key_then_cancels_and_downloads(
        browser, keyed, redis_client, customer_frame, tmp_path):
    server, settings, token = keyed
    context, page = _open(browser, server.url, viewport={"width": 1280, "height": 1000})
    try:
        _expect_text(page.locator("#page-error"), "valid API key.*enter one at the top")
        page.get_by_label("API key").fill(token)
        page.get_by_role("button", name="Use key").click()
        page.locator("#predict-fields input").first.wait_for()
        assert page.locator("#page-error").is_hidden()
        assert page.evaluate("sessionStorage.getItem('tabserve.apiKey')") == token

        path = _csv(tmp_path, customer_frame.head(50), "fifty.csv")
        page.set_input_files("#file-input", path)
        _expect_text(page.locator("#job-status"), "^queued$")
        first = page.locator("#job-id").inner_text()
        page.get_by_role("button", name=f"Cancel job {first}").click()
        _expect_text(page.locator(f'#jobs-body tr[data-job="{first}"] td[data-label=Status]'),
                     "^cancelled$")
        _expect_text(page.locator("#job-status"), "^cancelled$")

        page.set_input_files("#file-input", path)
        _expect_text(page.locator("#job-status"), "^queued$")
        second = page.locator("#job-id").inner_text()
        assert second != first
        run_job(Services(settings), second, "in-test")  # the job's one attempt, in process
        _expect_text(page.locator("#job-status"), "^succeeded$")
        with page.expect_download() as info:  # fetched with the key, saved from a blob
            page.get_by_role("link", name="Download result").click()
        assert info.value.url.startswith("blob:")
        assert info.value.suggested_filename == "fifty-predictions.csv"
        assert len(pd.read_csv(io.BytesIO(Path(info.value.path()).read_bytes()))) == 50

        # Another model: its form has a number, an integer, a category and a boolean field.
        page.get_by_label("Model", exact=True).select_option("loans")
        page.get_by_label("region", exact=True).wait_for()
        assert page.locator("#schema-body tr").count() == 4
        page.get_by_label("income", exact=True).fill("61000.5")
        page.get_by_label("age", exact=True).fill("42")
        page.get_by_label("region", exact=True).fill("south")
        page.get_by_label("member", exact=True).select_option("false")
        page.get_by_role("button", name="Predict", exact=True).click()
        row = {"income": 61000.5, "age": 42, "region": "south", "member": False}
        expected = requests.post(server.url + "/predict?model=loans", json={"features": row},
                                 headers={"Authorization": f"Bearer {token}"}, timeout=5)
        _expect_text(page.locator("#prediction-label"), f"^{expected.json()['prediction']}$")
        _expect_text(page.locator("#prediction-model"), r"loans v1")
        assert not page.script_errors, page.script_errors
    finally:
        context.close()
