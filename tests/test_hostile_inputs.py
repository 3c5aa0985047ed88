"""Hostile input gets a JSON 4xx that names the problem, and the server stays up: a real
gunicorn for what travels over HTTP (chunked bodies, nesting, odd digits), an in-process app
for what needs its own artifacts directory (a corrupt manifest, no models at all)."""

from __future__ import annotations

import shutil

import orjson
import pytest
import requests

from shared.models.store import ModelStore
from tests.artifacts import copy_demo
from tests.inprocess import inprocess_app

DEEP = b"[" * 100_000 + b"]" * 100_000
JSON = {"Content-Type": "application/json"}


def chunked(total: int, piece: int = 1 << 20):
    """A JSON-looking body of `total` bytes, sent without a Content-Length."""
    yield b'{"features": {"x": "'
    sent = 20
    while sent < total:
        n = min(piece, total - sent)
        yield b"a" * n
        sent += n


CASES = {
    "nested predict": ("post", "/predict", {"data": DEEP, "headers": JSON}, 400, "deeply"),
    "nested feedback": ("post", "/feedback", {"data": DEEP, "headers": JSON}, 400, "deeply"),
    "nested jobs": ("post", "/jobs", {"data": DEEP, "headers": JSON}, 400, "deeply"),
    "lone surrogate": ("post", "/predict", {"data": b'{"features": {"\\ud800": 1}}',
                                            "headers": JSON}, 400, "not valid Unicode"),
    "lone surrogate value": ("post", "/feedback",
                             {"data": b'[{"prediction_id": "\\udc00", "label": 1}]',
                              "headers": JSON}, 400, "not valid Unicode"),
    "superscript version": ("post", "/predict?model=breast-cancer:%C2%B2",
                            {"json": {"features": {}}}, 422, "invalid model version"),
    "superscript limit": ("get", "/jobs?limit=%C2%B2", {}, 422, "limit"),
    "a 10 KB header": ("get", "/models", {"headers": {"X-Padding": "a" * 10_240}}, 431,
                       "TABSERVE_MAX_HEADER_BYTES"),
    "chunked over the limit": ("post", "/predict",
                               {"data": chunked(10 * 1024 * 1024 + 4096), "headers": JSON},
                               413, "larger than the limit"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_hostile_input_is_a_json_4xx_and_the_server_lives(api_server, demo_rows, case):
    method, path, kwargs, status, words = case
    r = requests.request(method, api_server.url + path, timeout=60, **kwargs)
    assert r.status_code == status, r.text[:500]
    assert r.headers["Content-Type"] == "application/json"
    assert words in r.json()["error"]["message"]
    ok = requests.post(api_server.url + "/predict", json={"features": demo_rows[0]}, timeout=30)
    assert ok.status_code == 200, ok.text


def test_a_chunked_body_under_the_limit_is_read_whole(api_server, demo_rows):
    body = orjson.dumps({"features": demo_rows[0]})
    r = requests.post(api_server.url + "/predict", data=iter([body[:10], body[10:]]),
                      headers=JSON, timeout=30)
    assert r.status_code == 200, r.text


def test_a_header_of_100000_columns_is_refused_by_its_count(api_server, demo_data):
    names, X = demo_data
    header = ",".join(names + [f"extra{i}" for i in range(100_000 - len(names))])
    row = ",".join(str(v) for v in X[0].tolist()) + "," * (100_000 - len(names))
    r = requests.post(api_server.url + "/jobs", data=f"{header}\n{row}\n".encode(),
                      headers={"Content-Type": "text/csv"}, timeout=60)
    assert r.status_code == 422, r.text[:500]
    error = r.json()["error"]  # counted on the first piece: the rest is never read
    assert "columns" in error["message"] and "TABSERVE_MAX_INPUT_COLUMNS" in error["message"]
    assert len(error["details"]) == 1


@pytest.mark.parametrize("path", ["/jobs?limit=" + "9" * 5000, "/jobs?limit=%D9%A3",
                                  "/predict?model=breast-cancer:" + "9" * 5000])
def test_numbers_int_refuses_are_422_in_process(base_settings, path):
    # Beyond what gunicorn lets through (a request line over 4 KB), and digits of other
    # scripts that int() would take ("٣") or refuse.
    client = inprocess_app(base_settings).test_client()
    r = client.post(path, json={"features": {}}) if "predict" in path else client.get(path)
    assert r.status_code == 422, r.text
    assert r.json["error"]["code"] == "validation_error"


@pytest.fixture
def app_for(base_settings, tmp_path):
    """An in-process app over an artifacts directory the test builds."""
    def build(artifacts):
        settings = base_settings.with_overrides(artifacts_dir=artifacts, default_model=None,
                                                data_dir=str(tmp_path / "data"))
        return inprocess_app(settings).test_client()
    return build


def test_a_corrupt_manifest_hides_no_other_model(app_for, artifacts_dir, tmp_path):
    artifacts = copy_demo(artifacts_dir, tmp_path / "artifacts")
    ModelStore(artifacts).record_default("breast-cancer")
    shutil.copytree(artifacts / "breast-cancer", artifacts / "broken")
    (artifacts / "broken" / "1" / "manifest.json").write_text('{"name": "broken", "vers')
    client = app_for(artifacts)
    r = client.get("/models")
    assert r.status_code == 200, r.text
    assert [m["name"] for m in r.json["models"]] == ["breast-cancer"]
    [bad] = r.json["unreadable"]
    assert bad["name"] == "broken" and "unreadable manifest" in bad["error"]
    assert str(tmp_path) not in r.text
    r = client.post("/predict?model=broken", json={"features": {}})
    assert r.status_code == 503 and r.json["error"]["code"] == "model_load_failed"
    assert str(tmp_path) not in r.text
    assert client.get("/readyz").status_code == 200  # the default is breast-cancer


def test_errors_show_no_server_paths(app_for, artifacts_dir, tmp_path, demo_rows):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = app_for(empty).get("/readyz")
    assert r.status_code == 503
    assert "no models" in r.text and str(tmp_path) not in r.text
    artifacts = copy_demo(artifacts_dir, tmp_path / "artifacts")
    for f in (artifacts / "breast-cancer" / "1").glob("model.pkl*"):
        f.unlink()
    client = app_for(artifacts)
    for r in (client.get("/readyz"),
              client.post("/predict", json={"features": demo_rows[0]})):
        assert r.status_code == 503, r.text
        assert "No such file or directory" in r.text and str(tmp_path) not in r.text
