"""The protocol endpoints of bench.online: its bodies files (JSON lines, per-file headers, hex
bodies) reach a server byte for byte from wrk (post.lua) and from bench/loadgen.py, and each
kind of body is answered 200 and right by a real API, so that a broken body format fails
the suite rather than the benchmark."""

from __future__ import annotations

import asyncio
import pickle
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import requests

from bench.loadgen import LUA, read_bodies, run_python, write_bodies
from bench.protocols import (
    ENDPOINTS,
    V2_BINARY_HEADER,
    check_protocols,
    endpoint_url,
    write_protocol_bodies,
)
from shared.models.loading import read_verified
from shared.models.store import ModelStore

MODEL = "breast-cancer:1"


def test_bodies_files_keep_headers_and_bytes(tmp_path: Path):
    raw = b'{"a":1}\n\x00\xff#\r\n'
    path = write_bodies(tmp_path / "b.txt", ['{"x": 1}', raw, "#not a header"],
                        {"Content-Type": "application/octet-stream", "X-Len": "7"})
    headers, bodies = read_bodies(path)
    assert headers == {"Content-Type": "application/octet-stream", "X-Len": "7"}
    assert bodies == [b'{"x": 1}', raw, b"#not a header"]
    # A file of JSON lines, as every harness wrote them before, reads as it did.
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"x": 1}\n{"x": 2}\n')
    assert read_bodies(plain) == ({"Content-Type": "application/json"},
                                  [b'{"x": 1}', b'{"x": 2}'])


