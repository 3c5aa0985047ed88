"""api/fastpath.py: plain scoring requests are answered without Flask, as Flask answers them;
everything else goes on to the Flask app and keeps its answer, and what the fast path did
first (the gate, the body read) is not done twice. The same requests go to an app with the
fast path on and one with it off (TABSERVE_ONLINE_FAST_PATH=0); a counter between the fast
path and the Flask app says which of them answered. One test runs a real gunicorn."""

from __future__ import annotations

import io
import json
import math
import uuid

import orjson
import pytest
import requests
from prometheus_client import REGISTRY

from bench.protocols import V2_BINARY_HEADER, protocol_json_bodies, v2_binary_body
from shared.security.keystore import hash_key
from tests.inprocess import inprocess_app

JSON = {"Content-Type": "application/json"}
V2 = "/v2/models/breast-cancer/versions/1/infer"
IDS = ("prediction_id", "prediction_ids")


class Counting:
    """Between FastScoring and the Flask app: how many requests went on to Flask."""

    def __init__(self, app):
        self.app, self.calls = app, 0

    def __call__(self, environ, start_response):
        self.calls += 1
        return self.app(environ, start_response)


def _apps(settings):
    fast = inprocess_app(settings)
    spy = fast.wsgi_app.app = Counting(fast.wsgi_app.app)
    slow = inprocess_app(settings.with_overrides(online_fast_path=False))
    return fast.test_client(), slow.test_client(), spy


@pytest.fixture(scope="module")
def clients(base_settings, tmp_path_factory):
    return _apps(base_settings.with_overrides(
        data_dir=str(tmp_path_factory.mktemp("fastpath-data")), max_body_bytes=64 * 1024))


@pytest.fixture(scope="module")
def names(demo_rows):
    return list(demo_rows[0])


def _plain_cases(demo_rows, names):
    row = [demo_rows[0][n] for n in names]
    shapes = protocol_json_bodies(names, row)
    binary = {"Content-Type": "application/octet-stream",
              "Inference-Header-Content-Length": str(len(V2_BINARY_HEADER))}
    return {
        "predict one row": ("/predict", orjson.dumps({"features": demo_rows[0]}), JSON),
        "predict rows, pinned": ("/predict?model=breast-cancer%3A1",
                                 orjson.dumps({"instances": demo_rows[:5]}), JSON),
        "predict, +json with a charset": (
            "/predict", orjson.dumps({"features": demo_rows[1]}),
            {"Content-Type": "application/vnd.api+json; charset=utf-8"}),
        "invocations split": ("/invocations", json.dumps(shapes["mlflow"]).encode(), JSON),
        "invocations inputs, pinned": ("/invocations?model=breast-cancer:1",
                                       json.dumps(shapes["mlflow-inputs"]).encode(), JSON),
        "v2 json": (V2, json.dumps(shapes["v2-json"]).encode(), JSON),
        "v2 json, unversioned": ("/v2/models/breast-cancer/infer",
                                 json.dumps(shapes["v2-json"]).encode(), JSON),
        "v2 binary": (V2, v2_binary_body(row), binary),
    }


def _split(answer):
    """A JSON answer's body, or a V2 binary answer's JSON header and its tensor bytes."""
    if answer.content_type.startswith("application/json"):
        return answer.get_json(), b""
    head = int(answer.headers["Inference-Header-Content-Length"])
    return orjson.loads(answer.data[:head]), answer.data[head:]


def _same_answer(fast, slow, plain: bool):
    assert fast.status_code == slow.status_code, (fast.data, slow.data)
    assert fast.content_type == slow.content_type
    (a, rest_a), (b, rest_b) = _split(fast), _split(slow)
    if plain:  # each answer's own prediction id
        for body in (a, b):
            for holder in (body, body.get("parameters") or {}):
                for key in IDS:
                    holder.pop(key, None)
    assert a == b
    assert rest_a == rest_b
    skip = {"X-Request-ID", "X-Prediction-Id", "X-Served-By"}
    assert {k: v for k, v in fast.headers.items() if k not in skip} == \
        {k: v for k, v in slow.headers.items() if k not in skip}
    assert set(fast.headers.keys()) == set(slow.headers.keys())


def test_plain_requests_are_answered_without_flask_as_flask_answers_them(clients, demo_rows,
                                                                        names):
    fast, slow, spy = clients
    for label, (path, body, headers) in _plain_cases(demo_rows, names).items():
        before = spy.calls
        a = fast.post(path, data=body, headers=headers)
        assert spy.calls == before, f"{label}: went on to Flask"
        b = slow.post(path, data=body, headers=headers)
        assert a.status_code == 200, (label, a.data)
        _same_answer(a, b, plain=True)
        assert len(a.headers["X-Request-ID"]) == 32


