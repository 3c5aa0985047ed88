"""Celery entry point: `celery -A worker.app:celery_app worker` (what `tabserve worker` runs)."""

from __future__ import annotations

from typing import Any

from celery.signals import setup_logging, worker_process_init

from shared.config import Settings
from shared.logs import configure_logging
from shared.queue import make_celery
from shared.runtime import Runtime

settings = Settings.from_env()
celery_app = make_celery(settings)


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    # Connected so that Celery leaves the root logger to us.
    configure_logging(settings.log_level)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """This process's runtime (model cache, job store, storage), built on first use."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(settings)
    return _runtime


@worker_process_init.connect
def _init_process(**_: Any) -> None:
    # A pool child must not share the parent's Redis connections: build its own.
    global _runtime
    _runtime = Runtime(settings)
    if settings.preload_model:
        _runtime.models.warm(settings.default_model)


import worker.tasks  # noqa: E402,F401  (registers the tasks)
