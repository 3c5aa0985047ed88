"""Blueprints, one per resource."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, current_app, request

from shared.errors import PayloadTooLargeError, UnsupportedMediaTypeError
from shared.services import Services

READ_BYTES = 1024 * 1024


def runtime() -> Services:
    """The process's Services."""
    return current_app.extensions["tabserve"]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialize with orjson (NumPy-aware)."""
    payload = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(payload, status=status, mimetype="application/json", headers=headers)


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

    A body with a Content-Length over the limit is refused before it is read (Werkzeug).
    A chunked body has no length: Werkzeug's limited stream stops at the limit and returns
    the truncated prefix, so it is read here from the server's stream (gunicorn ends it at
    the last chunk) until one byte past the limit.
    """
    if limit is None or request.content_length is not None or \
            "wsgi.input_terminated" not in request.environ:
        return request.get_data(cache=False)
    stream, pieces, total = request.input_stream, list[bytes](), 0
    while total <= limit:
        piece = stream.read(min(READ_BYTES, limit + 1 - total))
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)
        total += len(piece)
    raise PayloadTooLargeError(f"the request body is larger than the limit of {limit} bytes")
