"""MLflow's scoring protocol (POST /invocations), which SageMaker containers also speak.

Each body shape MLflow's scoring server takes becomes rows (objects keyed by feature name)
for the model's own validator; the answer is `{"predictions": [...]}` as a model's pyfunc
returns it: labels (`predict`, MLflow's default for scikit-learn) or class probabilities
(`predict_proba`), chosen per model by the manifest's `pyfunc_predict_fn` and per request by
`params.predict_method`.
"""

from __future__ import annotations

import io
import math
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pandas as pd

from shared.errors import BadRequestError, PayloadTooLargeError, ValidationError
from shared.models.loading import LoadedModel
from shared.online.predict import log_payload, score_rows

if TYPE_CHECKING:
    from shared.services import Services

INPUT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
PREDICT_METHODS = ("predict", "predict_proba")
REQUIRED_INPUT = (f"the body must be a JSON object with exactly one of {', '.join(INPUT_KEYS)} "
                  '(and optionally "params"), or text/csv with a header row')

# MLflow's error codes (its databricks_pb2 names) for the statuses tabserve answers.
ERROR_CODES = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "RESOURCE_DOES_NOT_EXIST",
               429: "REQUEST_LIMIT_EXCEEDED", 503: "TEMPORARILY_UNAVAILABLE"}


def error_body(status: int, message: str) -> dict[str, str]:
    """An error as MLflow's scoring server answers it."""
    code = ERROR_CODES.get(status) or ("INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST")
    return {"error_code": code, "message": message}


def tabserve_version() -> str:
    """The installed tabserve version ("unknown" where the code runs from a source tree)."""
    try:
        return metadata.version("tabserve")
    except metadata.PackageNotFoundError:
        return "unknown"


def parse_json_input(body: Any, names: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """The rows and params of a JSON /invocations body."""
    if not isinstance(body, dict):
        raise BadRequestError(f"{REQUIRED_INPUT}; got {type(body).__name__}")
    given = [key for key in INPUT_KEYS if key in body]
    if len(given) != 1:
        raise BadRequestError(f"{REQUIRED_INPUT}; got the fields {sorted(body)}")
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise BadRequestError('"params" must be an object')
    key = given[0]
    if key == "dataframe_split":
        return split_rows(body[key], names), params
    if key == "dataframe_records":
        if not isinstance(body[key], list):
            raise BadRequestError('"dataframe_records" must be an array of objects')
        return body[key], params
    return tensor_rows(key, body[key], names), params


def split_rows(split: Any, names: list[str]) -> list[Any]:
    """Rows of pandas' "split" orient: {"columns": [...], "data": [[...]], "index": [...]};
    without columns, the values are in the model's feature order."""
    if not isinstance(split, dict) or not isinstance(split.get("data"), list):
        raise BadRequestError('"dataframe_split" must be an object with "data" (an array of '
                              'rows) and optionally "columns" and "index"')
    columns = split.get("columns", names)
    if columns == names:  # the schema's own strings as keys: their hashes are computed once
        columns = names
    elif not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise BadRequestError('"dataframe_split.columns" must be an array of feature names')
    return [zip_row(columns, row, i) for i, row in enumerate(split["data"])]


def tensor_rows(key: str, value: Any, names: list[str]) -> list[Any]:
    """Rows of TF-serving-style `instances`/`inputs`: an array of objects or of arrays (in
    the model's feature order), an object of columns, or one object of values."""
    if isinstance(value, list):
        return [zip_row(names, row, i) if isinstance(row, list) else row
                for i, row in enumerate(value)]
    if not isinstance(value, dict):
        raise BadRequestError(f'"{key}" must be an array of rows or an object of columns')
    columns = list(value.values())
    if not any(isinstance(c, list) for c in columns):
        return [value]
    if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns}) > 1:
        raise BadRequestError(f'"{key}" as an object must hold one array per feature, '
                              "all of the same length")
    return [dict(zip(value, values, strict=True)) for values in zip(*columns, strict=True)]


def zip_row(columns: list[str], row: Any, index: int) -> dict[str, Any]:
    """One positional row as an object keyed by column name."""
    if not isinstance(row, list) or len(row) != len(columns):
        got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
        raise BadRequestError(f"row {index} must be an array of {len(columns)} values "
                              f"({', '.join(columns[:5])}{', ...' if len(columns) > 5 else ''}); "
                              f"got {got}")
    return dict(zip(columns, row, strict=True))


def parse_csv_input(raw: bytes, loaded: LoadedModel) -> list[dict[str, Any]]:
    """Rows of a CSV body with a header row, read by pandas as MLflow reads it; an empty
    cell is a missing value (null)."""
    categories = {s.name: str for s in loaded.validator.specs if s.type == "category"}
    try:
        frame = pd.read_csv(io.BytesIO(raw), dtype=categories)  # type: ignore[arg-type]
    except (ValueError, UnicodeDecodeError) as exc:  # pandas' parser errors are ValueErrors
        raise BadRequestError(f"the body is not a CSV with a header row: {exc}") from None
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def predict_method(loaded: LoadedModel, params: dict[str, Any]) -> str:
    """`predict` (labels or values) or `predict_proba`: the request's, else the model's."""
    method = params.get("predict_method", loaded.manifest.pyfunc_predict_fn)
    if method not in PREDICT_METHODS:
        raise BadRequestError(f'"params.predict_method" must be one of {list(PREDICT_METHODS)}, '
                              f"got {method!r}")
    if method == "predict_proba" and not loaded.has_proba:
        raise BadRequestError(f"model {loaded.manifest.ref} has no predict_proba "
                              f"({loaded.manifest.task})")
    return str(method)


def invoke(rt: Services, loaded: LoadedModel, rows: list[Any],
           params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Score rows and return MLflow's answer and the prediction id."""
    method = predict_method(loaded, params)
    check_row_count(rows, rt.settings.max_online_rows)
    scored = score_rows(rt, loaded, rows)
    if method == "predict_proba":
        assert scored.result.probabilities is not None  # has_proba was checked
        predictions: list[Any] = scored.result.probabilities.tolist()
    else:
        predictions = scored.labels
    body = {"predictions": predictions}
    log_payload(rt, loaded, scored.prediction_id, rows, body)
    return body, scored.prediction_id


def check_row_count(rows: list[Any], max_rows: int) -> None:
    """Refuse an empty request, and more rows than the online limit."""
    if not rows:
        raise ValidationError("the request holds no rows")
    if len(rows) > max_rows:
        raise PayloadTooLargeError(f"the request has {len(rows)} rows; at most {max_rows} per "
                                   "request (use POST /jobs for files)")