def test_the_fast_answer_counts_and_keeps_the_clients_request_id(clients, demo_rows):
    fast, _, spy = clients
    sample = ("tabserve_http_requests_total",
              {"route": "/predict", "method": "POST", "status": "200"})
    before = REGISTRY.get_sample_value(*sample) or 0
    calls = spy.calls
    answer = fast.post("/predict", json={"features": demo_rows[0]},
                       headers={"X-Request-ID": "client-id.1"})
    assert spy.calls == calls
    assert answer.headers["X-Request-ID"] == "client-id.1"
    assert answer.headers["X-Model-Version"] == "breast-cancer:1"
    assert REGISTRY.get_sample_value(*sample) == before + 1
    # a request id the app would not echo (spaces) is replaced, as the hook replaces it
    answer = fast.post("/predict", json={"features": demo_rows[0]},
                       headers={"X-Request-ID": "not a sane id"})
    assert answer.headers["X-Request-ID"] != "not a sane id"


def _bad_cases(demo_rows):
    row = dict(demo_rows[0])
    unknown = {**row, "colour": 1.0}
    missing = dict(list(row.items())[1:])
    text = dict(row)
    text[next(iter(row))] = "high"
    nan = orjson.dumps({"features": row}).replace(
        str(row[next(iter(row))]).encode(), b"NaN", 1)
    return {
        "not JSON": ("/predict", b'{"features": ', JSON),
        "unknown feature": ("/predict", orjson.dumps({"features": unknown}), JSON),
        "missing feature": ("/predict", orjson.dumps({"features": missing}), JSON),
        "a string for a number": ("/predict", orjson.dumps({"features": text}), JSON),
        "NaN": ("/predict", nan, JSON),
        "a list body": ("/predict", b"[1, 2]", JSON),
        "too deep": ("/predict", b"[" * 200 + b"]" * 200, JSON),
        "text/plain": ("/predict", orjson.dumps({"features": row}),
                       {"Content-Type": "text/plain"}),
        "no content type": ("/predict", orjson.dumps({"features": row}), {}),
        "an unknown model": ("/predict?model=nope", orjson.dumps({"features": row}), JSON),
        "a bad model ref": ("/predict?model=a%2Fb", orjson.dumps({"features": row}), JSON),
        "over the body limit": ("/predict", b'{"features": {' + b" " * 70_000 + b"}}", JSON),
        "invocations, not its shape": ("/invocations", b'{"rows": []}', JSON),
        "invocations, bad params": ("/invocations",
                                    orjson.dumps({"inputs": [[1.0]], "params": 3}), JSON),
        "v2, an unknown model": ("/v2/models/nope/infer", b'{"inputs": []}', JSON),
        "v2, no inputs": (V2, b'{"outputs": []}', JSON),
        "v2, gzip": (V2, b'{"inputs": []}', {**JSON, "Content-Encoding": "gzip"}),
        "v2, a header longer than the body": (
            V2, b"{}", {"Content-Type": "application/octet-stream",
                        "Inference-Header-Content-Length": "99"}),
    }


def test_requests_that_are_not_plain_go_on_to_the_app_and_keep_their_answer(clients,
                                                                             demo_rows):
    fast, slow, spy = clients
    for label, (path, body, headers) in _bad_cases(demo_rows).items():
        before = spy.calls
        a = fast.post(path, data=body, headers=headers)
        b = slow.post(path, data=body, headers=headers)
        assert spy.calls == before + 1, f"{label}: answered by the fast path"
        assert 400 <= a.status_code < 500, (label, a.status_code, a.data)
        _same_answer(a, b, plain=False)
        assert a.get_json(), label
    # another query string: the app answers it (it ignores what it does not know)
    before = spy.calls
    path, body = "/predict?model=breast-cancer&x=1", orjson.dumps({"features": demo_rows[0]})
    a, b = (c.post(path, data=body, headers=JSON) for c in (fast, slow))
    assert spy.calls == before + 1 and a.status_code == 200
    _same_answer(a, b, plain=True)


