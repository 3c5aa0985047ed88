"""Open Inference Protocol V2 (KServe, Triton, MLServer) over REST: tensors in, tensors out.

A request's tensors become the rows /predict takes (one [N, F] tensor in schema order, or one
[N] tensor per feature), so they go through the same validator, fast paths and monitoring
(score_rows). The binary tensor data extension: with an `Inference-Header-Content-Length`
header the body is that many bytes of JSON followed by the tensors' raw bytes, in input
order, each input saying its length in `parameters.binary_data_size`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.errors import BadRequestError, PayloadTooLargeError, ValidationError
from shared.models.loading import LoadedModel
from shared.models.manifest import Manifest
from shared.models.validation import RowValidator
from shared.online.predict import log_payload, parse_limited_json, payload_sampled, score_input

if TYPE_CHECKING:
    import pandas as pd

    from shared.config import Settings
    from shared.services import Services

# Little-endian, as the binary extension sends them; BYTES are length-prefixed strings.
NUMPY_DTYPES = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4", "BOOL": "|b1"}
INPUT_DATATYPES = frozenset(NUMPY_DTYPES) | {"BYTES"}
FEATURE_DATATYPES = {"number": "FP64", "integer": "INT64", "boolean": "BOOL",
                     "category": "BYTES"}
OUTPUTS = ("predict", "predict_proba")  # MLServer's names for the scikit-learn methods


@dataclass
class Tensor:
    """An input tensor: its values flat, row-major: the Python values JSON gave, or for
    numbers sent as binary data, a NumPy array of them."""

    name: str
    datatype: str
    shape: list[int]
    values: list[Any] | np.ndarray

    def as_list(self) -> list[Any]:
        """The values as the Python values JSON would give."""
        values = self.values
        return values.tolist() if isinstance(values, np.ndarray) else values


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[dict[str, Any]] | None
    parameters: dict[str, Any]


@dataclass
class InferAnswer:
    """The JSON header of a response and the binary outputs that follow it (b"": none)."""

    header: dict[str, Any]
    buffers: bytes


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary data of a request body."""
    if header_length is None:
        return raw, b""
    if not header_length.isascii() or not header_length.isdigit() or \
            int(header_length) > len(raw):
        raise BadRequestError(f"Inference-Header-Content-Length {header_length[:20]!r} is not "
                              f"a length within the body of {len(raw)} bytes")
    return raw[:int(header_length)], raw[int(header_length):]


def parse_header(raw: bytes, settings: Settings) -> Any:
    """The JSON header, within the same depth and number-length limits as /predict's."""
    return parse_limited_json(raw, settings.max_json_depth, settings.max_json_number_chars)


def parse_request(header: Any, buffers: bytes) -> InferRequest:
    """An inference request from its JSON header and binary data."""
    if not isinstance(header, dict):
        raise BadRequestError("an inference request must be a JSON object with \"inputs\"")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequestError('"inputs" must be a non-empty array of tensors')
    tensors, offset = [], 0
    for item in inputs:
        tensor, offset = parse_tensor(item, buffers, offset)
        tensors.append(tensor)
    if offset != len(buffers):
        raise BadRequestError(f"the body has {len(buffers) - offset} bytes of binary data "
                              "beyond the inputs' binary_data_size")
    outputs = header.get("outputs")
    if outputs is not None and not (isinstance(outputs, list) and all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)):
        raise BadRequestError('"outputs" must be an array of objects with a "name"')
    request_id, parameters = header.get("id"), header.get("parameters") or {}
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequestError('"id" must be a string')
    if not isinstance(parameters, dict):
        raise BadRequestError('"parameters" must be an object')
    return InferRequest(request_id, tensors, outputs, parameters)


def parse_tensor(item: Any, buffers: bytes, offset: int) -> tuple[Tensor, int]:
    """One input tensor, and the offset of the next input's binary data."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise BadRequestError('each input must be an object with a "name"')
    name, datatype, shape = item["name"], item.get("datatype"), item.get("shape")
    if not isinstance(datatype, str) or datatype not in INPUT_DATATYPES:  # {} is unhashable
        raise BadRequestError(f"input {name!r}: datatype {datatype!r} is not one of "
                              f"{', '.join(sorted(INPUT_DATATYPES))}")
    if not isinstance(shape, list) or not shape or not all(
            type(d) is int and d >= 0 for d in shape):
        raise BadRequestError(f"input {name!r}: shape must be an array of sizes, got {shape!r}")
    count = math.prod(shape)
    parameters = item.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    values: list[Any] | np.ndarray
    if size is None:
        if "data" not in item:
            raise BadRequestError(f"input {name!r} has neither data nor binary_data_size")
        values = flatten(item["data"])
    else:
        if type(size) is not int or size < 0 or offset + size > len(buffers):
            raise BadRequestError(f"input {name!r}: binary_data_size {size!r} is beyond the "
                                  f"{len(buffers) - offset} bytes of binary data left")
        values = decode_binary(name, datatype, buffers[offset:offset + size])
        offset += size
    if len(values) != count:
        raise BadRequestError(f"input {name!r}: shape {shape} holds {count} values, "
                              f"the data has {len(values)}")
    return Tensor(name, datatype, shape, values), offset


def flatten(data: Any) -> list[Any]:
    """A tensor's JSON data, flat: V2 allows it nested row-major (depth is capped before)."""
    if not isinstance(data, list):
        return [data]
    if list not in map(type, data):  # flat already (a JSON parser's arrays are exact lists)
        return data
    out: list[Any] = []
    for value in data:
        if isinstance(value, list):
            out.extend(flatten(value))
        else:
            out.append(value)
    return out


