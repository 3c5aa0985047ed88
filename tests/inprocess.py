"""The API in process (`create_app(settings)`, for its test client) without touching the
test process's logging."""

from __future__ import annotations

import logging

from flask import Flask

from api import create_app
from shared.config import Settings


def inprocess_app(settings: Settings) -> Flask:
    """create_app(settings) with pytest's root-logger handlers and level put back: the app
    sets up JSON logging on the root logger, which would otherwise stay for every later test
    of the process (and hide log lines from caplog)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return create_app(settings)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
