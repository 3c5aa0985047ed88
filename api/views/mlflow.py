"""MLflow's scoring server routes, which are also SageMaker's container contract:
POST /invocations, GET /ping and /health (the default model is ready), GET /version."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.asyncjobs import respond_async
from api.errors import note_domain_error, too_large_message
from api.views import Reply, json_body, json_response, read_body, runtime, to_json
from shared.errors import PayloadTooLargeError, TabserveError, UnsupportedMediaTypeError
from shared.jobs.fromrows import asks_async
from shared.monitoring.health import check_model
from shared.online.mlflow import (
    error_body,
    invoke,
    parse_csv_input,
    parse_json_input,
    tabserve_version,
)
from shared.online.predict import parse_limited_json
from shared.services import Services

logger = logging.getLogger(__name__)

bp = Blueprint("mlflow", __name__)


@bp.post("/invocations")
def invocations() -> Response:
    rt = runtime()
    if request.mimetype not in ("application/json", "text/csv"):
        raise UnsupportedMediaTypeError("Content-Type must be application/json or text/csv, "
                                        f"got {request.mimetype or 'none'}")
    ref = request.args.get("model") if request.query_string else None
    loaded = rt.models.resolve(ref, rt.settings.default_model)
    g.model_ref = loaded.manifest.ref
    params: dict[str, Any] = {}
    if request.mimetype == "text/csv":
        rows = parse_csv_input(read_body(request.max_content_length), loaded)
    else:
        rows, params = parse_json_input(json_body(), loaded.validator.names)
    asked = asks_async(request.environ.get("HTTP_PREFER"))
    if asked or len(rows) > rt.settings.max_online_rows:
        return respond_async(rows, loaded, asked)
    body, prediction_id = invoke(rt, loaded, rows, params)
    return json_response(body, headers={"X-Prediction-Id": prediction_id})


def accepts(mimetype: str, environ: dict[str, Any]) -> bool:
    """Whether api/fastpath.py may answer a request of this content type (JSON; a CSV body
    goes to the view)."""
    return mimetype == "application/json"


def fast(rt: Services, raw: bytes, environ: dict[str, Any], params: tuple[Any, ...]) -> Reply:
    """invocations() for a JSON body already read, without Prefer, with ?model= or no query
    (`params`: (the ref or None,)): its 200 answer, or an error before anything is scored
    (more rows than an online request's go to the view, which runs them as a job)."""
    settings = rt.settings
    loaded = rt.models.resolve(params[0], settings.default_model)
    rows, params_ = parse_json_input(
        parse_limited_json(raw, settings.max_json_depth, settings.max_json_number_chars),
        loaded.validator.names)
    if len(rows) > settings.max_online_rows:
        raise PayloadTooLargeError("a job's worth of rows: the view runs it")
    body, prediction_id = invoke(rt, loaded, rows, params_)
    return Reply(to_json(body), loaded.manifest.ref, headers=(("X-Prediction-Id", prediction_id),))


@bp.get("/ping")
@bp.get("/health")
def ping() -> Response:
    check = check_model(runtime())
    return json_response(check, status=200 if check["status"] == "ok" else 503)


@bp.get("/version")
def version() -> Response:
    return Response(tabserve_version(), mimetype="text/plain")


# Errors on these routes answer in MLflow's shape, with the status tabserve gives them.
@bp.errorhandler(TabserveError)
def _domain_error(exc: TabserveError) -> Response:
    note_domain_error(exc, "online")
    response = json_response(error_body(exc.status, exc.message), exc.status)
    response.headers.update(getattr(exc, "headers", None) or {})
    return response


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(exc: RequestEntityTooLarge) -> Response:
    return json_response(error_body(413, too_large_message()), 413)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    return json_response(error_body(status, exc.description or exc.name), status)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error")
    return json_response(error_body(500, "internal server error"), 500)
