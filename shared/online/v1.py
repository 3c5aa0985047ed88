"""KServe's V1 protocol (TensorFlow Serving's REST API): `{"instances": [...]}` or
`{"inputs": [...]}` in, `{"predictions": [...]}` out.

A body's rows, objects keyed by feature name or arrays in the model's feature order, become
the rows /predict takes, and are scored as /invocations scores them (shared/online/mlflow.py:
the same validator, fast paths, metrics and prediction log), so a model answers labels, or
class probabilities when its manifest's `pyfunc_predict_fn` says `predict_proba`, on both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.errors import BadRequestError
from shared.models.loading import LoadedModel
from shared.online.mlflow import invoke, tensor_rows

if TYPE_CHECKING:
    from shared.services import Services

INPUT_KEYS = ("instances", "inputs")
REQUIRED_INPUT = ('the body must be a JSON object with exactly one of "instances" or "inputs": '
                  "an array of rows, each an object of feature values or an array of values "
                  "in the model's feature order")


def parse_rows(body: Any, names: list[str]) -> list[Any]:
    """The rows of a V1 predict body."""
    if not isinstance(body, dict):
        raise BadRequestError(f"{REQUIRED_INPUT}; got {type(body).__name__}")
    given = [key for key in INPUT_KEYS if key in body]
    if len(given) != 1 or len(body) != 1:
        raise BadRequestError(f"{REQUIRED_INPUT}; got the fields {sorted(body)}")
    key = given[0]
    if not isinstance(body[key], list):
        raise BadRequestError(f'"{key}" must be an array of rows; got '
                              f"{type(body[key]).__name__}")
    return tensor_rows(key, body[key], names)


def predict(rt: Services, loaded: LoadedModel, body: Any) -> tuple[dict[str, Any], str]:
    """Score a V1 predict body; KServe's answer and the prediction id."""
    rows = parse_rows(body, loaded.validator.names)
    return invoke(rt, loaded, rows, {})


def model_ready(name: str, loaded: LoadedModel) -> dict[str, Any]:
    """KServe's model-ready answer for a loaded model, named as the request named it."""
    return {"name": name, "ready": True, "version": str(loaded.manifest.version)}


def model_names(rt: Services) -> dict[str, list[str]]:
    """KServe's list of models: every model name in the artifacts directory."""
    return {"models": sorted(rt.store.list_models())}
