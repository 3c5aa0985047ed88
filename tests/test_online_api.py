"""The online path end to end: a real gunicorn serving the demo model over HTTP."""

from __future__ import annotations

import pickle

import numpy as np
import orjson
import pytest
import requests

from shared.models.store import ModelStore
from tests.servers import ApiServer, tabserve_env


def post(api_server, body, *, params=None, headers=None, raw: bytes | None = None):
    headers = {"Content-Type": "application/json", **(headers or {})}
    data = raw if raw is not None else orjson.dumps(body)
    return requests.post(api_server.url + "/predict", data=data, params=params,
                         headers=headers, timeout=30)


def test_single_row_returns_class_and_probabilities(api_server, demo_rows):
    r = post(api_server, {"features": demo_rows[0]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prediction"] in (0, 1)
    assert set(body["probabilities"]) == {"0", "1"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert body["model"] == {"name": "breast-cancer", "version": 1}


def test_predictions_over_http_equal_the_unpickled_model(api_server, artifacts_dir, demo_data):
    names, X = demo_data
    store = ModelStore(artifacts_dir)
    manifest = store.manifest("breast-cancer", 1)
    model = pickle.loads((store.version_dir("breast-cancer", 1) / manifest.model_file).read_bytes())
    rows = X[:500]
    expected_labels = model.predict(rows).tolist()
    expected_proba = model.predict_proba(rows).tolist()

    got_labels, got_proba = [], []
    for start in range(0, 500, 100):
        batch = [dict(zip(names, r.tolist(), strict=True)) for r in rows[start:start + 100]]
        r = post(api_server, {"instances": batch})
        assert r.status_code == 200, r.text
        got_labels += r.json()["predictions"]
        got_proba += [[p["0"], p["1"]] for p in r.json()["probabilities"]]
    assert got_labels == expected_labels
    assert got_proba == expected_proba  # exact: floats survive JSON round trips
    for i in (0, 7, 499):  # the single-row form gives the same answer
        r = post(api_server, {"features": dict(zip(names, rows[i].tolist(), strict=True))})
        assert r.json()["prediction"] == expected_labels[i]
        assert list(r.json()["probabilities"].values()) == expected_proba[i]


def test_request_id_is_echoed_or_generated(api_server, demo_rows):
    r = post(api_server, {"features": demo_rows[0]}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    r = post(api_server, {"features": demo_rows[0]})
    assert len(r.headers["X-Request-ID"]) == 32


def _row(demo_rows, **changes):
    row = dict(demo_rows[0])
    for key, value in changes.items():
        key = key.replace("_", " ")
        if value is ...:
            row.pop(key)
        else:
            row[key] = value
    return row


BAD_INPUTS = [
    # (id, kwargs for post(), status, code, text the message must contain)
    ("invalid json", dict(raw=b'{"features": {'), 400, "invalid_json", "not valid JSON"),
    ("empty body", dict(raw=b""), 400, "invalid_json", "not valid JSON"),
    ("array body", dict(raw=b"[1, 2]"), 400, "invalid_json", "must be a JSON object"),
    ("string body", dict(raw=b'"hi"'), 400, "invalid_json", "must be a JSON object"),
    ("wrong content type", dict(raw=b"{}", headers={"Content-Type": "text/plain"}), 415,
     "unsupported_media_type", "text/plain"),
    ("form content type", dict(raw=b"a=1", headers={
        "Content-Type": "application/x-www-form-urlencoded"}), 415, "unsupported_media_type",
     "application/json"),
    ("no features key", dict(body={"rows": []}), 422, "validation_error", "exactly one of"),
    ("both keys", dict(body={"features": {}, "instances": []}), 422, "validation_error",
     "exactly one of"),
    ("features not object", dict(body={"features": [1, 2]}), 422, "validation_error",
     "must be an object"),
    ("instances not array", dict(body={"instances": {}}), 422, "validation_error",
     "must be an array"),
    ("instances empty", dict(body={"instances": []}), 422, "validation_error", "empty"),
    ("missing feature", "missing", 422, "validation_error", "'mean radius': missing feature"),
    ("unknown feature", "unknown", 422, "validation_error", "'colour': unknown feature"),
    ("string for number", "string", 422, "validation_error", "must be a number, got string"),
    ("bool for number", "bool", 422, "validation_error", "must be a number, got boolean"),
    ("null not allowed", "null", 422, "validation_error", "must not be null"),
    ("NaN literal", "nan", 422, "validation_error", "finite number"),
    ("Infinity literal", "inf", 422, "validation_error", "finite number"),
    ("huge integer", "huge", 422, "validation_error", "beyond any floating-point number"),
    ("row error names row", "row", 422, "validation_error", "row 1, feature 'mean area'"),
    ("body too large", dict(raw=b" " * (11 * 1024 * 1024)), 413, "request_entity_too_large",
     ""),
    ("unknown model", "unknown_model", 404, "model_not_found", "unknown model 'nope'"),
    ("unknown version", "unknown_version", 404, "model_not_found", "has no version 99"),
    ("bad model ref", "bad_ref", 422, "validation_error", "invalid model version"),
]


def _case(spec, demo_rows):
    if isinstance(spec, dict):
        return spec
    row = demo_rows[0]
    return {
        "missing": dict(body={"features": _row(demo_rows, mean_radius=...)}),
        "unknown": dict(body={"features": {**row, "colour": "red"}}),
        "string": dict(body={"features": _row(demo_rows, mean_radius="12.5")}),
        "bool": dict(body={"features": _row(demo_rows, mean_radius=True)}),
        "null": dict(body={"features": _row(demo_rows, mean_radius=None)}),
        "nan": dict(raw=orjson.dumps({"features": row}).replace(
            b'"mean radius":17.99', b'"mean radius":NaN')),
        "inf": dict(raw=orjson.dumps({"features": row}).replace(
            b'"mean radius":17.99', b'"mean radius":-Infinity')),
        "huge": dict(raw=orjson.dumps({"features": row}).replace(
            b'"mean radius":17.99', b'"mean radius":1' + b"0" * 400)),
        "row": dict(body={"instances": [row, _row(demo_rows, mean_area="big")]}),
        "unknown_model": dict(body={"features": row}, params={"model": "nope"}),
        "unknown_version": dict(body={"features": row}, params={"model": "breast-cancer:99"}),
        "bad_ref": dict(body={"features": row}, params={"model": "breast-cancer:latest"}),
    }[spec]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_clear_json_error(api_server, demo_rows, case):
    _, spec, status, code, text = case
    kwargs = dict(_case(spec, demo_rows))
    r = post(api_server, kwargs.pop("body", None), **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == code
    assert text in error["message"]
    assert "Traceback" not in r.text
    # the server still answers a good request afterwards
    ok = post(api_server, {"features": demo_rows[0]})
    assert ok.status_code == 200


def test_validation_error_details_name_every_field(api_server, demo_rows):
    rows = [_row(demo_rows, mean_radius="x"), demo_rows[1], _row(demo_rows, mean_area=None)]
    r = post(api_server, {"instances": rows})
    assert r.status_code == 422
    details = r.json()["error"]["details"]
    assert {"row": 0, "field": "mean radius", "message": "must be a number, got string 'x'"} \
        in details
    assert {"row": 2, "field": "mean area", "message": "must not be null"} in details
    assert len(details) == 2


@pytest.mark.parametrize("method,path,status,code", [
    ("GET", "/no/such/route", 404, "not_found"),
    ("GET", "/predict", 405, "method_not_allowed"),
    ("DELETE", "/models", 405, "method_not_allowed"),
    ("GET", "/models/nope", 404, "model_not_found"),
])
def test_routing_errors_are_json(api_server, method, path, status, code):
    r = requests.request(method, api_server.url + path, timeout=10)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


def test_models_lists_manifests(api_server):
    r = requests.get(api_server.url + "/models", timeout=10)
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    latest = models["breast-cancer"]["latest"]
    assert latest["task"] == "classification"
    assert latest["classes"] == [0, 1]
    assert len(latest["features"]) == 30
    assert latest["metrics"]["accuracy"] > 0.9
    r = requests.get(api_server.url + "/models/breast-cancer", timeout=10)
    assert r.json()["versions"][0]["sha256"] == latest["sha256"]


def test_health_and_readiness(api_server):
    assert requests.get(api_server.url + "/healthz", timeout=10).json() == {"status": "ok"}
    r = requests.get(api_server.url + "/readyz", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True
    assert body["checks"]["model"] == {"status": "ok", "model": "breast-cancer:1"}
    assert body["checks"]["redis"]["status"] == "ok"


def test_many_rows_return_in_input_order(api_server, demo_rows):
    rows = (demo_rows * 2)[:1000]  # 569 distinct rows, repeated
    r = post(api_server, {"instances": rows})
    assert r.status_code == 200
    single = [post(api_server, {"features": rows[i]}).json()["prediction"] for i in (0, 500, 999)]
    got = r.json()["predictions"]
    assert [got[0], got[500], got[999]] == single
    assert np.isclose([sum(p.values()) for p in r.json()["probabilities"]], 1.0).all()


def test_access_log_can_be_turned_off(base_settings, demo_rows, tmp_path):
    env = tabserve_env(base_settings.with_overrides(access_log=False).as_env())
    api = ApiServer(env, tmp_path, workers=1)
    try:
        r = post(api, {"features": demo_rows[0]}, headers={"X-Request-ID": "quiet-1"})
        assert r.status_code == 200 and r.headers["X-Request-ID"] == "quiet-1"
        metrics = requests.get(api.url + "/metrics", timeout=10).text
        assert 'tabserve_http_requests_total{method="POST",route="/predict",status="200"} 1.0' \
            in metrics
    finally:
        api.stop()
    log = api.log_path.read_text()
    assert "quiet-1" not in log and '"path":"/predict"' not in log


def test_one_json_log_line_per_request(api_server, demo_rows):
    post(api_server, {"features": demo_rows[0]}, headers={"X-Request-ID": "log-check-1"})
    post(api_server, {"features": {}}, headers={"X-Request-ID": "log-check-2"})
    lines = [orjson.loads(line) for line in api_server.log().splitlines()
             if line.startswith("{") and '"log-check-' in line]
    assert len(lines) == 2
    ok, bad = sorted(lines, key=lambda e: e["request_id"])
    assert ok["method"] == "POST" and ok["path"] == "/predict" and ok["status"] == 200
    assert ok["model_version"] == "breast-cancer:1" and ok["latency_ms"] > 0
    assert bad["status"] == 422 and bad["level"] == "info" and "time" in bad
    assert "17.99" not in api_server.log()  # feature values are never logged
