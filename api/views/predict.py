"""POST /predict: online predictions from the in-process model."""

from __future__ import annotations

from flask import Blueprint, Response, g, request

from api.views import json_body, json_response, runtime
from shared.online.predict import extract_rows, predict_rows

bp = Blueprint("predict", __name__)


@bp.post("/predict")
def predict() -> Response:
    rt = runtime()
    body = json_body()
    rows, single = extract_rows(body, rt.settings.max_online_rows)
    ref = request.args.get("model") if request.query_string else None
    loaded = rt.models.resolve(ref, rt.settings.default_model)
    g.model_ref = loaded.manifest.ref
    return json_response(predict_rows(rt, loaded, rows, single))
