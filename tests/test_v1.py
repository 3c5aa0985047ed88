"""KServe's V1 protocol (GET /v1/models, GET /v1/models/<name>, POST /v1/models/<name>:predict):
payloads built as KServe's docs build them (rows as arrays in feature order, as the sklearn
iris example's `iris-input.json`; rows as objects for a DataFrame model), answered with the
predictions /predict gives for the same rows, in process and through a real gunicorn (curl
as the docs run it, and requests)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pandas as pd
import pytest
import requests
from prometheus_client import REGISTRY

from shared.config import Settings
from shared.models.manifest import read_manifest_data
from shared.models.store import ModelStore
from shared.security.keyfile import create_key
from tests.inprocess import inprocess_app

MODEL = "breast-cancer"
ROWS = 25
PREDICT = f"/v1/models/{MODEL}:predict"


_app = inprocess_app


@pytest.fixture(scope="module")
def settings(base_settings, tmp_path_factory) -> Settings:
    return base_settings.with_overrides(data_dir=str(tmp_path_factory.mktemp("v1-data")),
                                       max_online_rows=100)


@pytest.fixture(scope="module")
def client(settings):
    app = _app(settings)
    yield app.test_client()
    app.extensions["tabserve"].predictions.flush()
    app.extensions["tabserve"].drift.drain()


@pytest.fixture(scope="module")
def frame(demo_data) -> pd.DataFrame:
    names, X = demo_data
    return pd.DataFrame(X[:ROWS], columns=names)


@pytest.fixture(scope="module")
def expected(client, frame) -> dict:
    """What /predict answers for the same rows: labels and class probabilities."""
    r = client.post("/predict", json={"instances": frame.to_dict(orient="records")})
    assert r.status_code == 200
    body = r.get_json()
    return {"predict": body["predictions"],
            "predict_proba": [list(p.values()) for p in body["probabilities"]]}


def _error(r, status: int) -> str:
    assert r.status_code == status, r.get_data(as_text=True)
    body = r.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


# Each body as KServe's docs build it: the sklearn example's rows as arrays in feature order
# (`{"instances": [[6.8, 2.8, 4.8, 1.4], ...]}`), a DataFrame model's rows as records, and
# the same under "inputs", which KServe's V1 also takes.
SHAPES = {
    "instances_lists": lambda df: {"instances": df.values.tolist()},
    "instances_records": lambda df: {"instances": df.to_dict(orient="records")},
    "inputs_lists": lambda df: {"inputs": df.values.tolist()},
    "inputs_records": lambda df: {"inputs": json.loads(df.to_json(orient="records"))},
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_answers_the_predictions_of_predict(client, frame, expected, shape):
    r = client.post(PREDICT, json=SHAPES[shape](frame))
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json() == {"predictions": expected["predict"]}
    assert len(r.headers["X-Prediction-Id"]) == 32
    assert r.headers["X-Model-Version"] == f"{MODEL}:1"


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", None])
def test_a_body_sent_as_curl_d_or_untyped_is_read_as_json(client, frame, expected,
                                                          content_type):
    # `curl -d @iris-input.json` (KServe's docs) sends curl's default form type.
    body = json.dumps({"instances": frame.values.tolist()}).encode()
    r = client.post(PREDICT, data=body, content_type=content_type)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json() == {"predictions": expected["predict"]}


@pytest.mark.parametrize("name", [MODEL, f"{MODEL}:1", f"{MODEL}@live"])
def test_names_resolve_as_everywhere_else(client, frame, expected, name):
    r = client.post(f"/v1/models/{name}:predict", json={"instances": frame.values.tolist()})
    assert r.get_json() == {"predictions": expected["predict"]}
    ready = client.get(f"/v1/models/{name}")
    assert ready.status_code == 200
    assert ready.get_json() == {"name": name, "ready": True, "version": "1"}


def test_list_models(client):
    r = client.get("/v1/models")
    assert r.status_code == 200 and r.get_json() == {"models": [MODEL]}


def test_a_model_answers_probabilities_when_its_manifest_says_so(settings, tmp_path, frame,
                                                                 expected):
    # As /invocations: the manifest's pyfunc_predict_fn (KServe's sklearn server reads the
    # PREDICT_PROBA environment variable for the same choice).
    version_dir = ModelStore(settings.artifacts_dir).version_dir(MODEL, 1)
    copy = tmp_path / "artifacts" / "proba" / "1"
    shutil.copytree(version_dir, copy)
    data = read_manifest_data(copy)
    data.update(name="proba", pyfunc_predict_fn="predict_proba")
    (copy / "manifest.json").write_text(json.dumps(data))
    app = _app(settings.with_overrides(artifacts_dir=tmp_path / "artifacts",
                                       default_model="proba"))
    r = app.test_client().post("/v1/models/proba:predict",
                               json={"instances": frame.values.tolist()})
    app.extensions["tabserve"].predictions.flush()
    assert r.status_code == 200
    assert r.get_json() == {"predictions": expected["predict_proba"]}


ERRORS = [
    ("not json", b"{nope", "application/json", 400, "not valid JSON"),
    ("a list", b"[[1, 2]]", "application/json", 400, '"instances" or "inputs"'),
    ("no input key", b'{"data": [[1, 2]]}', "application/json", 400, "got the fields"),
    ("both keys", b'{"instances": [], "inputs": []}', "application/json", 400,
     "got the fields"),
    ("an extra key", b'{"instances": [[1]], "signature": "x"}', "application/json", 400,
     "got the fields"),
    ("instances not an array", b'{"instances": {"a": [1]}}', "application/json", 400,
     "must be an array of rows"),
    ("a row too short", b'{"instances": [[1.0, 2.0]]}', "application/json", 400,
     "row 0 must be an array of 30 values"),
    ("no rows", b'{"instances": []}', "application/json", 422, "no rows"),
    ("another content type", b"a,b\n1,2\n", "text/csv", 415, "Content-Type"),
]


@pytest.mark.parametrize(("case", "body", "content_type", "status", "message"), ERRORS,
                         ids=[e[0] for e in ERRORS])
def test_errors_answer_in_kserves_shape(client, case, body, content_type, status, message):
    r = client.post(PREDICT, data=body, content_type=content_type)
    assert message in _error(r, status)


def test_validation_is_predicts(client, frame, demo_data):
    names, _ = demo_data
    before = REGISTRY.get_sample_value("tabserve_validation_errors_total",
                                       {"code": "validation_error", "path": "online"}) or 0
    rows = frame.head(2).values.tolist()
    rows[1][3] = "oops"
    assert f"row 1, feature {names[3]!r}: must be a number" in _error(
        client.post(PREDICT, json={"instances": rows}), 422)
    missing = frame.head(1).drop(columns=names[0]).to_dict(orient="records")
    assert f"feature {names[0]!r}: missing feature" in _error(
        client.post(PREDICT, json={"instances": missing}), 422)
    assert REGISTRY.get_sample_value("tabserve_validation_errors_total", {
        "code": "validation_error", "path": "online"}) == before + 2
    many = pd.concat([frame] * 5).values.tolist()  # 125 rows, over the limit of 100
    assert "at most 100" in _error(client.post(PREDICT, json={"instances": many}), 413)


def test_unknown_models_versions_and_verbs_are_404(client, frame):
    body = {"instances": frame.head(1).values.tolist()}
    assert "nope" in _error(client.post("/v1/models/nope:predict", json=body), 404)
    assert "no version 9" in _error(client.post(f"/v1/models/{MODEL}:9:predict", json=body),
                                    404)
    assert "no alias" in _error(client.get(f"/v1/models/{MODEL}@champion"), 404)
    assert "not served" in _error(client.post(f"/v1/models/{MODEL}:explain", json=body), 404)
    _error(client.get(f"/v1/models/{MODEL}:x"), 422)  # not a version


def test_the_online_metrics_count_v1_rows(client, frame):
    labels = {"model": MODEL, "version": "1", "path": "online"}
    before = REGISTRY.get_sample_value("tabserve_rows_predicted_total", labels) or 0
    assert client.post(PREDICT, json={"instances": frame.head(7).values.tolist()}) \
        .status_code == 200
    assert REGISTRY.get_sample_value("tabserve_rows_predicted_total", labels) == before + 7
    route = {"route": "/v1/models/<name>:predict", "method": "POST", "status": "200"}
    assert (REGISTRY.get_sample_value("tabserve_http_requests_total", route) or 0) >= 1


def test_predict_needs_a_predict_key(settings, tmp_path, frame):
    keys = tmp_path / "keys.json"
    token = create_key(keys, "pred", "predict")
    reader = create_key(keys, "reader", "read")
    app = _app(settings.with_overrides(api_keys_file=keys, rate_limit_requests=0))
    client = app.test_client()
    body = {"instances": frame.head(2).values.tolist()}
    assert "valid API key" in _error(client.post(PREDICT, json=body), 401)
    assert "role read" in _error(client.post(PREDICT, json=body,
                                             headers={"Authorization": f"Bearer {reader}"}), 403)
    for path in (f"/v1/models/{MODEL}", "/v1/models"):
        assert client.get(path, headers={"Authorization": f"Bearer {reader}"}).status_code == 200
    r = client.post(PREDICT, json=body, headers={"Authorization": f"Bearer {token}"})
    app.extensions["tabserve"].predictions.flush()
    assert r.status_code == 200


def test_gunicorn_answers_v1_as_kserves_docs_call_it(api_server, frame, tmp_path):
    url = api_server.url
    predicted = requests.post(url + "/predict", timeout=10,
                              json={"instances": frame.to_dict(orient="records")}).json()
    # KServe's sklearn example: the rows written to iris-input.json and sent with curl -d.
    payload = tmp_path / "input.json"
    payload.write_text(json.dumps({"instances": frame.values.tolist()}))
    run = subprocess.run(["curl", "-s", "-f", f"{url}{PREDICT}", "-d", f"@{payload}"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"predictions": predicted["predictions"]}
    records = requests.post(url + PREDICT, timeout=10,
                            json={"instances": frame.to_dict(orient="records")})
    assert records.json() == {"predictions": predicted["predictions"]}
    ready = requests.get(f"{url}/v1/models/{MODEL}", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    bad = requests.post(url + PREDICT, timeout=10, json={"instances": [[1.0]]})
    assert bad.status_code == 400 and set(bad.json()) == {"error"}
