"""GET /metrics: Prometheus exposition, summed over this API's gunicorn workers."""

from __future__ import annotations

from flask import Blueprint, Response

from api.views import runtime
from shared.monitoring.metrics import render_metrics, update_disk_metrics, update_process_metrics
from shared.storage import local_dirs

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    update_process_metrics("api")
    update_disk_metrics(local_dirs(runtime().settings))
    payload, content_type = render_metrics()
    return Response(payload, content_type=content_type)
