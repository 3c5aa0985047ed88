"""JSON-lines logging shared by the API and the workers."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

# Request id or job id of the work under way, added to every line logged meanwhile.
log_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "log_context", default=None
)

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


_stamp: tuple[int, str] = (-1, "")  # (second, its text), swapped as one value across threads


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds; the date and time part is formatted once a second."""
    global _stamp
    second, text = _stamp
    if int(created) != second:
        second = int(created)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp = (second, text)
    return f"{text}.{int((created - second) * 1000):03d}Z"


def _entry(created: float, level: str, name: str, message: str) -> dict[str, Any]:
    """The fields every line starts with, then the context of the work under way."""
    entry: dict[str, Any] = {"time": _timestamp(created), "level": level, "logger": name,
                             "message": message}
    context = log_context.get()
    if context:
        entry.update(context)
    return entry


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context and extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record.created, record.levelname.lower(), record.name,
                       record.getMessage())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


# The handler configure_logging installed; LineLogger writes to it directly.
_handler: logging.StreamHandler | None = None  # type: ignore[type-arg]


class LineLogger:
    """INFO lines of one logger, written as the JSON handler would write their records.

    For a line per request, building a LogRecord and passing it down the handler chain
    is a visible share of /predict's time (docs/benchmarks.md); this writes the same JSON
    line straight to the handler's stream, at a fraction of the cost. Whenever logging is set
    up otherwise (other or extra handlers, filters), the line goes through the logger as usual.
    """

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def info(self, message: str, fields: dict[str, Any]) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = _sole_handler(logger)
        if handler is not None:
            entry = _entry(time.time(), "info", logger.name, message)
            entry.update(fields)
            text = orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE).decode()
            try:
                with handler.lock:  # type: ignore[union-attr]
                    handler.stream.write(text)
                    handler.stream.flush()
                return
            except Exception:  # a closed or failing stream: let logging report it
                pass
        logger.info("%s", message, extra=fields)


def _sole_handler(logger: logging.Logger) -> logging.StreamHandler | None:  # type: ignore[type-arg]
    """configure_logging's handler when it alone would handle this logger's INFO records."""
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return None
        if node.handlers:
            handler = _handler
            if node.handlers != [handler] or handler is None or handler.filters \
                    or handler.level > logging.INFO or node.parent is not None:
                return None
            return handler
        node = node.parent if node.propagate else None
    return None


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records, as JSON lines, to stderr."""
    # The JSON lines carry none of the caller's file and line, thread or process names:
    # skip collecting them for every record (the logging docs' "Optimization" switches;
    # the caller lookup walks the stack on each call).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _handler
    handler = _handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
