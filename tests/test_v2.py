"""Open Inference Protocol V2 over REST: shapes and errors in process
(`create_app(settings).test_client()`), and the real tritonclient.http from PyPI against a
real gunicorn, binary and JSON, with predictions equal to /predict's."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pandas as pd
import pytest
import requests
from prometheus_client import REGISTRY

from shared.config import Settings
from shared.models.store import ModelStore
from shared.models.training import train_from_file
from tests.artifacts import copy_demo
from tests.inprocess import inprocess_app

MODEL = "breast-cancer"


@pytest.fixture(scope="module")
def v2_artifacts(artifacts_dir, tmp_path_factory):
    """The demo model, a classifier with categories and string classes, and a regressor."""
    root = copy_demo(artifacts_dir, tmp_path_factory.mktemp("v2") / "artifacts")
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame({
        "color": rng.choice(["red", "green", "blue"], n),
        "size": rng.normal(10, 3, n).round(3),
        "count": rng.integers(0, 20, n),
    })
    frame["label"] = np.where((frame["color"] == "red") | (frame["size"] > 11), "yes", "no")
    frame["price"] = frame["size"] * 2.5 + frame["count"] + (frame["color"] == "blue") * 4
    data = root.parent / f"{root.name}-shop.csv"
    frame.drop(columns=["price"]).to_csv(data, index=False)
    store = ModelStore(root)
    train_from_file(store, data, "label", name="shop")
    frame.drop(columns=["label"]).to_csv(data, index=False)
    train_from_file(store, data, "price", name="price", task="regression")
    return root


@pytest.fixture(scope="module")
def app(v2_artifacts, redis_server, tmp_path_factory):
    settings = Settings(artifacts_dir=v2_artifacts, redis_url=redis_server.url,
                        data_dir=str(tmp_path_factory.mktemp("v2-data")), log_level="INFO",
                        default_model=MODEL, worker_metrics_port=0, drift_interval_seconds=0,
                        max_online_rows=1000)
    app = inprocess_app(settings)
    yield app
    runtime = app.extensions["tabserve"]
    runtime.predictions.flush()
    runtime.drift.drain()


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


def _matrix(names, rows) -> dict:
    return {"name": "input-0", "datatype": "FP64", "shape": [len(rows), len(names)],
            "data": [[r[n] for n in names] for r in rows]}


def _infer(client, body, model=MODEL, **kwargs):
    return client.post(f"/v2/models/{model}/infer", data=orjson.dumps(body), **kwargs)


def _error(r, status: int) -> str:
    assert r.status_code == status, r.get_data(as_text=True)
    body = r.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return body["error"]


def _output(body, name):
    return next(o for o in body["outputs"] if o["name"] == name)


def test_server_health_and_metadata(client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    server = client.get("/v2").get_json()
    assert server["name"] == "tabserve"
    assert {"binary_tensor_data", "model_repository"} <= set(server["extensions"])


def test_model_metadata_ready_and_repository(client, demo_data):
    names, _ = demo_data
    meta = client.get(f"/v2/models/{MODEL}").get_json()
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    assert [i["name"] for i in meta["inputs"]] == names
    assert {i["datatype"] for i in meta["inputs"]} == {"FP64"}
    assert meta["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [-1]},
                               {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]}]
    assert client.get(f"/v2/models/{MODEL}/versions/1").get_json()["versions"] == ["1"]
    shop = client.get("/v2/models/shop").get_json()
    assert {i["name"]: i["datatype"] for i in shop["inputs"]} == {
        "color": "BYTES", "size": "FP64", "count": "INT64"}
    assert _output(shop, "predict")["datatype"] == "BYTES"
    assert [o["name"] for o in client.get("/v2/models/price").get_json()["outputs"]] == [
        "predict"]
    assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200
    assert client.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 200
    index = client.post("/v2/repository/index").get_json()
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        (MODEL, "1", "READY"), ("shop", "1", "READY"), ("price", "1", "READY")}
    assert client.post(f"/v2/repository/models/{MODEL}/load", data=b"{}").status_code == 200
    assert "cannot be unloaded" in _error(
        client.post(f"/v2/repository/models/{MODEL}/unload", data=b"{}"), 400)


def test_unknown_models_and_versions_are_404_in_v2_shape(client):
    assert "unknown model" in _error(client.get("/v2/models/nope"), 404)
    assert "no version 7" in _error(client.get(f"/v2/models/{MODEL}/versions/7/ready"), 404)
    _error(client.post("/v2/models/nope/infer", data=b"{}"), 404)
    _error(client.get(f"/v2/models/{MODEL}/versions/x1"), 422)
    assert "is not served" in _error(client.get(f"/v2/models/{MODEL}/config"), 404)


def test_matrix_and_per_feature_tensors_equal_predict(client, demo_data, demo_rows):
    names, _ = demo_data
    rows = demo_rows[:25]
    expected = client.post("/predict", json={"instances": rows}).get_json()
    proba = [[p["0"], p["1"]] for p in expected["probabilities"]]
    per_feature = [{"name": n, "datatype": "FP64", "shape": [len(rows)],
                    "data": [r[n] for r in rows]} for n in names]
    for inputs in ([_matrix(names, rows)], per_feature):
        r = _infer(client, {"id": "req-1", "inputs": inputs})
        assert r.status_code == 200, r.get_data(as_text=True)
        assert r.mimetype == "application/json"
        body = r.get_json()
        assert body["id"] == "req-1" and body["model_name"] == MODEL
        assert body["model_version"] == "1" and body["parameters"]["prediction_id"]
        assert _output(body, "predict") == {"name": "predict", "datatype": "INT64",
                                            "shape": [25], "data": expected["predictions"]}
        out = _output(body, "predict_proba")
        assert out["shape"] == [25, 2] and out["datatype"] == "FP64"
        assert np.reshape(out["data"], (25, 2)).tolist() == proba


def test_the_outputs_list_and_parameters_are_honoured(client, demo_data, demo_rows):
    names, _ = demo_data
    body = {"inputs": [_matrix(names, demo_rows[:3])], "outputs": [{"name": "predict_proba"}],
            "parameters": {"content_type": "np"}}
    got = _infer(client, body).get_json()
    assert [o["name"] for o in got["outputs"]] == ["predict_proba"] and "id" not in got
    body["outputs"] = [{"name": "predict"}, {"name": "nope"}]
    assert "unknown output 'nope'" in _error(_infer(client, body), 400)
    price = {"inputs": [{"name": "color", "datatype": "BYTES", "shape": [1], "data": ["red"]},
                        {"name": "size", "datatype": "FP64", "shape": [1], "data": [10.0]},
                        {"name": "count", "datatype": "INT64", "shape": [1], "data": [3]}],
             "outputs": [{"name": "predict_proba"}]}
    assert "this model has predict" in _error(_infer(client, price, model="price"), 400)


def _binary_request(inputs: list[tuple[str, str, list[int], bytes]], **extra) -> tuple[bytes, int]:
    header = {"inputs": [{"name": n, "datatype": d, "shape": s,
                          "parameters": {"binary_data_size": len(raw)}}
                         for n, d, s, raw in inputs], **extra}
    head = orjson.dumps(header)
    return head + b"".join(raw for *_, raw in inputs), len(head)


def _bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def _read_binary(r) -> tuple[dict, dict[str, bytes]]:
    length = int(r.headers["Inference-Header-Content-Length"])
    raw = r.get_data()
    header, rest, out = orjson.loads(raw[:length]), raw[length:], {}
    for o in header["outputs"]:
        if "data" in o:
            continue
        size = o["parameters"]["binary_data_size"]
        out[o["name"]], rest = rest[:size], rest[size:]
    assert rest == b""
    return header, out


def test_binary_tensors_in_and_out_as_tritonclient_sends_them(client, demo_data, demo_rows):
    names, X = demo_data
    body, length = _binary_request([("x", "FP32", [40, 30], X[:40].astype("<f4").tobytes())],
                                   parameters={"binary_data_output": True}, id="b1")
    r = client.post(f"/v2/models/{MODEL}/infer", data=body, content_type="",
                    headers={"Inference-Header-Content-Length": str(length)})
    assert r.status_code == 200, r.get_data(as_text=True)
    header, out = _read_binary(r)
    assert header["id"] == "b1"
    assert _output(header, "predict")["datatype"] == "INT64"
    # FP32 inputs score as their float32 values: /predict's for the same rounded rows.
    rounded = [dict(zip(names, row.tolist(), strict=True)) for row in X[:40].astype("<f4")]
    expected = client.post("/predict", json={"instances": rounded}).get_json()
    assert np.frombuffer(out["predict"], "<i8").tolist() == expected["predictions"]
    proba = np.frombuffer(out["predict_proba"], "<f8").reshape(40, 2)
    assert proba[:, 1].tolist() == [p["1"] for p in expected["probabilities"]]
    # FP64 in, one output binary and one JSON.
    body, length = _binary_request([("x", "FP64", [40, 30], X[:40].tobytes())], outputs=[
        {"name": "predict", "parameters": {"binary_data": True}}, {"name": "predict_proba"}])
    r = client.post(f"/v2/models/{MODEL}/infer", data=body, content_type="",
                    headers={"Inference-Header-Content-Length": str(length)})
    header, out = _read_binary(r)
    truth = client.post("/predict", json={"instances": demo_rows[:40]}).get_json()
    assert np.frombuffer(out["predict"], "<i8").tolist() == truth["predictions"]
    assert _output(header, "predict_proba")["data"][1::2] == [
        p["1"] for p in truth["probabilities"]]


def test_categories_as_bytes_tensors_and_string_classes(client):
    rows = [{"color": "red", "size": 9.5, "count": 3}, {"color": "green", "size": 8.0,
                                                        "count": 12}]
    expected = client.post("/predict?model=shop", json={"instances": rows}).get_json()
    inputs = [{"name": "color", "datatype": "BYTES", "shape": [2], "data": ["red", "green"]},
              {"name": "size", "datatype": "FP64", "shape": [2, 1], "data": [[9.5], [8.0]]},
              {"name": "count", "datatype": "INT64", "shape": [2], "data": [3, 12]}]
    got = _infer(client, {"inputs": inputs}, model="shop").get_json()
    assert _output(got, "predict") == {"name": "predict", "datatype": "BYTES", "shape": [2],
                                       "data": expected["predictions"]}
    body, length = _binary_request([
        ("color", "BYTES", [2], _bytes_tensor(["red", "green"])),
        ("size", "FP64", [2], np.array([9.5, 8.0]).tobytes()),
        ("count", "INT32", [2], np.array([3, 12], "<i4").tobytes())],
        outputs=[{"name": "predict", "parameters": {"binary_data": True}}])
    r = client.post("/v2/models/shop/infer", data=body,
                    headers={"Inference-Header-Content-Length": str(length)})
    _, out = _read_binary(r)
    assert out["predict"] == _bytes_tensor(expected["predictions"])
    regression = client.post("/predict?model=price", json={"instances": rows}).get_json()
    got = _infer(client, {"inputs": inputs}, model="price").get_json()
    assert _output(got, "predict")["datatype"] == "FP64"
    assert _output(got, "predict")["data"] == regression["predictions"]


def test_validation_is_predicts_and_errors_are_v2_shaped(client, demo_data, demo_rows):
    names, _ = demo_data
    before = REGISTRY.get_sample_value("tabserve_validation_errors_total",
                                       {"code": "validation_error", "path": "online"}) or 0
    bad = _matrix(names, demo_rows[:2])
    bad["data"][1][3] = "oops"
    assert f"row 1, feature {names[3]!r}: must be a number" in _error(
        _infer(client, {"inputs": [bad]}), 422)
    assert REGISTRY.get_sample_value("tabserve_validation_errors_total", {
        "code": "validation_error", "path": "online"}) == before + 1
    missing = [{"name": n, "datatype": "FP64", "shape": [1], "data": [1.0]} for n in names[1:]]
    assert f"feature {names[0]!r}: missing feature" in _error(
        _infer(client, {"inputs": missing}), 422)
    wide = {"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}
    assert "must have shape [N, 30]" in _error(_infer(client, {"inputs": [wide]}), 422)
    assert "holds 4 values" in _error(_infer(client, {"inputs": [
        {**wide, "shape": [2, 2]}]}), 400)
    assert "datatype 'FP16'" in _error(_infer(client, {"inputs": [{**wide, "datatype": "FP16"}]}),
                                       400)
    _error(client.post(f"/v2/models/{MODEL}/infer", data=b"{nope"), 400)
    _error(_infer(client, {"inputs": []}), 400)
    too_many = _matrix(names, demo_rows[:1] * 1001)
    assert "at most 1000" in _error(_infer(client, {"inputs": [too_many]}), 413)
    body, length = _binary_request([("x", "FP64", [1, 30], b"\0" * 240)])
    r = client.post(f"/v2/models/{MODEL}/infer", data=body + b"extra",
                    headers={"Inference-Header-Content-Length": str(length)})
    assert "beyond the inputs" in _error(r, 400)
    r = client.post(f"/v2/models/{MODEL}/infer", data=body,
                    headers={"Inference-Header-Content-Length": "99999"})
    _error(r, 400)
    _error(client.post(f"/v2/models/{MODEL}/infer", data=b"{}", content_type="text/csv"), 415)


def test_the_online_metrics_count_v2_rows(client, demo_data, demo_rows):
    names, _ = demo_data
    labels = {"model": MODEL, "version": "1", "path": "online"}
    before = REGISTRY.get_sample_value("tabserve_rows_predicted_total", labels) or 0
    assert _infer(client, {"inputs": [_matrix(names, demo_rows[:7])]}).status_code == 200
    assert REGISTRY.get_sample_value("tabserve_rows_predicted_total", labels) == before + 7


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_against_gunicorn(api_server, demo_data, demo_rows, binary):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    names, X = demo_data
    url = api_server.url.removeprefix("http://")
    client = httpclient.InferenceServerClient(url=url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
        meta = client.get_model_metadata(MODEL)
        assert [i["name"] for i in meta["inputs"]] == names
        assert MODEL in {m["name"] for m in client.get_model_repository_index()}
        assert not client.is_model_ready("nope")
        with pytest.raises(InferenceServerException, match="is not served"):
            client.get_model_config(MODEL)

        rows = X[:200]
        matrix = httpclient.InferInput("input-0", list(rows.shape), "FP64")
        matrix.set_data_from_numpy(rows, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary)
                   for n in ("predict", "predict_proba")]
        result = client.infer(MODEL, [matrix], outputs=outputs, request_id="t-1")
        per_feature = []
        for j, name in enumerate(names):
            tensor = httpclient.InferInput(name, [len(rows)], "FP64")
            tensor.set_data_from_numpy(rows[:, j].copy(), binary_data=binary)
            per_feature.append(tensor)
        default_outputs = client.infer(MODEL, per_feature, model_version="1")
    finally:
        client.close()

    expected = requests.post(api_server.url + "/predict", json={"instances": demo_rows[:200]},
                             timeout=30).json()
    proba = [[p["0"], p["1"]] for p in expected["probabilities"]]
    assert result.get_response()["id"] == "t-1"
    for got in (result, default_outputs):
        assert got.as_numpy("predict").tolist() == expected["predictions"]
        assert got.as_numpy("predict_proba").tolist() == proba


def test_a_matrix_goes_straight_to_the_model_and_bad_values_are_still_named(client, demo_data,
                                                                           demo_rows):
    names, X = demo_data
    expected = client.post("/predict", json={"instances": demo_rows[:3]}).get_json()
    as_ints = np.round(X[:3]).astype("<i4")
    rounded = client.post("/predict", json={"instances": [
        dict(zip(names, row, strict=True)) for row in as_ints.tolist()]}).get_json()
    for raw, datatype, want in ((X[:3].tobytes(), "FP64", expected),
                                (as_ints.tobytes(), "INT32", rounded)):
        body, length = _binary_request([("x", datatype, [3, 30], raw)])
        r = client.post(f"/v2/models/{MODEL}/infer", data=body,
                        headers={"Inference-Header-Content-Length": str(length)})
        assert r.status_code == 200, r.get_data(as_text=True)
        assert _output(r.get_json(), "predict")["data"] == want["predictions"]
        assert _output(r.get_json(), "predict_proba")["data"][1::2] == [
            p["1"] for p in want["probabilities"]]
    bad = X[:3].copy()
    bad[2, 4] = np.nan
    body, length = _binary_request([("x", "FP64", [3, 30], bad.tobytes())])
    r = client.post(f"/v2/models/{MODEL}/infer", data=body,
                    headers={"Inference-Header-Content-Length": str(length)})
    assert f"row 2, feature {names[4]!r}: must be a finite number, got nan" in _error(r, 422)
    flags = _matrix(names, demo_rows[:2])
    flags["data"][0][0] = True
    assert f"row 0, feature {names[0]!r}: must be a number, got boolean true" in _error(
        _infer(client, {"inputs": [flags]}), 422)


def test_the_payload_log_has_the_rows_of_a_matrix(v2_artifacts, redis_server, tmp_path_factory,
                                                   demo_data, demo_rows, caplog):
    names, X = demo_data
    settings = Settings(artifacts_dir=v2_artifacts, redis_url=redis_server.url,
                        data_dir=str(tmp_path_factory.mktemp("v2-payloads")), log_level="INFO",
                        default_model=MODEL, worker_metrics_port=0, drift_interval_seconds=0,
                        log_payloads="on")
    app = inprocess_app(settings)
    body, length = _binary_request([("x", "FP64", [2, 30], X[:2].tobytes())])
    try:
        with caplog.at_level("INFO", logger="tabserve.payloads"):
            r = app.test_client().post(f"/v2/models/{MODEL}/infer", data=body,
                                       headers={"Inference-Header-Content-Length": str(length)})
    finally:
        app.extensions["tabserve"].predictions.flush()
        app.extensions["tabserve"].drift.drain()
    assert r.status_code == 200, r.get_data(as_text=True)
    (record,) = [rec for rec in caplog.records if rec.name == "tabserve.payloads"]
    assert record.prediction_id == r.get_json()["parameters"]["prediction_id"]
    assert record.inputs == [dict(zip(names, row, strict=True)) for row in X[:2].tolist()]
    assert record.outputs == {"predictions": _output(r.get_json(), "predict")["data"]}
