"""The Flask app: a thin HTTP adapter over shared/."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, request

from api.downloads import cooperative_files
from api.errors import register_error_handlers
from api.fastpath import ADMITTED, FastScoring, headers_fit
from api.requestlog import install_request_logging
from api.upload import UploadRequest, closing
from shared.config import Settings
from shared.errors import HeaderTooLargeError
from shared.jobs.queue import warm_queue
from shared.logs import configure_logging
from shared.monitoring.metrics import REFUSALS_HELD, QueueCollector, register_collector
from shared.security.gate import Gate
from shared.security.refusals import RefusalThrottle
from shared.security.roles import ANONYMOUS
from shared.services import Services

logger = logging.getLogger(__name__)


class App(Flask):
    """Flask, with its async check made once per function: Flask asks `inspect` whether each
    view and each before- and after-request hook is a coroutine function on every request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        found = self._sync.get(func)
        if found is None:
            found = self._sync[func] = super().ensure_sync(func)
        return found


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app from settings (read from TABSERVE_* when not given)."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    app = App(__name__)
    app.request_class = UploadRequest
    app.wsgi_app = cooperative_files(closing(app.wsgi_app))  # type: ignore[method-assign]
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["MAX_FORM_PARTS"] = settings.max_form_parts
    runtime = Services(settings, fail_fast=True)
    app.extensions["tabserve"] = runtime
    register_error_handlers(app)
    install_request_logging(app, metrics=settings.monitoring, access_log=settings.access_log)
    install_header_limit(app, settings.max_header_bytes)
    install_gate(app, runtime.gate)
    install_refusal_throttle(app, settings)

    from api.views import (
        feedback,
        health,
        jobs,
        metrics,
        mlflow,
        models,
        openapi,
        predict,
        ui,
        v1,
        v2,
    )

    app.register_blueprint(predict.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(feedback.bp)
    app.register_blueprint(mlflow.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(ui.bp)
    register_collector(QueueCollector(runtime.jobs.counts))
    if settings.preload_model:
        runtime.models.warm(settings.default_model)
    warm_queue(runtime.celery)  # the first job's imports, not under other requests' feet
    if settings.online_fast_path:  # plain scoring requests skip Flask (api/fastpath.py)
        app.wsgi_app = FastScoring(runtime, app.wsgi_app)  # type: ignore[method-assign]
    return app


def install_header_limit(app: Flask, limit: int) -> None:
    """A request header longer than `limit` bytes is answered with a JSON 431 naming it."""

    @app.before_request
    def _headers_fit() -> None:
        if headers_fit(request.environ, limit):
            return
        for name, value in request.headers.items():
            size = len(name) + len(value)
            if size > limit:
                raise HeaderTooLargeError(
                    f"request header {name[:64]!r} is {size} bytes; at most {limit} "
                    "(TABSERVE_MAX_HEADER_BYTES)")


def install_gate(app: Flask, gate: Gate) -> None:
    """Every request passes the gate before its view: a route is closed unless it is public
    or its action is one the key's role allows (api.views.ROUTE_ACTIONS)."""
    from api.views import route_action

    if not gate.enabled:
        logger.warning("authentication is off: no API key is configured, so anyone who "
                       "reaches this port may use every endpoint; set TABSERVE_API_KEYS_FILE "
                       "(see docs/security.md)")

        # Everyone is ANONYMOUS (Gate.admit's answer): nothing of the request to look at.
        @app.before_request
        def _admit_anyone() -> None:
            g.principal = ANONYMOUS

        return

    @app.before_request
    def _admit() -> None:
        admitted = request.environ.pop(ADMITTED, None)  # api/fastpath.py asked the gate
        if isinstance(admitted, Exception):
            raise admitted
        g.principal = admitted or gate.admit(request.headers.get("Authorization"),
                                             request.path, route_action())


# A process's threads (TABSERVE_WEB_THREADS) per refusal held at a time: with 64, 8 may wait
# (under gthread 56 threads stay for /predict; under gevent a wait holds a greenlet, and the
# cap bounds how many); with 1 thread (sync workers) nothing is ever held.
THREADS_PER_HELD_REFUSAL = 8


def install_refusal_throttle(app: Flask, settings: Settings) -> None:
    """A refused job submission (4xx) from a client over its bucket is answered late, so a
    client looping on refused uploads cannot take the cores /predict needs
    (shared/security/refusals.py)."""
    throttle = RefusalThrottle(settings.job_refusal_burst, settings.job_refusals_per_second,
                               slots=settings.web_threads // THREADS_PER_HELD_REFUSAL)
    if not throttle.enabled:
        return

    @app.after_request
    def _hold_refusal(response: Response) -> Response:
        if request.endpoint == "jobs.create_job" and 400 <= response.status_code < 500:
            principal = getattr(g, "principal", None)
            client = f"key:{principal.name}" if principal is not None and principal.name \
                else f"addr:{request.remote_addr}"
            if throttle.hold(client):
                REFUSALS_HELD.labels(str(response.status_code)).inc()
        return response
