"""The Flask app: a thin HTTP adapter over shared/."""

from __future__ import annotations

import logging

from flask import Flask

from api.errors import register_error_handlers
from api.requestlog import install_request_logging
from shared.config import Settings
from shared.errors import TabserveError
from shared.logs import configure_logging
from shared.runtime import Runtime

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app from settings (read from TABSERVE_* when not given)."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    runtime = Runtime(settings)
    app.extensions["tabserve"] = runtime
    register_error_handlers(app)
    install_request_logging(app)

    from api.views import health, models, predict

    app.register_blueprint(predict.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(health.bp)
    if settings.preload_model:
        _warm(runtime)
    return app


def _warm(runtime: Runtime) -> None:
    # Load the default model now so the first request does not pay for it.
    try:
        runtime.models.resolve(None, runtime.settings.default_model)
    except TabserveError as exc:
        logger.warning("default model not loaded at start: %s", exc.message)