def decode_binary(name: str, datatype: str, data: bytes) -> list[Any] | np.ndarray:
    """A tensor's raw bytes: BYTES as Python strings, numbers as a NumPy array."""
    if datatype == "BYTES":
        return decode_bytes_tensor(name, data)
    dtype = np.dtype(NUMPY_DTYPES[datatype])
    if len(data) % dtype.itemsize:
        raise BadRequestError(f"input {name!r}: {len(data)} bytes is not a whole number of "
                              f"{datatype} values")
    return np.frombuffer(data, dtype=dtype)


def decode_bytes_tensor(name: str, data: bytes) -> list[Any]:
    """BYTES elements, each a 4-byte little-endian length and that many UTF-8 bytes."""
    values, pos = [], 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise BadRequestError(f"input {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", data, pos)
        end = pos + 4 + length
        if end > len(data):
            raise BadRequestError(f"input {name!r}: a BYTES element runs past its data")
        try:
            values.append(data[pos + 4:end].decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequestError(f"input {name!r}: a BYTES element is not UTF-8") from None
        pos = end
    return values


def to_rows(tensors: list[Tensor], names: list[str], max_rows: int) -> list[dict[str, Any]]:
    """The rows /predict would take: from one [N, F] tensor whose name is not a feature's,
    or from one tensor per feature (the validator names a missing or unknown feature)."""
    if len(tensors) == 1 and tensors[0].name not in names:
        return matrix_rows(tensors[0], names, max_rows)
    return feature_rows(tensors, max_rows)


def matrix_rows(tensor: Tensor, names: list[str], max_rows: int) -> list[dict[str, Any]]:
    width = len(names)
    if len(tensor.shape) != 2 or tensor.shape[1] != width:
        raise ValidationError(
            f"input {tensor.name!r} has shape {tensor.shape}: one tensor of every feature "
            f"must have shape [N, {width}], features in schema order; or send one tensor "
            "per feature, named after it",
            details=[{"field": tensor.name, "message": f"shape must be [N, {width}]"}])
    n = check_row_count(tensor.shape[0], max_rows)
    values = tensor.as_list()
    return [dict(zip(names, values[i * width:(i + 1) * width], strict=True)) for i in range(n)]


def feature_rows(tensors: list[Tensor], max_rows: int) -> list[dict[str, Any]]:
    lengths = {t.shape[0] for t in tensors}
    for t in tensors:
        if len(t.shape) > 2 or (len(t.shape) == 2 and t.shape[1] != 1):
            raise ValidationError(f"input {t.name!r} has shape {t.shape}: a feature's tensor "
                                  "must have shape [N] or [N, 1]",
                                  details=[{"field": t.name, "message": "shape must be [N]"}])
    if len(lengths) != 1:
        raise ValidationError(f"the inputs have different lengths {sorted(lengths)}: every "
                              "feature's tensor must have one value per row")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValidationError("an input name appears twice")
    check_row_count(lengths.pop(), max_rows)
    return [dict(zip(names, row, strict=True))
            for row in zip(*(t.as_list() for t in tensors), strict=True)]


def check_row_count(n: int, max_rows: int) -> int:
    if n == 0:
        raise ValidationError("the inputs have no rows",
                              details=[{"field": "inputs", "message": "must not be empty"}])
    if n > max_rows:
        raise PayloadTooLargeError(f"the inputs have {n} rows; at most {max_rows} per request "
                                   "(use POST /jobs for files)")
    return n


def model_input(tensors: list[Tensor], validator: RowValidator, max_rows: int
                ) -> tuple[np.ndarray | pd.DataFrame, list[dict[str, Any]] | None]:
    """The model's input, and the rows it was validated from: one [N, F] tensor of finite
    numbers goes straight into the input matrix (no rows: None); anything else becomes rows
    for the validator, which names what is wrong."""
    names = validator.names
    if len(tensors) == 1 and tensors[0].name not in names:
        tensor = tensors[0]
        if len(tensor.shape) == 2 and tensor.shape[1] == len(names):
            X = validator.plain_values(tensor.values, check_row_count(tensor.shape[0], max_rows))
            if X is not None:
                return X, None
    rows = to_rows(tensors, names, max_rows)
    return validator.validate(rows), rows


def infer(rt: Services, loaded: LoadedModel, header: Any, buffers: bytes) -> InferAnswer:
    """Score a V2 request with a loaded model and shape the answer."""
    request = parse_request(header, buffers)
    chosen = choose_outputs(request, available_outputs(loaded))
    X, rows = model_input(request.inputs, loaded.validator, rt.settings.max_online_rows)
    scored = score_input(rt, loaded, X)
    manifest = loaded.manifest
    arrays = {"predict": scored.result.labels, "predict_proba": scored.result.probabilities}
    tensors, pieces = [], []
    for name, binary in chosen:
        array = arrays[name]
        assert array is not None  # predict_proba is offered only when the model has it
        tensor, data = output_tensor(name, array, binary)
        tensors.append(tensor)
        pieces.append(data)
    answer: dict[str, Any] = {"model_name": manifest.name, "model_version": str(manifest.version)}
    if request.id is not None:
        answer["id"] = request.id
    answer["parameters"] = {"prediction_id": scored.prediction_id}
    answer["outputs"] = tensors
    if payload_sampled(rt):
        inputs = rows if rows is not None else to_rows(
            request.inputs, loaded.validator.names, rt.settings.max_online_rows)
        log_payload(rt, loaded, scored.prediction_id, inputs, {"predictions": scored.labels},
                    sampled=True)
    return InferAnswer(answer, b"".join(pieces))


def available_outputs(loaded: LoadedModel) -> list[str]:
    return list(OUTPUTS) if loaded.has_proba else ["predict"]


def choose_outputs(request: InferRequest, available: list[str]) -> list[tuple[str, bool]]:
    """The outputs to answer and whether each goes as binary data: the request's `outputs`
    (each may say `binary_data`), else all; `binary_data_output` is the default."""
    default = request.parameters.get("binary_data_output", False) is True
    if request.outputs is None:
        return [(name, default) for name in available]
    chosen = []
    for output in request.outputs:
        if output["name"] not in available:
            raise BadRequestError(f"unknown output {output['name']!r}; this model has "
                                  f"{', '.join(available)}")
        parameters = output.get("parameters")
        binary = parameters.get("binary_data", default) if isinstance(parameters, dict) \
            else default
        chosen.append((output["name"], binary is True))
    return chosen


def output_tensor(name: str, array: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes]:
    """An output tensor's JSON, and its raw bytes when it goes as binary data."""
    datatype = array_datatype(array) if name == "predict" else "FP64"
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if datatype == "BYTES":
        values = [str(v) for v in array.ravel().tolist()]
    else:
        values = array.astype(NUMPY_DTYPES[datatype]).ravel().tolist()
    if not binary:
        tensor["data"] = values
        return tensor, b""
    data = encode_bytes_tensor(values) if datatype == "BYTES" else \
        np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()
    tensor["parameters"] = {"binary_data_size": len(data)}
    return tensor, data


def array_datatype(array: np.ndarray) -> str:
    """The V2 datatype of predicted labels: the classes' own type, FP64 for regressors."""
    kind = array.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    return "BYTES"


def encode_bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in (v.encode() for v in values))