def test_a_scoring_request_without_a_length_goes_on_to_the_app(clients, demo_rows):
    fast, slow, spy = clients
    body = orjson.dumps({"features": demo_rows[0]})
    before = spy.calls
    a, b = (c.post("/predict", input_stream=io.BytesIO(body), headers=JSON,
                   environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": "",
                                      "HTTP_TRANSFER_ENCODING": "chunked"})  # as gunicorn
            for c in (fast, slow))
    assert not a.request.environ.get("CONTENT_LENGTH")
    assert spy.calls == before + 1
    assert a.status_code == 200
    _same_answer(a, b, plain=True)


def test_a_body_shorter_than_its_length_is_refused_once_in_the_one_shape(clients, demo_rows):
    fast, slow, spy = clients
    body = orjson.dumps({"features": demo_rows[0]})
    answers = []
    for client in (fast, slow):
        environ = {"CONTENT_LENGTH": str(len(body) + 10)}
        answers.append(client.post("/predict", data=body, headers=JSON,
                                   environ_overrides=environ))
    assert answers[0].status_code == answers[1].status_code == 400
    assert answers[0].get_json() == answers[1].get_json()
    assert answers[0].get_json()["error"]["code"] == "bad_request"


def test_the_gate_decides_once_per_request(base_settings, redis_client, demo_rows,
                                           tmp_path_factory):
    scorer, reader = "tsk_" + uuid.uuid4().hex, "tsk_" + uuid.uuid4().hex
    settings = base_settings.with_overrides(
        data_dir=str(tmp_path_factory.mktemp("fastpath-gate")),
        api_keys=f"scorer-{uuid.uuid4().hex[:8]}:predict:{hash_key(scorer)},"
                 f"reader-{uuid.uuid4().hex[:8]}:read:{hash_key(reader)}",
        rate_limit_requests=3, rate_limit_window_seconds=3600)
    fast, slow, spy = _apps(settings)
    good = orjson.dumps({"features": demo_rows[0]})
    for headers in ({}, {"Authorization": "Bearer nope"},
                    {"Authorization": f"Bearer {reader}"}):
        a = fast.post("/predict", data=good, headers={**JSON, **headers})
        b = slow.post("/predict", data=good, headers={**JSON, **headers})
        assert a.status_code in (401, 403)
        _same_answer(a, b, plain=False)
    # three requests in the window: a plain one, one the app answers after the fast path
    # admitted it (a 400), a plain one; the fourth is over. Were the 400 admitted twice,
    # the third would be refused.
    auth = {**JSON, "Authorization": f"Bearer {scorer}"}
    calls = spy.calls
    assert fast.post("/predict", data=good, headers=auth).status_code == 200
    assert fast.post("/predict", data=b"{", headers=auth).status_code == 400
    assert fast.post("/predict", data=good, headers=auth).status_code == 200
    assert spy.calls == calls + 1
    over = fast.post("/predict", data=good, headers=auth)
    assert over.status_code == 429
    assert over.get_json()["error"]["code"] == "rate_limited"


def test_a_large_header_goes_on_to_the_app_for_its_431(clients, demo_rows):
    fast, slow, spy = clients
    headers = {**JSON, "X-Padding": "x" * 20_000}
    body = orjson.dumps({"features": demo_rows[0]})
    a, b = (c.post("/predict", data=body, headers=headers) for c in (fast, slow))
    assert a.status_code == 431
    _same_answer(a, b, plain=False)


def test_under_gunicorn_the_fast_answer_is_logged_counted_and_served(api_server, demo_rows):
    rid = f"fast-{uuid.uuid4().hex}"
    answer = requests.post(f"{api_server.url}/predict", json={"features": demo_rows[0]},
                           headers={"X-Request-ID": rid}, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["X-Request-ID"] == rid
    assert answer.headers["X-Served-By"].isdigit()
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.json()["prediction"] in (0, 1)
    assert not any(map(math.isnan, answer.json()["probabilities"].values()))
    line = next(json.loads(line) for line in api_server.log().splitlines()
                if rid in line and '"tabserve.access"' in line)
    assert line["path"] == "/predict" and line["status"] == 200
    assert line["model_version"] == "breast-cancer:1" and line["latency_ms"] > 0
    metrics = requests.get(f"{api_server.url}/metrics", timeout=10).text
    assert 'tabserve_http_requests_total{method="POST",route="/predict",status="200"}' in metrics


def test_a_failing_access_line_does_not_take_the_answer(clients, demo_rows, monkeypatch,
                                                        caplog):
    import api.fastpath

    def broken(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(api.fastpath, "log_request", broken)
    fast, _, _ = clients
    answer = fast.post("/predict", json={"features": demo_rows[0]})
    assert answer.status_code == 200 and answer.get_json()["prediction"] in (0, 1)
    assert "its metric or access line failed" in caplog.text
