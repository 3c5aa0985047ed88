"""The Flask app: a thin HTTP adapter over shared/."""

from __future__ import annotations

import logging

from flask import Flask

from api.errors import register_error_handlers
from api.requestlog import install_request_logging
from api.upload import UploadRequest
from shared.config import Settings
from shared.logs import configure_logging
from shared.monitoring.metrics import QueueCollector, register_collector
from shared.services import Services

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app from settings (read from TABSERVE_* when not given)."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.request_class = UploadRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    runtime = Services(settings, fail_fast=True)
    app.extensions["tabserve"] = runtime
    register_error_handlers(app)
    install_request_logging(app, metrics=settings.monitoring, access_log=settings.access_log)

    from api.views import feedback, health, jobs, metrics, models, predict

    app.register_blueprint(predict.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(feedback.bp)
    register_collector(QueueCollector(runtime.jobs.counts))
    if settings.preload_model:
        runtime.models.warm(settings.default_model)
    return app
