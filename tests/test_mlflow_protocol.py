"""MLflow's scoring protocol (POST /invocations, GET /ping, /health, /version) and SageMaker's
container contract (`tabserve serve`). Every input shape MLflow's scoring server takes, its
payload built the way MLflow's documentation builds it with pandas, answers the predictions
/predict gives for the same rows: in process, through a real gunicorn, and through
`tabserve serve`."""

from __future__ import annotations

import json
import shutil
import sys

import pandas as pd
import pytest
import requests

from shared.config import Settings
from shared.models.manifest import read_manifest_data
from shared.models.store import ModelStore
from shared.security.keyfile import create_key
from tests.inprocess import inprocess_app
from tests.servers import Process, free_port, tabserve_env, wait_until

ROWS = 25
JSON = "application/json"


@pytest.fixture(scope="module")
def settings(base_settings, tmp_path_factory) -> Settings:
    return base_settings.with_overrides(data_dir=str(tmp_path_factory.mktemp("mlflow-data")),
                                       max_online_rows=100)


@pytest.fixture(scope="module")
def client(settings):
    app = inprocess_app(settings)
    yield app.test_client()
    app.extensions["tabserve"].predictions.flush()
    app.extensions["tabserve"].drift.drain()


@pytest.fixture(scope="module")
def frame(demo_data) -> pd.DataFrame:
    names, X = demo_data
    return pd.DataFrame(X[:ROWS], columns=names)


@pytest.fixture(scope="module")
def expected(client, frame) -> dict:
    """What /predict answers for the same rows: labels and, per row, class probabilities."""
    r = client.post("/predict", json={"instances": frame.to_dict(orient="records")})
    assert r.status_code == 200
    body = r.get_json()
    return {"predict": body["predictions"],
            "predict_proba": [list(p.values()) for p in body["probabilities"]]}


def _wrap(key: str, text: str) -> bytes:
    return f'{{"{key}": {text}}}'.encode()


