"""POST /predict: online predictions from the in-process model."""

from __future__ import annotations

import sys
from typing import Any

from flask import Blueprint, Response, g, request

from api.asyncjobs import respond_async
from api.views import Reply, json_body, json_response, runtime, to_json
from shared.errors import PayloadTooLargeError
from shared.jobs.fromrows import asks_async
from shared.online.predict import extract_rows, parse_limited_json, predict_rows
from shared.services import Services

bp = Blueprint("predict", __name__)


@bp.post("/predict")
def predict() -> Response:
    rt = runtime()
    body = json_body()
    ref = request.args.get("model") if request.query_string else None
    try:
        rows, single = extract_rows(body, rt.settings.max_online_rows)
    except PayloadTooLargeError:  # more rows than the online limit: run them as a job
        rows = extract_rows(body, sys.maxsize)[0]
        return respond_async(rows, rt.models.resolve(ref, rt.settings.default_model),
                             asks_async(request.environ.get("HTTP_PREFER")))
    loaded = rt.models.resolve(ref, rt.settings.default_model)
    g.model_ref = loaded.manifest.ref
    prefer = request.environ.get("HTTP_PREFER")  # a dict look-up: the hot path's only cost
    if prefer is not None and asks_async(prefer):
        return respond_async(rows, loaded, asked=True)
    return json_response(predict_rows(rt, loaded, rows, single))


def accepts(mimetype: str, environ: dict[str, Any]) -> bool:
    """Whether api/fastpath.py may answer a request of this content type (json_body's)."""
    return mimetype == "application/json" or mimetype.endswith("+json")


def fast(rt: Services, raw: bytes, environ: dict[str, Any], params: tuple[Any, ...]) -> Reply:
    """predict() for a body already read, without Prefer, with ?model= or no query
    (`params`: (the ref or None,)): its 200 answer, or an error before anything is
    scored."""
    settings = rt.settings
    body = parse_limited_json(raw, settings.max_json_depth, settings.max_json_number_chars)
    rows, single = extract_rows(body, settings.max_online_rows)
    loaded = rt.models.resolve(params[0], settings.default_model)
    return Reply(to_json(predict_rows(rt, loaded, rows, single)), loaded.manifest.ref)
