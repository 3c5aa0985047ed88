"""Error handlers: every error, routing errors included, answers the same JSON shape."""

from __future__ import annotations

import json
import logging

import orjson
from flask import Blueprint, Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from shared.diskspace import is_disk_full, storage_full
from shared.errors import TabserveError
from shared.monitoring.metrics import VALIDATION_ERRORS

logger = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, details: list | None = None) -> Response:
    """The one JSON error shape."""
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return _error_json(body, status)


def _error_json(body: dict, status: int, headers: dict[str, str] | None = None) -> Response:
    try:
        payload = orjson.dumps(body)
    except orjson.JSONEncodeError:
        # A message quoting the client's text can hold what orjson refuses (a lone
        # surrogate); the standard encoder escapes it, so the error still goes out as JSON.
        payload = json.dumps(body, default=str).encode()
    return Response(payload, status=status, mimetype="application/json", headers=headers)


def register_plain_errors(bp: Blueprint) -> None:
    """On bp's routes, every error as {"error": "message"} with its status: the shape the
    Open Inference Protocol (V2) and KServe's V1 answer (the rest of the API keeps its own)."""

    @bp.errorhandler(TabserveError)
    def _domain_error(exc: TabserveError) -> Response:
        note_domain_error(exc, "online")
        return _error_json({"error": exc.message}, exc.status, getattr(exc, "headers", None))

    @bp.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if isinstance(exc, RequestEntityTooLarge):
            return _error_json({"error": too_large_message()}, 413)
        return _error_json({"error": exc.description or exc.name}, exc.code or 500)


def note_domain_error(exc: TabserveError, path: str) -> None:
    """Log a server-side error, count a client's invalid input: every handler's first step,
    whatever shape its protocol answers in."""
    if exc.status >= 500:
        logger.error("%s: %s", exc.code, exc.message)
    elif exc.status in (400, 413, 415, 422):
        VALIDATION_ERRORS.labels(exc.code, path).inc()


def register_error_handlers(app: Flask) -> None:
    """Install handlers for domain errors, HTTP errors and anything unexpected."""

    @app.errorhandler(TabserveError)
    def _domain(exc: TabserveError) -> Response:
        note_domain_error(exc, _path_kind())
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        response.headers.update(getattr(exc, "headers", None) or {})
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        return error_response(413, "request_entity_too_large", too_large_message())

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        code = (exc.name or "http_error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(OSError)
    def _os_error(exc: OSError) -> Response:
        # A full disk while a request stages or stores a file: 507, never the generic 500.
        if is_disk_full(exc):
            return _domain(storage_full("the upload"))
        return _unexpected(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")


def _path_kind() -> str:
    return "batch" if request.path.startswith("/jobs") else "online"


def too_large_message() -> str:
    """Which limit a request Werkzeug refused with 413 passed, and the setting that sets it:
    the body's size, or (a multipart body within it) the number of its parts."""
    from api.views import body_limit, runtime

    limit, setting = body_limit()
    # Werkzeug's LimitedStream, if the body was read: bytes read so far (not request.stream,
    # which raises again for a Content-Length over the limit).
    read = getattr(request.__dict__.get("stream"), "_pos", 0)
    within = limit is None or ((request.content_length or 0) <= limit and read < limit)
    if within and request.mimetype == "multipart/form-data":
        parts = runtime().settings.max_form_parts
        return (f"the multipart body has more than {parts} parts (TABSERVE_MAX_FORM_PARTS), "
                "or a form field over 500000 bytes")
    return f"the request body is larger than the limit of {limit} bytes ({setting})"
