"""The online path in process: `create_app(settings).test_client()` against the real Redis
fixture. Fast, exact checks of bodies, headers, records and metrics; the same paths through
a real gunicorn are in test_online_api.py."""

from __future__ import annotations

import logging
import pickle

import orjson
import pytest
from prometheus_client import REGISTRY

from shared.config import Settings
from shared.models.store import ModelStore
from shared.monitoring.predictions import lookup_online_prediction
from tests.inprocess import inprocess_app
from tests.servers import wait_until


def _settings(artifacts_dir, redis_server, tmp_path_factory, **changes) -> Settings:
    return Settings(
        artifacts_dir=artifacts_dir,
        data_dir=str(tmp_path_factory.mktemp("app-data")),
        redis_url=redis_server.url,
        log_level="INFO",
        default_model="breast-cancer",
        worker_metrics_port=0,
        drift_interval_seconds=0,
    ).with_overrides(**changes)


@pytest.fixture(scope="module")
def app(artifacts_dir, redis_server, tmp_path_factory):
    app = inprocess_app(_settings(artifacts_dir, redis_server, tmp_path_factory))
    yield app
    # Write out what the background threads hold while the session's Redis is still up.
    runtime = app.extensions["tabserve"]
    runtime.predictions.flush()
    runtime.drift.drain()


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def model(artifacts_dir):
    store = ModelStore(artifacts_dir)
    manifest = store.manifest("breast-cancer", 1)
    return pickle.loads((store.version_dir("breast-cancer", 1) / manifest.model_file).read_bytes())


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_one_row(app, client, model, demo_data, demo_rows):
    r = client.post("/predict", json={"features": demo_rows[0]})
    assert r.status_code == 200 and r.mimetype == "application/json"
    body = r.get_json()
    assert set(body) == {"prediction", "probabilities", "prediction_id", "model"}
    assert body["prediction"] == model.predict(demo_data[1][:1]).tolist()[0]
    assert list(body["probabilities"].values()) == model.predict_proba(demo_data[1][:1]).tolist()[0]
    assert list(body["probabilities"]) == ["0", "1"]
    assert len(body["prediction_id"]) == 32
    assert body["model"] == {"name": "breast-cancer", "version": 1}
    # kept in the prediction log (written off the request path) for feedback
    runtime = app.extensions["tabserve"]
    wait_until(lambda: lookup_online_prediction(runtime.redis, body["prediction_id"]), 10,
               "the prediction in the log")
    stored = orjson.loads(lookup_online_prediction(runtime.redis, body["prediction_id"]))
    assert stored == {"m": "breast-cancer", "v": 1, "t": "classification",
                      "p": [body["prediction"]]}


def test_many_rows_in_input_order(client, model, demo_data, demo_rows):
    r = client.post("/predict", json={"instances": demo_rows[:50]})
    assert r.status_code == 200
    body = r.get_json()
    assert body["predictions"] == model.predict(demo_data[1][:50]).tolist()
    assert [[p["0"], p["1"]] for p in body["probabilities"]] == \
        model.predict_proba(demo_data[1][:50]).tolist()
    base = body["prediction_ids"][0].split(".")[0]
    assert body["prediction_ids"] == [f"{base}.{i}" for i in range(50)]


def _error(code: str, message: str, details: list | None = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details or []}}


def _without(row: dict, name: str) -> dict:
    return {k: v for k, v in row.items() if k != name}


def _raw(row: dict, value: bytes) -> bytes:
    body = orjson.dumps({"features": row})
    return body.replace(b'"mean radius":17.99', b'"mean radius":' + value)


INVALID = [
    # (id, request: json body, raw JSON bytes, or (bytes, content type), status, error body)
    ("missing feature", lambda row: {"features": _without(row, "mean radius")}, 422, _error(
        "validation_error", "invalid input: feature 'mean radius': missing feature",
        [{"field": "mean radius", "message": "missing feature"}])),
    ("unknown feature", lambda row: {"features": {**row, "colour": "red"}}, 422, _error(
        "validation_error", "invalid input: feature 'colour': unknown feature",
        [{"field": "colour", "message": "unknown feature"}])),
    ("wrong type", lambda row: {"features": {**row, "mean radius": "12.5"}}, 422, _error(
        "validation_error", "invalid input: feature 'mean radius': must be a number, got "
        "string '12.5'",
        [{"field": "mean radius", "message": "must be a number, got string '12.5'"}])),
    ("NaN", lambda row: _raw(row, b"NaN"), 422, _error(
        "validation_error", "invalid input: feature 'mean radius': must be a finite number, "
        "got nan", [{"field": "mean radius", "message": "must be a finite number, got nan"}])),
    ("rows named", lambda row: {"instances": [row, {**row, "mean area": None},
                                              {**row, "mean radius": True}]}, 422, _error(
        "validation_error", "invalid input: row 1, feature 'mean area': must not be null "
        "(and 1 more)", [{"row": 1, "field": "mean area", "message": "must not be null"},
                         {"row": 2, "field": "mean radius",
                          "message": "must be a number, got boolean true"}])),
    ("two keys", lambda row: {"features": row, "instances": [row]}, 422, _error(
        "validation_error",
        'body must have exactly one of "features" (an object) or "instances" (an array)')),
    ("wrong content type", lambda row: (b"{}", "text/plain"), 415, _error(
        "unsupported_media_type", "Content-Type must be application/json, got text/plain")),
    ("no content type", lambda row: (b"{}", None), 415, _error(
        "unsupported_media_type", "Content-Type must be application/json, got none")),
    ("not an object", lambda row: b"[1, 2]", 400, _error(
        "invalid_json",
        'request body must be a JSON object: {"features": {...}} or {"instances": [...]}')),
    # More rows than TABSERVE_MAX_ONLINE_ROWS run as a job: tests/test_job_idempotency.py.
]


