"""The online predict path: parse a JSON body, validate, predict, shape the response."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from shared.cooperative import off_loop
from shared.errors import (
    InvalidJSONError,
    ModelRejectedInputError,
    PayloadTooLargeError,
    ValidationError,
)
from shared.models.loading import LoadedModel, Prediction
from shared.models.validation import MAX_DETAILS
from shared.monitoring.metrics import record_prediction
from shared.monitoring.predictions import new_prediction_id
from shared.security.jsonlimits import check_json_depth, check_number_length

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from shared.services import Services

# Audit log of inputs and outputs, sampled by TABSERVE_LOG_PAYLOADS; off by default.
payload_logger = logging.getLogger("tabserve.payloads")


def parse_json(raw: bytes) -> Any:
    """Parse a JSON body; NaN/Infinity literals are let through for validation to name.

    Nesting deeper than orjson's limit and strings that are not Unicode (a lone surrogate
    escape such as "\\ud800") are refused here, with a 400: the lenient fallback parser
    would recurse until RecursionError, or let through text nothing can encode again.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
    if "depth limit" in reason:
        raise InvalidJSONError(f"request body nests arrays and objects too deeply: {reason}")
    if "surrogate" in reason:
        raise InvalidJSONError(f"request body has a string that is not valid Unicode: {reason}")
    try:
        return json.loads(raw, parse_constant=float)
    except (ValueError, RecursionError) as exc:
        raise InvalidJSONError(f"request body is not valid JSON: {exc}") from None


def parse_limited_json(raw: bytes, max_depth: int, max_number_chars: int) -> Any:
    """Parse a JSON body within the depth and number-length limits (every online protocol's
    body, before anything reads it)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # What orjson refuses goes to a lenient parser, which turns digits into ints at a
        # cost that grows with their count.
        check_number_length(raw, max_number_chars)
        body = parse_json(raw)
    check_json_depth(body, max_depth)
    return body


def extract_rows(body: Any, max_rows: int) -> tuple[list[Any], bool]:
    """The rows of a predict body and whether it was a single `features` object."""
    if not isinstance(body, dict):
        raise InvalidJSONError(
            'request body must be a JSON object: {"features": {...}} or {"instances": [...]}'
        )
    unknown = sorted(set(body) - {"features", "instances"})
    if unknown or len(body) != 1:
        details = [{"field": k, "message": "unknown key"} for k in unknown]
        raise ValidationError(
            'body must have exactly one of "features" (an object) or "instances" (an array)',
            details=details,
        )
    if "features" in body:
        if not isinstance(body["features"], dict):
            raise ValidationError('"features" must be an object of feature name to value',
                                  details=[{"field": "features", "message": "must be an object"}])
        return [body["features"]], True
    rows = body["instances"]
    if not isinstance(rows, list):
        raise ValidationError('"instances" must be an array of objects',
                              details=[{"field": "instances", "message": "must be an array"}])
    if not rows:
        raise ValidationError('"instances" is empty',
                              details=[{"field": "instances", "message": "must not be empty"}])
    if len(rows) > max_rows:
        raise PayloadTooLargeError(
            f'"instances" has {len(rows)} rows; at most {max_rows} per request '
            "(use POST /jobs for files)"
        )
    return rows, False


@dataclass
class Scored:
    """What scoring a request's rows gave: the model's output and the prediction id that
    the prediction log (and so feedback) knows it by."""

    result: Prediction
    labels: list[Any]
    prediction_id: str


# A batch of this many rows is validated and predicted in a native thread under a gevent
# worker (shared.cooperative.off_loop), so the process's other requests are answered meanwhile;
# a smaller one costs less than the hand-off.
OFF_LOOP_ROWS = 1_000
T = TypeVar("T")


def _batch_step(rows: int, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args), a pure step over `rows` rows: off the loop for a large batch."""
    return off_loop(fn, *args) if rows >= OFF_LOOP_ROWS else fn(*args)


def score_rows(rt: Services, loaded: LoadedModel, rows: list[Any],
               single: bool = False) -> Scored:
    """Validate rows and predict, recording metrics, drift and the prediction log: the
    part of the online path every protocol shares."""
    return score_input(rt, loaded, _batch_step(len(rows), loaded.validator.validate, rows,
                                               single))


def score_input(rt: Services, loaded: LoadedModel, X: np.ndarray | pd.DataFrame) -> Scored:
    """Predict on validated input (the validator's answer), recording metrics, drift and
    the prediction log."""
    manifest = loaded.manifest
    started = time.perf_counter()
    try:
        result = _batch_step(len(X), loaded.predict, X)
    except ModelRejectedInputError as exc:
        if len(X) > 1:  # say which rows
            exc.details = [{"row": i, "message": reason} for i, reason in
                           _batch_step(len(X), loaded.refused_rows, X, MAX_DETAILS)]
        raise
    labels = result.labels.tolist()
    prediction_id = new_prediction_id()
    if rt.settings.monitoring:
        record_prediction(manifest, "online", len(X), time.perf_counter() - started)
        rt.drift.observe(manifest, X, result.labels)
        rt.predictions.add(prediction_id, manifest.name, manifest.version, manifest.task,
                           labels)
    return Scored(result, labels, prediction_id)


def payload_sampled(rt: Services) -> bool:
    """Whether this request's inputs and outputs are to be logged (TABSERVE_LOG_PAYLOADS)."""
    return bool(rt.payload_sample_rate) and random.random() < rt.payload_sample_rate


def log_payload(rt: Services, loaded: LoadedModel, prediction_id: str, rows: list[Any],
                outputs: dict[str, Any], sampled: bool | None = None) -> None:
    """Audit-log a request's inputs and outputs, sampled by TABSERVE_LOG_PAYLOADS (or
    already sampled: `sampled`)."""
    if sampled is None:
        sampled = payload_sampled(rt)
    if sampled:
        payload_logger.info("payload %s", prediction_id, extra={
            "prediction_id": prediction_id, "model_version": loaded.manifest.ref,
            "inputs": rows, "outputs": outputs})


def predict_rows(rt: Services, loaded: LoadedModel, rows: list[Any],
                 single: bool) -> dict[str, Any]:
    """Validate rows, predict, and build the JSON response body."""
    manifest = loaded.manifest
    scored = score_rows(rt, loaded, rows, single)
    result, labels, prediction_id = scored.result, scored.labels, scored.prediction_id
    body: dict[str, Any] = {}
    keys = loaded.class_keys
    probabilities = None
    if result.probabilities is not None and keys is not None:
        probabilities = [dict(zip(keys, row, strict=True)) for row in result.probabilities.tolist()]
    if single:
        body["prediction"] = labels[0]
        if probabilities is not None:
            body["probabilities"] = probabilities[0]
        body["prediction_id"] = prediction_id
    else:
        body["predictions"] = labels
        if probabilities is not None:
            body["probabilities"] = probabilities
        body["prediction_ids"] = [f"{prediction_id}.{i}" for i in range(len(labels))]
    body["model"] = {"name": manifest.name, "version": manifest.version}
    log_payload(rt, loaded, prediction_id, rows, {k: v for k, v in body.items() if k != "model"})
    return body
