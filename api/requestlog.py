"""One JSON log line per request, the X-Request-ID header, the security headers every
response carries, and on a scoring answer the model version and worker process that gave it."""

from __future__ import annotations

import os
import re
import time

from flask import Flask, Response, g, request
from werkzeug.datastructures import Headers

from shared.ids import random_hex
from shared.logs import LineLogger
from shared.monitoring.metrics import record_request

access = LineLogger("tabserve.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# The API answers JSON and file downloads: nothing is to be sniffed, framed, run as a script
# or sent on as a referrer. A page (/docs, the web page at /) sets its own policy, which is kept.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}
_SECURITY = [(name, name.lower(), value) for name, value in SECURITY_HEADERS.items()]
# environ key: when api/fastpath.py looked at the request before it went on to the app
STARTED = "tabserve.started"


def request_id(environ: dict) -> str:
    """The client's X-Request-ID when it is a sane one, else a new id."""
    given = environ.get("HTTP_X_REQUEST_ID", "")
    return given if _REQUEST_ID.match(given) else random_hex(16)


def log_request(route: str, method: str, path: str, status: int, latency_ms: float | None,
                rid: str, model_ref: str | None, metrics: bool, access_log: bool) -> None:
    """Count a request answered (metrics) and log its line (access_log)."""
    if metrics and latency_ms is not None:
        record_request(route, method, status, latency_ms / 1000)
    if access_log:
        access.info(f"{method} {path} {status}", {
            "request_id": rid, "method": method, "path": path, "status": status,
            "latency_ms": round(latency_ms, 3) if latency_ms is not None else None,
            "model_version": model_ref})


def install_request_logging(app: Flask, metrics: bool = True, access_log: bool = True) -> None:
    """Time every request, tag it with a request id, log it once (access_log), count it
    (metrics)."""

    @app.before_request
    def _start() -> None:
        environ = request.environ
        g.started = environ.get(STARTED) or time.perf_counter()
        g.request_id = request_id(environ)
        g.model_ref = None

    @app.after_request
    def _finish(response: Response) -> Response:
        # The proxies resolved once: this runs for every request.
        req, ctx = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        started = getattr(ctx, "started", None)
        latency_ms = (time.perf_counter() - started) * 1000 if started else None
        rid = getattr(ctx, "request_id", None) or random_hex(16)
        headers = response.headers
        # Header names the view set, looked at once: each Headers.set or setdefault would
        # scan the list again; a name not there is appended.
        present = {name.lower() for name, _ in headers}
        put(headers, present, "X-Request-ID", rid)
        for name, lower, value in _SECURITY:  # a page (/docs) sets its own policy
            if lower not in present:
                headers.add(name, value)
        model_ref = getattr(ctx, "model_ref", None)
        if model_ref:  # which version answered, and which worker process (during a promote)
            put(headers, present, "X-Model-Version", model_ref)
            put(headers, present, "X-Served-By", str(os.getpid()))
        if req.path.startswith("/jobs"):  # a job's record and files: another key's to see
            put(headers, present, "Cache-Control", "no-store")
        route = req.url_rule.rule if req.url_rule is not None else "unmatched"
        log_request(route, req.method, req.path, response.status_code, latency_ms, rid,
                    model_ref, metrics, access_log)
        return response


def put(headers: Headers, present: set[str], name: str, value: str) -> None:
    """headers[name] = value; appended without a scan where `present` (the lowercased names
    the headers had) does not hold it."""
    if name.lower() in present:
        headers[name] = value
    else:
        headers.add(name, value)
