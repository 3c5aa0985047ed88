"""JSON log lines: the formatter, and the per-request LineLogger that writes the same lines."""

from __future__ import annotations

import io
import logging
import re

import orjson
import pytest

from shared import logs


@pytest.fixture
def json_stream():
    """configure_logging's setup with its stream captured; the previous setup restored."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure_logging("INFO")
    stream = io.StringIO()
    assert logs._handler is not None
    logs._handler.setStream(stream)
    try:
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_line_logger_writes_what_a_record_would(json_stream):
    fields = {"request_id": "r-1", "status": 200, "latency_ms": 1.5, "model_version": None}
    token = logs.log_context.set({"job_id": "j-1"})
    try:
        logging.getLogger("tabserve.access").info("%s", "POST /predict 200", extra=fields)
        logs.LineLogger("tabserve.access").info("POST /predict 200", fields)
    finally:
        logs.log_context.reset(token)
    via_record, direct = lines(json_stream)
    assert set(direct) == set(via_record)
    assert {k: v for k, v in direct.items() if k != "time"} == \
        {k: v for k, v in via_record.items() if k != "time"}
    assert direct["job_id"] == "j-1" and direct["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", direct["time"])
    assert json_stream.getvalue().count("\n") == 2


def test_line_logger_respects_the_level(json_stream):
    logging.getLogger("tabserve.quiet").setLevel(logging.WARNING)
    try:
        logs.LineLogger("tabserve.quiet").info("hidden", {"a": 1})
    finally:
        logging.getLogger("tabserve.quiet").setLevel(logging.NOTSET)
    assert json_stream.getvalue() == ""


def test_line_logger_goes_through_logging_when_set_up_otherwise(json_stream):
    """Another handler (here pytest-style capture) sees the line as a record."""
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    capture = Capture()
    logging.getLogger().addHandler(capture)
    try:
        logs.LineLogger("tabserve.access").info("GET /health 200", {"status": 200})
    finally:
        logging.getLogger().removeHandler(capture)
    assert [r.getMessage() for r in records] == ["GET /health 200"]
    assert records[0].status == 200  # type: ignore[attr-defined]
    assert lines(json_stream)[0]["message"] == "GET /health 200"


def test_timestamp_matches_the_records_milliseconds():
    record = logging.makeLogRecord({"msg": "x"})
    text = logs._timestamp(record.created)
    assert text.endswith(f".{int(record.msecs):03d}Z")
    assert logs._timestamp(1_700_000_000.9996) == "2023-11-14T22:13:20.999Z"
