"""A CSV upload whose header is wider than any model accepts is refused as its first bytes
arrive: the answer does not wait for the rest of the body, says `Connection: close`, and
leaves nothing staged. Units of the guard, then a real gunicorn (the session's api_server)."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import pytest
import requests

from shared.errors import BadRequestError, ValidationError
from shared.jobs.headerguard import HeaderGuard, widest_limit
from shared.jobs.inputs import column_limit
from shared.models.store import ModelStore

WIDE = ",".join(f"c{i}" for i in range(100_000)).encode() + b"\n"


def _write(guard: HeaderGuard, data: bytes, piece: int) -> None:
    for start in range(0, len(data), piece):
        guard.write(data[start:start + piece])


@pytest.mark.parametrize("piece", [1, 7, 64 * 1024])
def test_delimiters_are_counted_across_pieces(piece):
    out = io.BytesIO()
    guard = HeaderGuard(out, max_columns=5, max_line_bytes=1 << 20)
    _write(guard, b"a;b;c;d;e\n1,2,3,4,5,6,7,8,9\n", piece)  # rows may hold more commas
    assert out.getvalue() == b"a;b;c;d;e\n1,2,3,4,5,6,7,8,9\n"
    guard = HeaderGuard(io.BytesIO(), max_columns=5, max_line_bytes=1 << 20)
    with pytest.raises(ValidationError, match="at least 6 columns"):
        _write(guard, b"a|b|c|d|e|f\n1\n", piece)


def test_a_header_longer_than_a_row_may_be_is_refused_before_its_end():
    guard = HeaderGuard(io.BytesIO(), max_columns=10, max_line_bytes=1000)
    with pytest.raises(BadRequestError, match="longer than the limit of 1000 bytes"):
        _write(guard, b"x" * 5000, 100)


def test_the_limit_is_the_widest_model_s(artifacts_dir: Path):
    store = ModelStore(artifacts_dir)
    features = max(len(store.manifest(n, v[-1]).features)
                   for n, v in store.list_models().items())
    assert widest_limit(store, 10) == column_limit(10, features) == 4 * features + 100
    assert widest_limit(store, 50_000) == 50_000


def _refused_early(url: str, head: bytes, body_start: bytes, length: int) -> bytes:
    """Send the request's head and the first bytes of a body of `length` bytes, and read
    the answer without sending the rest."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head % length + body_start)
        answer = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            assert time.monotonic() < deadline, answer
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
        return answer


def _staged(base_settings) -> list[Path]:
    return list(Path(base_settings.data_dir).rglob("*.part"))


def test_a_wide_header_is_answered_before_the_body_ends(api_server, base_settings):
    boundary = b"guardboundary"
    part = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="wide.csv"\r\nContent-Type: text/csv\r\n\r\n')
    head = (b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary="
            + boundary + b"\r\nContent-Length: %d\r\n\r\n")
    start = time.monotonic()
    answer = _refused_early(api_server.url, head, part + WIDE[:256 * 1024], 50 * 1024 * 1024)
    assert time.monotonic() - start < 5  # not the body's 50 MB, nor the slow-body cut-off
    status, _, rest = answer.partition(b"\r\n")
    assert b" 422 " in status, answer[:500]
    assert b"Connection: close" in rest
    assert b"TABSERVE_MAX_INPUT_COLUMNS" in rest
    assert _staged(base_settings) == []


def test_a_wide_header_in_a_raw_body_is_refused_the_same_way(api_server, base_settings):
    head = b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: %d\r\n\r\n"
    answer = _refused_early(api_server.url, head, WIDE[:256 * 1024], 50 * 1024 * 1024)
    assert b" 422 " in answer.partition(b"\r\n")[0], answer[:500]
    assert _staged(base_settings) == []


def test_a_client_sending_the_whole_file_reads_the_answer(api_server, base_settings):
    csv = WIDE + b",".join(b"1" for _ in range(100_000)) + b"\n"
    with requests.Session() as session:
        for _ in range(3):  # the closed connection is not reused
            r = session.post(api_server.url + "/jobs", timeout=30,
                             files={"file": ("wide.csv", csv * 20, "text/csv")})
            assert r.status_code == 422, r.text[:300]
            assert r.headers["Connection"] == "close"
            assert r.json()["error"]["details"][0]["field"] == "header"
    assert _staged(base_settings) == []
    assert requests.get(api_server.url + "/healthz", timeout=10).status_code == 200
