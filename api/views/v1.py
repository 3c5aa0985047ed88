"""KServe's V1 protocol over REST (shared/online/v1.py): list, ready and predict.

Errors on these routes answer KServe's shape, {"error": "message"}, with the status of the
domain error (the rest of the API keeps its own shape).
"""

from __future__ import annotations

from flask import Blueprint, Response, g, request

from api.errors import register_plain_errors
from api.views import json_response, read_body, runtime
from shared.errors import NotFoundError, UnsupportedMediaTypeError
from shared.models.loading import LoadedModel
from shared.online import v1
from shared.online.predict import parse_limited_json

bp = Blueprint("v1", __name__, url_prefix="/v1")

# KServe reads the body as JSON whatever its type: its docs' `curl -d @input.json` sends
# curl's default form type, and some clients send none.
BODY_TYPES = frozenset({"", "application/json", "application/x-www-form-urlencoded"})


register_plain_errors(bp)


@bp.get("/models")
def list_models() -> Response:
    return json_response(v1.model_names(runtime()))


@bp.get("/models/<name>")
def model_ready(name: str) -> Response:
    return json_response(v1.model_ready(name, load(name)))


@bp.post("/models/<name>:predict")
def predict(name: str) -> Response:
    rt = runtime()
    if request.mimetype not in BODY_TYPES and not request.mimetype.endswith("+json"):
        raise UnsupportedMediaTypeError(f"Content-Type must be application/json, got "
                                        f"{request.mimetype}")
    raw = read_body(request.max_content_length)
    body = parse_limited_json(raw, rt.settings.max_json_depth, rt.settings.max_json_number_chars)
    answer, prediction_id = v1.predict(rt, load(name), body)
    return json_response(answer, headers={"X-Prediction-Id": prediction_id})


@bp.route("/<path:rest>", methods=["GET", "POST"])
def unknown(rest: str) -> Response:
    # In KServe's shape, so that a client's call this server lacks (:explain) fails with a
    # message it can show.
    raise NotFoundError(f"/v1/{rest} is not served: tabserve implements V1's GET /v1/models, "
                        "GET /v1/models/<name> and POST /v1/models/<name>:predict")


def load(name: str) -> LoadedModel:
    """The model NAME, NAME:VERSION or NAME@ALIAS, loaded in this process."""
    loaded = runtime().models.resolve(name)
    g.model_ref = loaded.manifest.ref
    return loaded
