"""api.views.read_body: a body with a Content-Length is read straight from the server's
stream, and answers as Werkzeug's stream wrappers did: every byte in order, 413 before any
read when the length is over the limit, what arrived when the server ends the body early,
400 when the stream fails or (with no server ending it) the body is short."""

from __future__ import annotations

import io
import os

import orjson
import pytest
from werkzeug.test import EnvironBuilder

from api.views import READ_BYTES, read_length
from shared.config import Settings
from tests.inprocess import inprocess_app


class Pieces(io.BytesIO):
    """A stream that hands out at most `most` bytes a read (as PacedInput does), or fails."""

    def __init__(self, data: bytes, most: int, fail: bool = False) -> None:
        super().__init__(data)
        self.most, self.fail = most, fail

    def read(self, size: int | None = -1) -> bytes:
        if self.fail:
            raise OSError("connection reset")
        return super().read(min(self.most, size if size is not None and size >= 0 else
                                self.most))


@pytest.mark.parametrize("most", [1, 700, 64 * 1024, READ_BYTES])
def test_every_byte_comes_out_in_order(most):
    data = os.urandom(2 * READ_BYTES + 123)
    assert read_length(Pieces(data, most), len(data), ends_early=True) == data


def test_a_stream_that_ends_early_gives_what_it_had_where_the_server_ends_bodies():
    assert read_length(Pieces(b"abc", 10), 10, ends_early=True) == b"abc"


def test_a_short_body_is_a_400_where_nothing_ends_it():
    from werkzeug.exceptions import ClientDisconnected

    with pytest.raises(ClientDisconnected):
        read_length(Pieces(b"abc", 10), 10, ends_early=False)


def test_a_failing_stream_is_a_400():
    from werkzeug.exceptions import ClientDisconnected

    with pytest.raises(ClientDisconnected):
        read_length(Pieces(b"abc", 10, fail=True), 3, ends_early=True)


@pytest.fixture(scope="module")
def app(artifacts_dir, redis_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("read-body-data")
    return inprocess_app(Settings(artifacts_dir=artifacts_dir, data_dir=str(data),
                                  redis_url=redis_server.url, max_body_bytes=4096,
                                  access_log=False))


def _call(app, body: bytes, length: int, terminated: bool) -> tuple[str, bytes]:
    environ = EnvironBuilder(path="/predict", method="POST", data=body,
                             headers={"Content-Type": "application/json"}).get_environ()
    environ["CONTENT_LENGTH"] = str(length)
    if terminated:
        environ["wsgi.input_terminated"] = True
    status: list[str] = []
    out = b"".join(app(environ, lambda line, headers, exc_info=None: status.append(line)))
    return status[0], out


@pytest.mark.parametrize("terminated", [True, False])
def test_predict_reads_a_body_of_its_length(app, demo_rows, terminated):
    body = orjson.dumps({"features": demo_rows[0]})
    status, out = _call(app, body, len(body), terminated)
    assert status.startswith("200"), out
    assert orjson.loads(out)["prediction"] in (0, 1)


def test_a_length_over_the_limit_is_a_413_in_the_one_error_shape(app):
    status, out = _call(app, b"{}", 5000, terminated=True)
    assert status.startswith("413")
    error = orjson.loads(out)["error"]
    assert error["code"] == "request_entity_too_large"
    assert "limit of 4096 bytes (TABSERVE_MAX_BODY_BYTES)" in error["message"]


def test_a_short_body_without_a_server_ending_it_is_a_400(app, demo_rows):
    body = orjson.dumps({"features": demo_rows[0]})
    status, out = _call(app, body, len(body) + 10, terminated=False)
    assert status.startswith("400"), out
    assert orjson.loads(out)["error"]["code"] == "bad_request"
