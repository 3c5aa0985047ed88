"""The protocol endpoints in the online benchmark: MLflow's `/invocations` and V2's infer (a
JSON tensor, and binary tensor data) on the API process that serves `/predict`, one row per
request, the rows /predict gets; their bodies files and the check of their answers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench.loadgen import read_bodies, write_bodies

CHECK_EVERY = 57  # rows: every 57th of the 569 is checked against the fitted model
V2_INPUT = {"name": "input-0", "shape": [1, 30], "datatype": "FP64"}
# Binary in and binary out, as tritonclient sends them by default.
V2_BINARY_HEADER = json.dumps({
    "inputs": [{**V2_INPUT, "parameters": {"binary_data_size": 30 * 8}}],
    "parameters": {"binary_data_output": True}}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Endpoint:
    key: str  # Results.runs[(label, key)]
    title: str  # in the report
    bodies: str  # the bodies file it sends (a key of write_protocol_bodies' answer)
    path: str  # URL path; {name} and {version} are the model's


ENDPOINTS = (
    Endpoint("invocations-split", "`/invocations`, `dataframe_split`", "mlflow",
             "/invocations?model={name}:{version}"),
    Endpoint("invocations-inputs", "`/invocations`, `inputs`", "mlflow-inputs",
             "/invocations?model={name}:{version}"),
    Endpoint("v2-json", "V2 infer, JSON tensor [1, 30] FP64", "v2-json",
             "/v2/models/{name}/versions/{version}/infer"),
    Endpoint("v2-binary", "V2 infer, binary tensor data (240 bytes in, binary out)",
             "v2-binary", "/v2/models/{name}/versions/{version}/infer"),
)


def endpoint_url(api_url: str, endpoint: Endpoint, ref: str) -> str:
    name, _, version = ref.partition(":")
    return api_url + endpoint.path.format(name=name, version=version)


def v2_json_body(row: list[float]) -> dict[str, Any]:
    """One row as a [1, 30] FP64 tensor; every output (predict, predict_proba) in JSON."""
    return {"inputs": [{**V2_INPUT, "data": row}]}


def v2_binary_body(row: list[float]) -> bytes:
    """The JSON header, then the row's 240 bytes of little-endian FP64."""
    return V2_BINARY_HEADER + np.asarray(row, dtype="<f8").tobytes()


def protocol_json_bodies(names: list[str], row: list[float]) -> dict[str, Any]:
    """One row's JSON body for each JSON request shape of ENDPOINTS, by bodies file."""
    return {"mlflow": {"dataframe_split": {"columns": names, "data": [row]}},
            "mlflow-inputs": {"inputs": [row]},
            "v2-json": v2_json_body(row)}


def write_protocol_bodies(work: Path, names: list[str], X: np.ndarray) -> dict[str, Path]:
    """A bodies file per request shape of ENDPOINTS, one data row per request."""
    rows = X.tolist()
    bodies = [protocol_json_bodies(names, row) for row in rows]
    paths = {kind: write_bodies(work / f"bodies-{kind}.jsonl",
                                (json.dumps(body[kind]) for body in bodies))
             for kind in ("mlflow", "mlflow-inputs", "v2-json")}
    paths["v2-binary"] = write_bodies(
        work / "bodies-v2-binary.txt", (v2_binary_body(row) for row in rows),
        {"Content-Type": "application/octet-stream",
         "Inference-Header-Content-Length": str(len(V2_BINARY_HEADER))})
    return paths


def check_protocols(api_url: str, ref: str, model: Any, X: np.ndarray,
                    bodies: dict[str, Path]) -> None:
    """Each endpoint's answer to every 57th row, sent as the load generator sends it, is
    the fitted model's class (and probabilities, where the answer holds them)."""
    for endpoint in ENDPOINTS:
        headers, lines = read_bodies(bodies[endpoint.bodies])
        url = endpoint_url(api_url, endpoint, ref)
        for i in range(0, len(X), CHECK_EVERY):
            r = requests.post(url, data=lines[i], headers=headers, timeout=30)
            assert r.status_code == 200, (endpoint.key, i, r.status_code, r.text[:500])
            label, proba = answer_of(endpoint, r, lines[i], headers)
            expected = model.predict_proba(X[i:i + 1])[0]
            assert label == model.classes_[expected.argmax()], (endpoint.key, i, label)
            assert np.allclose(proba, expected), (endpoint.key, i, proba, expected)


def answer_of(endpoint: Endpoint, r: requests.Response, body: bytes,
              headers: dict[str, str]) -> tuple[Any, list[float]]:
    """The class and the probabilities of one row's answer. /invocations answers labels
    (MLflow's default for scikit-learn): its probabilities are asked once more, with
    `params.predict_method`."""
    if endpoint.key.startswith("invocations"):
        (label,) = r.json()["predictions"]
        asked = {**json.loads(body), "params": {"predict_method": "predict_proba"}}
        again = requests.post(r.url, json=asked, timeout=30)
        assert again.status_code == 200, (endpoint.key, again.status_code, again.text[:500])
        (proba,) = again.json()["predictions"]
        return label, proba
    outputs = v2_outputs(r)
    return outputs["predict"][0], outputs["predict_proba"].reshape(-1).tolist()


def v2_outputs(r: requests.Response) -> dict[str, np.ndarray]:
    """A V2 answer's output tensors, JSON or binary (Inference-Header-Content-Length)."""
    length = r.headers.get("Inference-Header-Content-Length")
    if length is None:
        header, rest = r.json(), b""
    else:
        header, rest = json.loads(r.content[:int(length)]), r.content[int(length):]
    dtypes = {"FP64": "<f8", "INT64": "<i8", "FP32": "<f4", "INT32": "<i4", "BOOL": "|b1"}
    out = {}
    for tensor in header["outputs"]:
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            values = np.asarray(tensor["data"])
        else:
            values, rest = np.frombuffer(rest[:size], dtypes[tensor["datatype"]]), rest[size:]
        out[tensor["name"]] = values.reshape(tensor["shape"])
    assert rest == b"", "binary data beyond the outputs' binary_data_size"
    return out
