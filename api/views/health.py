"""GET /healthz (alive) and GET /readyz (can serve predictions)."""

from __future__ import annotations

from flask import Blueprint, Response

from api.views import json_response, runtime
from shared.monitoring.health import check_readiness

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    report = check_readiness(runtime())
    return json_response(report, status=200 if report["ready"] else 503)
