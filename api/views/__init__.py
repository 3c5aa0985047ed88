"""Blueprints, one per resource."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Response, current_app, g, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from shared.errors import PayloadTooLargeError, UnsupportedMediaTypeError
from shared.online.predict import parse_limited_json
from shared.security.roles import ANONYMOUS, Action, Principal, default_action
from shared.services import Services

READ_BYTES = 1024 * 1024
# environ key: the body api/fastpath.py read before the request went on to the app, or the
# error reading it raised (read_body gives or raises it, once).
EARLY_BODY = "tabserve.body"

# The action each route needs, in one table (docs/security.md shows it by role). A route not
# listed needs default_action's: the protocol endpoints predict or read models, anything
# else is for admin keys only, so a new route is closed until it is listed here.
ROUTE_ACTIONS: dict[str, Action] = {
    "predict.predict": Action.PREDICT,
    "mlflow.invocations": Action.PREDICT,
    "mlflow.ping": Action.READ_MODELS,     # public paths (roles.PUBLIC_PATHS), like /healthz
    "mlflow.version": Action.READ_MODELS,
    "feedback.post_feedback": Action.FEEDBACK,
    "models.list_models": Action.READ_MODELS,
    "models.get_model": Action.READ_MODELS,
    "models.put_alias": Action.ADMIN,
    "models.delete_alias": Action.ADMIN,
    "models.promote": Action.ADMIN,
    "jobs.create_job": Action.SUBMIT_JOBS,
    "jobs.delete_job": Action.SUBMIT_JOBS,
    "jobs.list_jobs": Action.READ_JOBS,
    "jobs.get_job": Action.READ_JOBS,
    "jobs.get_result": Action.READ_JOBS,
    "jobs.get_errors": Action.READ_JOBS,
    "metrics.metrics": Action.METRICS,
    "openapi.document": Action.READ_MODELS,  # public paths (roles.PUBLIC_PATHS)
    "openapi.docs": Action.READ_MODELS,
    # The web page and its assets under /static/ui/ are public (roles.PUBLIC_PATHS and
    # PUBLIC_PREFIXES); any other static file needs a key, of any role.
    "ui.index": Action.READ_MODELS,
    "static": Action.READ_MODELS,
    # Open Inference Protocol V2; its health routes are public (roles.PUBLIC_PATHS).
    "v2.infer": Action.PREDICT,
    "v2.server_metadata": Action.READ_MODELS,
    "v2.live": Action.READ_MODELS,
    "v2.ready": Action.READ_MODELS,
    "v2.model_metadata": Action.READ_MODELS,
    "v2.model_ready": Action.READ_MODELS,
    "v2.repository_index": Action.READ_MODELS,
    "v2.load_model": Action.ADMIN,
    "v2.unload_model": Action.ADMIN,
    "v2.unknown": Action.READ_MODELS,
    # KServe's V1 protocol.
    "v1.predict": Action.PREDICT,
    "v1.list_models": Action.READ_MODELS,
    "v1.model_ready": Action.READ_MODELS,
    "v1.unknown": Action.READ_MODELS,
}


def runtime() -> Services:
    """The process's Services."""
    return current_app.extensions["tabserve"]


def route_action() -> Action | None:
    """The action this request needs; None when no route matches (any valid key may then
    learn that it is a 404 or 405)."""
    if request.endpoint is None:
        return None
    return ROUTE_ACTIONS.get(request.endpoint) or default_action(request.method, request.path)


def principal() -> Principal:
    """Who made this request (ANONYMOUS, allowed everything, when authentication is off)."""
    return getattr(g, "principal", None) or ANONYMOUS


def limit_body(limit: int, setting: str) -> None:
    """Cap this request's body at `limit` bytes; a 413 names the setting that says so."""
    request.max_content_length = limit
    g.body_limit = (limit, setting)


def body_limit() -> tuple[int | None, str]:
    """The body limit of this request and the setting it comes from."""
    return getattr(g, "body_limit", (request.max_content_length, "TABSERVE_MAX_BODY_BYTES"))


def json_body() -> Any:
    """The parsed JSON body, within the depth and number-length settings."""
    settings = runtime().settings
    return parse_limited_json(json_body_bytes(), settings.max_json_depth,
                              settings.max_json_number_chars)


def to_json(body: Any) -> bytes:
    """A response body, serialized with orjson (NumPy-aware)."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialize with orjson (NumPy-aware)."""
    payload = to_json(body)
    response = Response(payload, status=status, mimetype="application/json")
    if headers:  # set one by one: Response(headers=...) builds and extends a Headers first
        for name, value in headers.items():
            response.headers[name] = value
    return response


def json_body_bytes() -> bytes:
    """The raw body of a JSON request; 415 for any other content type."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        shown = mimetype or "none"
        raise UnsupportedMediaTypeError(
            f"Content-Type must be application/json, got {shown}"
        )
    return read_body(request.max_content_length)


def read_body(limit: int | None) -> bytes:
    """The request body; 413 when it is longer than `limit` bytes.

    A body with a Content-Length is read straight from the server's stream (paced by
    api/upload.py) in as few reads as it takes, as Werkzeug's get_data would read it, without
    its stream wrappers and copies: 413 before any read when the length is over the limit, a
    400 (ClientDisconnected) when the stream fails. A chunked body has no length: Werkzeug's
    limited stream stops at the limit and returns the truncated prefix, so it is read here
    from the server's stream (gunicorn ends it at the last chunk) until one byte past the
    limit.
    """
    environ = request.environ
    early = environ.pop(EARLY_BODY, None)
    if early is not None:  # read by api/fastpath.py, within this route's limit
        if isinstance(early, Exception):
            raise early
        return early
    length = request.content_length
    if length is not None:
        if limit is not None and length > limit:
            raise RequestEntityTooLarge()
        return read_length(request.input_stream, length,
                           ends_early="wsgi.input_terminated" in environ)
    if limit is None or "wsgi.input_terminated" not in environ:
        return request.get_data(cache=False)
    stream, pieces, total = request.input_stream, list[bytes](), 0
    while total <= limit:
        piece = stream.read(min(READ_BYTES, limit + 1 - total))
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)
        total += len(piece)
    raise PayloadTooLargeError(f"the request body is larger than the limit of {limit} bytes "
                               f"({body_limit()[1]})")


def read_length(stream: Any, length: int, ends_early: bool) -> bytes:
    """`length` bytes of stream, as Werkzeug's LimitedStream reads them: a stream that ends
    sooner gives what it had where the server ends the body itself (`ends_early`, gunicorn's
    wsgi.input_terminated), else a 400; a read that fails is a 400."""
    pieces: list[bytes] = []
    total = 0
    try:
        while total < length:
            piece = stream.read(min(READ_BYTES, length - total))
            if not piece:
                if not ends_early:
                    raise ClientDisconnected()
                break
            pieces.append(piece)
            total += len(piece)
    except (OSError, ValueError):
        raise ClientDisconnected() from None
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


@dataclass(slots=True)
class Reply:
    """A scoring route's 200 answer from its fast twin (api/fastpath.py)."""

    payload: bytes
    model_ref: str
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


# A scoring view's fast twin: (services, body, environ, the route's parameters) -> its 200
# answer; anything it raises sends the request on to the view.
FastAnswer = Callable[[Services, bytes, dict[str, Any], tuple[Any, ...]], Reply]
