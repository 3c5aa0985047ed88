"""One JSON log line per request, and the X-Request-ID header."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from shared.metrics import record_request

logger = logging.getLogger("tabserve.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def install_request_logging(app: Flask, metrics: bool = True) -> None:
    """Time every request, tag it with a request id, log it once, count it (metrics)."""

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        g.model_ref = None

    @app.after_request
    def _finish(response: Response) -> Response:
        started = g.get("started")
        latency_ms = (time.perf_counter() - started) * 1000 if started else None
        request_id = g.get("request_id") or uuid.uuid4().hex
        response.headers["X-Request-ID"] = request_id
        if metrics and latency_ms is not None:
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            record_request(route, request.method, response.status_code, latency_ms / 1000)
        logger.info(
            "%s %s %d",
            request.method,
            request.path,
            response.status_code,
            extra={
                "request_id": request_id,
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "latency_ms": round(latency_ms, 3) if latency_ms is not None else None,
                "model_version": g.get("model_ref"),
            },
        )
        return response