def model_metadata(manifest: Manifest, versions: list[int]) -> dict[str, Any]:
    """A model's V2 metadata: one input per feature, the outputs, the versions."""
    return {
        "name": manifest.name,
        "versions": [str(v) for v in versions],
        "platform": f"tabserve_{manifest.algorithm or 'model'}",
        "inputs": [{"name": f.name, "datatype": FEATURE_DATATYPES[f.type], "shape": [-1]}
                   for f in manifest.features],
        "outputs": manifest_outputs(manifest),
        "parameters": {"task": manifest.task, "version": str(manifest.version)},
    }


def manifest_outputs(manifest: Manifest) -> list[dict[str, Any]]:
    classes = manifest.classes
    if manifest.task != "classification" or not classes:
        return [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    labels = array_datatype(np.asarray(classes))
    return [{"name": "predict", "datatype": labels, "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(classes)]}]


def repository_index(rt: Services) -> list[dict[str, Any]]:
    """Every model version in the artifacts directory: each is served on request (loaded on
    first use by each worker); a model whose manifest cannot be read is UNAVAILABLE."""
    models, unreadable = rt.store.catalog()
    index = [{"name": m["name"], "version": str(v), "state": "READY", "reason": ""}
             for m in models for v in m["versions"]]
    index += [{"name": u["name"], "version": str(u["version"]), "state": "UNAVAILABLE",
               "reason": u["error"]} for u in unreadable]
    return index