def _send(client, spec):
    if isinstance(spec, dict):
        return client.post("/predict", json=spec)
    raw, content_type = spec if isinstance(spec, tuple) else (spec, "application/json")
    return client.post("/predict", data=raw, content_type=content_type)


@pytest.mark.parametrize("case", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_request_gets_the_one_error_shape(client, demo_rows, case):
    _, make, status, expected = case
    before = counter("tabserve_validation_errors_total", code=expected["error"]["code"],
                     path="online")
    r = _send(client, make(demo_rows[0]))
    assert (r.status_code, r.mimetype) == (status, "application/json")
    assert r.get_json() == expected
    after = counter("tabserve_validation_errors_total", code=expected["error"]["code"],
                    path="online")
    assert after == before + 1


def test_malformed_json_names_the_parse_error(client):
    r = client.post("/predict", data=b'{"features": {', content_type="application/json")
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert error["code"] == "invalid_json" and error["details"] == []
    assert error["message"].startswith("request body is not valid JSON: ")


def test_unknown_model_is_a_404(client, demo_rows):
    r = client.post("/predict?model=nope", json={"features": demo_rows[0]})
    assert r.status_code == 404
    assert r.get_json() == _error("model_not_found", "unknown model 'nope'")


@pytest.mark.parametrize("method,path,status,code,allow", [
    ("GET", "/no/such/route", 404, "not_found", None),
    ("GET", "/predict", 405, "method_not_allowed", {"OPTIONS", "POST"}),
    ("DELETE", "/models", 405, "method_not_allowed", {"GET", "HEAD", "OPTIONS"}),
])
def test_routing_errors_are_json(client, method, path, status, code, allow):
    r = client.open(path, method=method)
    assert (r.status_code, r.mimetype) == (status, "application/json")
    error = r.get_json()["error"]
    assert error["code"] == code and error["message"] and error["details"] == []
    allowed = r.headers.get("Allow")
    assert (set(allowed.split(", ")) if allowed else None) == allow


def test_models(client, artifacts_dir):
    # Each manifest links its feature schema in the OpenAPI document (tests/test_openapi.py).
    link = "/openapi.json#/components/schemas/Features.breast-cancer.1"
    manifest = {**ModelStore(artifacts_dir).manifest("breast-cancer", 1).public(), "schema": link}
    r = client.get("/models")
    assert r.status_code == 200
    assert r.get_json() == {"models": [{"name": "breast-cancer", "versions": [1],
                                        "latest": manifest, "aliases": {"live": 1},
                                        "live": 1}], "unreadable": []}
    r = client.get("/models/breast-cancer")
    body = r.get_json()
    assert [h["version"] for h in body.pop("history")] == [1]  # the first save made it live
    assert body == {"name": "breast-cancer", "versions": [manifest], "latest": 1,
                    "aliases": {"live": 1}, "live": 1, "schema": link}
    r = client.get("/models/nope")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "model_not_found"


def test_health_and_readiness(client):
    r = client.get("/healthz")
    assert (r.status_code, r.get_json()) == (200, {"status": "ok"})
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.get_json() == {"ready": True, "checks": {
        "model": {"status": "ok", "model": "breast-cancer:1"}, "redis": {"status": "ok"}}}


def test_not_ready_without_the_default_model(artifacts_dir, redis_server, tmp_path_factory):
    settings = _settings(artifacts_dir, redis_server, tmp_path_factory, default_model="nope",
                         preload_model=False)
    r = inprocess_app(settings).test_client().get("/readyz")
    assert r.status_code == 503
    body = r.get_json()
    assert body["ready"] is False and body["checks"]["redis"] == {"status": "ok"}
    assert body["checks"]["model"]["status"] == "unavailable"


def test_request_id_is_echoed_counted_and_recorded(client, demo_rows, caplog):
    labels = {"route": "/predict", "method": "POST", "status": "200"}
    before = counter("tabserve_http_requests_total", **labels)
    with caplog.at_level(logging.INFO, logger="tabserve.access"):
        r = client.post("/predict", json={"features": demo_rows[0]},
                        headers={"X-Request-ID": "in-process-1"})
    assert r.headers["X-Request-ID"] == "in-process-1"
    assert counter("tabserve_http_requests_total", **labels) == before + 1
    [record] = [rec for rec in caplog.records if rec.name == "tabserve.access"]
    assert (record.request_id, record.method, record.path, record.status) == \
        ("in-process-1", "POST", "/predict", 200)
    assert record.model_version == "breast-cancer:1"


@pytest.mark.parametrize("given", [None, "not valid: spaces", "x" * 129])
def test_request_id_is_generated_when_absent_or_invalid(client, given):
    headers = {"X-Request-ID": given} if given else {}
    r = client.get("/healthz", headers=headers)
    generated = r.headers["X-Request-ID"]
    assert generated != given and len(generated) == 32 and int(generated, 16) >= 0
