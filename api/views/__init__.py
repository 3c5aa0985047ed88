"""Blueprints, one per resource."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, current_app, request

from shared.errors import UnsupportedMediaTypeError
from shared.services import Services


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
    return request.get_data(cache=False)