class CaptureServer:
    """Answers every request 200 and keeps what it received (head, body)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v2/models/m/infer"
        self.got: list[tuple[dict[str, str], bytes]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = self._read(conn)
                if request is not None:
                    self.got.append(request)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")

    @staticmethod
    def _read(conn: socket.socket) -> tuple[dict[str, str], bytes] | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None  # wrk's connection test sends nothing
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        fields = dict(line.decode().split(": ", 1) for line in head.split(b"\r\n")[1:])
        headers = {k.lower(): v for k, v in fields.items()}
        while len(body) < int(headers["content-length"]):
            body += conn.recv(65536)
        return headers, body

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("tool", ["wrk", "python"])
def test_load_generators_send_binary_bodies_and_their_headers(tmp_path, demo_data, tool):
    if tool == "wrk" and not shutil.which("wrk"):
        pytest.skip("wrk is not installed")
    names, X = demo_data
    path = write_protocol_bodies(tmp_path, names, X[:20])["v2-binary"]
    expected = [V2_BINARY_HEADER + row.astype("<f8").tobytes() for row in X[:20]]
    assert sum(b"\n" in body for body in expected) > 5  # why the lines are hex
    server = CaptureServer()
    try:
        if tool == "wrk":
            subprocess.run(["wrk", "-t1", "-c1", "-d1s", "-s", str(LUA), server.url, "--",
                            str(path), "close"], check=True, capture_output=True, timeout=30)
        else:
            asyncio.run(run_python(server.url, path, 1, 0.5, True))
    finally:
        server.close()
    assert len(server.got) >= 20
    first = expected.index(server.got[0][1])  # wrk may start at the second body
    for k, (headers, body) in enumerate(server.got):
        assert body == expected[(first + k) % 20], k
        assert headers["content-type"] == "application/octet-stream"
        assert headers["inference-header-content-length"] == str(len(V2_BINARY_HEADER))


@pytest.fixture(scope="module")
def fitted(artifacts_dir):
    store = ModelStore(artifacts_dir)
    return pickle.loads(read_verified(store, store.manifest("breast-cancer", 1)))


def test_each_protocol_body_is_answered_right_by_the_api(api_server, fitted, demo_data,
                                                          tmp_path):
    names, X = demo_data
    bodies = write_protocol_bodies(tmp_path, names, X)
    check_protocols(api_server.url, MODEL, fitted, X, bodies)  # every 57th row of each kind


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed")
def test_wrk_gets_no_error_from_any_protocol_endpoint(api_server, demo_data, tmp_path):
    from bench.loadgen import run_wrk

    names, X = demo_data
    bodies = write_protocol_bodies(tmp_path, names, X[:30])
    for endpoint in ENDPOINTS:
        r = run_wrk(endpoint_url(api_server.url, endpoint, MODEL), bodies[endpoint.bodies],
                    2, 1.0, close=True)
        assert r.requests > 0 and r.errors == 0, (endpoint.key, r)


def test_a_binary_body_without_its_headers_is_refused(api_server, demo_data, tmp_path):
    """What the checks above would see if the file's headers were lost on the way."""
    names, X = demo_data
    v2 = next(e for e in ENDPOINTS if e.key == "v2-binary")
    _, lines = read_bodies(write_protocol_bodies(tmp_path, names, X[:1])["v2-binary"])
    r = requests.post(endpoint_url(api_server.url, v2, MODEL), data=lines[0], timeout=30,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert np.frombuffer(lines[0][len(V2_BINARY_HEADER):], "<f8").tolist() == X[0].tolist()


def _runs(rps: float) -> list:
    from bench.loadgen import LoadResult

    return [LoadResult("wrk", c, 1.0, int(rps), 0, 1.0, 1.0, 2.0, 3.0) for c in (1, 16)]


@pytest.mark.parametrize(("ratios", "passed"), [
    ((0.95, 0.9, 1.0, 0.92), True),
    ((0.95, 0.89, 1.0, 0.92), False),  # one endpoint short is a fail
    ((0.95, 0.9, None, 0.92), None),  # one not measured: no verdict
    ((None, None, None, None), None),
])
def test_protocol_target_needs_each_endpoint_at_09_of_predict(ratios, passed):
    from bench.online_report import checks, report
    from bench.scenarios import Config, Results

    results = Results(models=[("demo", 10.0)])
    results.runs[("demo", "tabserve")] = _runs(1000)
    for endpoint, ratio in zip(ENDPOINTS, ratios, strict=True):
        if ratio is not None:
            results.runs[("demo", endpoint.key)] = _runs(1000 * ratio)
    check = next(c for c in checks(results) if "protocol endpoint" in c.what)
    assert check.passed is passed
    config = Config(3.0, 1.0, [1, 16], 2, True, True, "wrk", 10, 1.0)
    text = report(results, config, "cmd", quick=True)[1]
    assert ("protocol endpoints vs /predict, same API" in text) is any(
        r is not None for r in ratios)


def test_the_target_uses_the_median_of_the_interleaved_rounds_when_they_ran():
    from bench.loadgen import LoadResult
    from bench.protocols import ENDPOINTS
    from bench.protocols_report import protocol_check
    from bench.scenarios import Results

    results = Results(models=[("demo", 3.0)])
    results.runs[("demo", "tabserve")] = [LoadResult("wrk", 16, 1.0, 1000, 0, 1, 1, 1, 1)]
    for e in ENDPOINTS:  # the sweeps, minutes apart: one drifted far below
        results.runs[("demo", e.key)] = [LoadResult("wrk", 16, 1.0, 700, 0, 1, 1, 1, 1)]
    what, measured, _, passed = protocol_check(results, "demo")
    assert passed is False and "interleaved" not in what
    results.protocol_rounds["demo"] = {e.key: [0.95, 0.85, 0.97] for e in ENDPOINTS}
    what, measured, _, passed = protocol_check(results, "demo")
    assert passed is True and "median of 3 interleaved rounds" in what
    assert f"{ENDPOINTS[0].key} 0.95× (0.85-0.97)" in measured
    results.protocol_rounds["demo"][ENDPOINTS[-1].key] = [0.8, 0.95, 0.85]
    assert protocol_check(results, "demo")[3] is False


def test_the_share_of_hello_world_uses_the_median_of_its_interleaved_rounds():
    from bench.loadgen import LoadResult
    from bench.online_report import checks, report
    from bench.scenarios import Config, Results

    def run(rps: float) -> list[LoadResult]:
        return [LoadResult("wrk", 16, 1.0, int(rps), 0, 1, 1, 1, 1)]

    results = Results(models=[("demo", 3.0), ("forest", 3.0)])
    for label in ("demo", "forest"):
        results.runs[(label, "tabserve-keepalive")] = run(600)
    # the sweeps, minutes apart: hello-world measured in a fast minute
    results.runs[("", "hello-keepalive")] = run(1000)
    results.runs[("", "hello-after-keepalive")] = run(1000)

    def share() -> list:
        return [c for c in checks(results) if "hello-world" in c.what]

    demo, forest = share()
    assert demo.passed is False and demo.measured == "60%" and demo.goal == "hello_share"
    assert forest.passed is None and "for reference" in forest.what
    results.hello_rounds["demo"] = [(700, 1000), (650, 1000), (900, 1000), (600, 1000)]
    demo, forest = share()
    assert demo.passed is True and "median of 4 interleaved rounds" in demo.what
    assert demo.measured == "68% (rounds 60%-90%; the sweeps, minutes apart: 60%)"
    assert forest.measured == "60%"  # no rounds for it: the sweeps'
    results.hello_rounds["demo"] = [(600, 1000), (640, 1000), (900, 1000)]
    assert share()[0].passed is False  # median 64%
    config = Config(3.0, 1.0, [16], 2, True, True, "wrk", 10, 1.0)
    text = report(results, config, "cmd", quick=True)[1]
    assert "`/predict` and hello-world in interleaved rounds" in text
    assert "| 3 | 900 | 1,000 | 90% |" in text