# Each MLflow input shape, built as MLflow's documentation builds it: (body, content type).
SHAPES = {
    "dataframe_split": lambda df: (_wrap("dataframe_split", df.to_json(orient="split")), JSON),
    "dataframe_split_no_index": lambda df: (
        _wrap("dataframe_split", df.to_json(orient="split", index=False)), JSON),
    "dataframe_split_to_dict": lambda df: (
        json.dumps({"dataframe_split": df.to_dict(orient="split")}).encode(), JSON),
    "dataframe_records": lambda df: (_wrap("dataframe_records", df.to_json(orient="records")),
                                     JSON),
    "instances_records": lambda df: (
        json.dumps({"instances": df.to_dict(orient="records")}).encode(), JSON),
    "instances_lists": lambda df: (json.dumps({"instances": df.values.tolist()}).encode(), JSON),
    "inputs_records": lambda df: (
        json.dumps({"inputs": df.to_dict(orient="records")}).encode(), JSON),
    "inputs_columns": lambda df: (json.dumps({"inputs": df.to_dict(orient="list")}).encode(),
                                  JSON),
    "csv": lambda df: (df.to_csv(index=False).encode(), "text/csv"),
    "csv_charset": lambda df: (df.to_csv(index=False).encode(), "text/csv; charset=utf-8"),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_answers_the_predictions_of_predict(client, frame, expected, shape):
    body, content_type = SHAPES[shape](frame)
    r = client.post("/invocations", data=body, content_type=content_type)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.mimetype == JSON
    assert r.get_json() == {"predictions": expected["predict"]}
    assert len(r.headers["X-Prediction-Id"]) == 32


def test_split_columns_in_another_order(client, frame, expected):
    shuffled = frame[frame.columns[::-1]]
    r = client.post("/invocations", data=SHAPES["dataframe_split"](shuffled)[0],
                    content_type=JSON)
    assert r.get_json() == {"predictions": expected["predict"]}


def test_one_row_as_an_object_of_values(client, frame, expected):
    r = client.post("/invocations", json={"inputs": frame.iloc[0].to_dict()})
    assert r.get_json() == {"predictions": expected["predict"][:1]}


@pytest.mark.parametrize("shape", ["dataframe_split", "inputs_columns"])
def test_params_predict_method_answers_probabilities(client, frame, expected, shape):
    payload = json.loads(SHAPES[shape](frame)[0])
    payload["params"] = {"predict_method": "predict_proba"}
    r = client.post("/invocations", json=payload)
    assert r.status_code == 200
    assert r.get_json() == {"predictions": expected["predict_proba"]}
    payload["params"] = {"predict_method": "predict"}
    assert client.post("/invocations", json=payload).get_json()["predictions"] == \
        expected["predict"]


def test_a_model_can_answer_probabilities_by_default(settings, artifacts_dir, tmp_path, frame,
                                                     expected):
    # The manifest's pyfunc_predict_fn, as MLflow's log_model(pyfunc_predict_fn=...).
    version_dir = ModelStore(artifacts_dir).version_dir("breast-cancer", 1)
    copy = tmp_path / "artifacts" / "proba" / "1"
    shutil.copytree(version_dir, copy)
    data = read_manifest_data(copy)
    data.update(name="proba", pyfunc_predict_fn="predict_proba")
    (copy / "manifest.json").write_text(json.dumps(data))
    app = inprocess_app(settings.with_overrides(artifacts_dir=tmp_path / "artifacts",
                                                default_model="proba"))
    client = app.test_client()
    body = {"dataframe_records": frame.to_dict(orient="records")}
    assert client.post("/invocations", json=body).get_json() == \
        {"predictions": expected["predict_proba"]}
    body["params"] = {"predict_method": "predict"}
    assert client.post("/invocations", json=body).get_json() == \
        {"predictions": expected["predict"]}


ERRORS = [
    ("not json", b"{nope", JSON, 400),
    ("no input key", b'{"data": [[1, 2]]}', JSON, 400),
    ("two input keys", b'{"instances": [], "inputs": []}', JSON, 400),
    ("a list", b"[[1, 2]]", JSON, 400),
    ("split without data", b'{"dataframe_split": {"columns": ["a"]}}', JSON, 400),
    ("split row too short", b'{"dataframe_split": {"data": [[1.0, 2.0]]}}', JSON, 400),
    ("split columns not names", b'{"dataframe_split": {"columns": [1], "data": [[1.0]]}}', JSON,
     400),
    ("records not a list", b'{"dataframe_records": {"a": 1}}', JSON, 400),
    ("columns of unequal length", b'{"inputs": {"a": [1, 2], "b": [1]}}', JSON, 400),
    ("params not an object", b'{"inputs": [], "params": 3}', JSON, 400),
    ("unknown predict_method", b'{"inputs": [[1]], "params": {"predict_method": "x"}}', JSON,
     400),
    ("empty csv", b"", "text/csv", 400),
    ("no rows", b'{"dataframe_records": []}', JSON, 422),
    ("another content type", b"1,2", "text/plain", 415),
]


@pytest.mark.parametrize(("case", "body", "content_type", "status"), ERRORS,
                         ids=[e[0] for e in ERRORS])
def test_errors_answer_in_mlflows_shape(client, case, body, content_type, status):
    r = client.post("/invocations", data=body, content_type=content_type)
    assert r.status_code == status, r.get_data(as_text=True)
    error = r.get_json()
    assert set(error) == {"error_code", "message"} and error["message"]
    assert error["error_code"] == "BAD_REQUEST"


@pytest.mark.parametrize("content_type", [JSON, "text/csv"])
def test_a_missing_column_is_named(client, frame, content_type):
    df = frame.drop(columns=frame.columns[3])
    body = df.to_csv(index=False).encode() if content_type == "text/csv" else \
        _wrap("dataframe_records", df.to_json(orient="records"))
    r = client.post("/invocations", data=body, content_type=content_type)
    assert r.status_code == 422
    error = r.get_json()
    assert error["error_code"] == "BAD_REQUEST"
    assert f"{frame.columns[3]!r}: missing feature" in error["message"]


def test_other_errors_keep_their_status(client, frame, redis_client):  # forgets the job
    r = client.post("/invocations?model=nope", json={"inputs": [[1.0]]})
    assert r.status_code == 404 and r.get_json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    many = pd.concat([frame] * 5)  # 125 rows, over the limit of 100
    r = client.post("/invocations", data=_wrap("dataframe_split", many.to_json(orient="split")),
                    content_type=JSON)
    assert r.status_code == 202  # run as a job (tests/test_job_idempotency.py)
    assert r.headers["Location"] == f"/jobs/{r.get_json()['id']}"
    r = client.get("/invocations")
    assert r.status_code == 405 and "error_code" not in r.get_json()  # routing: tabserve's shape


def test_ping_health_and_version(client, settings):
    for path in ("/ping", "/health"):
        r = client.get(path)
        assert r.status_code == 200 and r.get_json()["status"] == "ok"
    r = client.get("/version")
    assert r.status_code == 200 and r.get_data(as_text=True) == "0.1.0"
    missing = inprocess_app(settings.with_overrides(default_model="nope")).test_client()
    assert missing.get("/ping").status_code == 503


def test_health_routes_are_public_and_invocations_needs_a_predict_key(settings, tmp_path,
                                                                      frame):
    keys = tmp_path / "keys.json"
    token = create_key(keys, "pred", "predict")
    reader = create_key(keys, "reader", "read")
    client = inprocess_app(settings.with_overrides(api_keys_file=keys, rate_limit_requests=0)) \
        .test_client()
    for path in ("/ping", "/health", "/version"):
        assert client.get(path).status_code == 200
    body = {"dataframe_split": frame.head(2).to_dict(orient="split")}
    r = client.post("/invocations", json=body)
    assert r.status_code == 401 and r.get_json()["error_code"] == "UNAUTHENTICATED"
    r = client.post("/invocations", json=body, headers={"Authorization": f"Bearer {reader}"})
    assert r.status_code == 403 and r.get_json()["error_code"] == "PERMISSION_DENIED"
    r = client.post("/invocations", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def _check_server(url: str, frame: pd.DataFrame) -> None:
    assert requests.get(url + "/ping", timeout=5).status_code == 200
    predicted = requests.post(url + "/predict", timeout=10,
                              json={"instances": frame.to_dict(orient="records")}).json()
    split = requests.post(url + "/invocations", timeout=10, headers={"Content-Type": JSON},
                          data=_wrap("dataframe_split", frame.to_json(orient="split")))
    csv = requests.post(url + "/invocations", timeout=10, headers={"Content-Type": "text/csv"},
                        data=frame.to_csv(index=False))
    assert split.json() == csv.json() == {"predictions": predicted["predictions"]}


def test_gunicorn_answers_invocations(api_server, frame):
    _check_server(api_server.url, frame)


def test_tabserve_serve_runs_the_api_for_sagemaker(settings, tmp_path, frame):
    port = free_port()
    env = tabserve_env(settings.as_env(), {"TABSERVE_BIND": f"127.0.0.1:{port}",
                                           "TABSERVE_WEB_WORKERS": "1"})
    server = Process([sys.executable, "-m", "cli", "serve"], env, tmp_path / "serve.log")
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: requests.get(url + "/ping", timeout=1).ok, 60, "tabserve serve")
        except TimeoutError:
            raise AssertionError("tabserve serve did not start:\n" + server.log()) from None
        _check_server(url, frame)
    finally:
        server.stop()
