"""/predict keeps answering whatever other clients do: bodies trickling in at a byte a second,
uploads slower than the minimum rate (a JSON 408, nothing left on disk), long uploads past the
worker timeout, and a hung Redis (SIGSTOPped: /readyz within 1 s, job views a quick JSON 503).

A real gunicorn with two workers and its own redis-server (this module stops it), on loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest.mock import ANY

import orjson
import pytest
import requests

from shared.config import Settings
from shared.redisguard import CircuitBreaker, CircuitOpenError
from tests.servers import ApiServer, RedisServer, tabserve_env, wait_until
from tests.test_monitoring_e2e import scrape, value

MIN_RATE = 64 * 1024
GRACE = 3.0
# Per gunicorn worker: refused submissions at once, then at this rate (shared/security/refusals).
REFUSAL_BURST, REFUSAL_RATE = 2, 10.0


@pytest.fixture(scope="module")
def stack(artifacts_dir, tmp_path_factory) -> Iterator[tuple[ApiServer, RedisServer, Path]]:
    tmp_path = tmp_path_factory.mktemp("isolation")
    redis = RedisServer(tmp_path / "redis")
    data = tmp_path / "data"
    settings = Settings(artifacts_dir=artifacts_dir, data_dir=str(data), redis_url=redis.url,
                        default_model="breast-cancer", worker_metrics_port=0,
                        drift_interval_seconds=0, upload_min_bytes_per_second=MIN_RATE,
                        upload_grace_seconds=GRACE, web_timeout=5,
                        redis_circuit_open_seconds=2.0, job_refusal_burst=REFUSAL_BURST,
                        job_refusals_per_second=REFUSAL_RATE)
    try:
        api = ApiServer(tabserve_env(settings.as_env()), tmp_path, workers=2)
    except Exception:
        redis.stop()
        raise
    yield api, redis, data
    os.kill(redis.pid, signal.SIGCONT)
    api.stop()
    redis.stop()


def predict_latencies(url: str, row: dict, n: int) -> list[float]:
    """n /predict calls one after another; each must answer 200."""
    seconds = []
    with requests.Session() as session:
        for _ in range(n):
            t0 = time.monotonic()
            r = session.post(url + "/predict", json={"features": row}, timeout=5)
            seconds.append(time.monotonic() - t0)
            assert r.status_code == 200, r.text
    return seconds


class Tricklers:
    """`count` connections sending a /predict body a byte a second, reconnecting when cut."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.answers: list[bytes] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{")
        return sock

    def _run(self) -> None:
        socks = [self._open() for _ in range(self.count)]
        while not self._stop.wait(1.0):
            for i, sock in enumerate(socks):
                try:
                    sock.sendall(b" ")
                    self.sent += 1
                except OSError:  # cut off: keep the answer, come back
                    self.answers.append(_read_answer(sock))
                    socks[i] = self._open()
        for sock in socks:
            sock.close()

    def __enter__(self) -> Tricklers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _read_answer(sock: socket.socket) -> bytes:
    sock.settimeout(2)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        pass
    sock.close()
    return b"".join(chunks)


def test_predict_answers_while_50_bodies_trickle(stack, demo_rows):
    api, _, _ = stack
    idle = predict_latencies(api.url, demo_rows[0], 20)
    with Tricklers(api.port, 50) as tricklers:
        wait_until(lambda: tricklers.sent >= 100, 20, "50 trickling connections")
        busy = predict_latencies(api.url, demo_rows[0], 100)
        wait_until(lambda: tricklers.answers, GRACE + 10, "a trickler cut off")
    assert max(busy) < 1.0, (max(idle), max(busy))
    head, _, body = tricklers.answers[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), tricklers.answers[0][:300]
    assert orjson.loads(body)["error"]["code"] == "request_timeout"


def _slow_upload(port: int, body: bytes, content_type: str, rate: int) -> bytes:
    """POST /jobs with `body` sent at `rate` bytes/s; the raw answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode())
    piece = max(rate // 10, 1)
    try:
        for start in range(0, len(body), piece):
            t0 = time.monotonic()
            sock.sendall(body[start:start + piece])
            threading.Event().wait(max(0.1 - (time.monotonic() - t0), 0))  # pace the client
    except OSError:
        pass  # cut off by the server
    return _read_answer(sock)


def _multipart(csv: bytes) -> tuple[bytes, str]:
    boundary = "tabservetestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"in.csv\"\r\nContent-Type: text/csv\r\n\r\n").encode() + csv + \
        f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _csv(rows: list[dict], size: int) -> bytes:
    header = ",".join(rows[0]).encode() + b"\n"
    line = ",".join(str(v) for v in rows[0].values()).encode() + b"\n"
    return header + line * (size // len(line))


@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "raw body"])
def test_an_upload_below_the_minimum_rate_gets_408_and_leaves_nothing(stack, demo_rows,
                                                                     multipart):
    api, _, data = stack
    before = _files(data)
    csv = _csv(demo_rows, 2 * 1024 * 1024)
    body, content_type = _multipart(csv) if multipart else (csv, "text/csv")
    t0 = time.monotonic()
    answer = _slow_upload(api.port, body, content_type, MIN_RATE // 4)
    assert time.monotonic() - t0 < GRACE + 6
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert orjson.loads(payload)["error"]["code"] == "request_timeout"
    wait_until(lambda: _files(data) == before, 5, "the staged upload removed")


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_an_upload_longer_than_the_worker_timeout_is_accepted(stack, demo_rows):
    api, _, _ = stack
    csv = _csv(demo_rows, 3 * MIN_RATE * 8)  # ~8 s at 3x the minimum; web_timeout is 5 s
    body, content_type = _multipart(csv)
    answer = _slow_upload(api.port, body, content_type, 3 * MIN_RATE)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 202"), answer[:500]
    assert orjson.loads(payload)["status"] == "queued"


def test_a_hung_redis_fails_fast_and_predict_keeps_answering(stack, demo_rows):
    api, redis, _ = stack
    assert requests.get(api.url + "/readyz", timeout=5).json()["checks"]["redis"]["status"] \
        == "ok"
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        for _ in range(6):
            t0 = time.monotonic()
            ready = requests.get(api.url + "/readyz", timeout=5)
            assert time.monotonic() - t0 < 1.0
            assert ready.status_code == 200  # the model serves; Redis is the batch path's
            assert ready.json()["checks"]["redis"]["status"] == "unavailable"
        with ThreadPoolExecutor(8) as pool:
            polls = [pool.submit(_poll_job, api.url) for _ in range(8)]
            busy = predict_latencies(api.url, demo_rows[0], 100)
            answers = [p.result() for p in polls]
        assert max(busy) < 1.0
        for status, code, seconds in answers:
            assert (status, code) == (503, "queue_unavailable")
            assert seconds < 1.0
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    wait_until(lambda: requests.get(api.url + "/readyz", timeout=5).json()["checks"]["redis"]
               ["status"] == "ok", 10, "the circuit closed again")


def _poll_job(url: str) -> tuple[int, str, float]:
    """GET /jobs/<id> 20 times; the last answer and the slowest time."""
    slowest, r = 0.0, None
    for _ in range(20):
        t0 = time.monotonic()
        r = requests.get(url + "/jobs/0f0c0d0e-0000-4000-8000-000000000000", timeout=10)
        slowest = max(slowest, time.monotonic() - t0)
    assert r is not None
    return r.status_code, r.json()["error"]["code"], slowest


def test_the_circuit_opens_after_failures_in_a_row_and_lets_one_probe_through():
    now = [0.0]
    breaker = CircuitBreaker(3, 5.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.before_call()
        breaker.record_failure()
    breaker.record_success()  # failures must come in a row
    for _ in range(3):
        breaker.before_call()
        breaker.record_failure()
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    now[0] = 5.0
    assert breaker.state == "half-open"
    breaker.before_call()  # this thread probes; any other fails fast meanwhile
    others: list[BaseException] = []
    thread = threading.Thread(target=lambda: _capture(breaker.before_call, others))
    thread.start()
    thread.join()
    assert [type(e) for e in others] == [CircuitOpenError]
    breaker.record_failure()  # the probe failed: open for another interval
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    now[0] = 10.0
    breaker.before_call()
    breaker.record_success()
    assert breaker.state == "closed"
    breaker.before_call()


def _capture(call, errors: list[BaseException]) -> None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - kept for the assertion
        errors.append(exc)


WIDE_CSV = ",".join(f"c{i}" for i in range(100_000)).encode() + b"\n1\n"


def _refused_upload(url: str) -> int:
    r = requests.post(url + "/jobs", files={"file": ("wide.csv", WIDE_CSV, "text/csv")},
                      timeout=10)
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["error"]["details"][:1] == [{"field": "header", "message": ANY}], r.text
    return r.status_code


def _held(url: str) -> float:
    return value(scrape(url + "/metrics"), "tabserve_job_refusals_held_total",
                 status="422") or 0.0


def test_a_client_looping_on_refused_uploads_is_slowed_and_predict_answers(stack, demo_rows):
    """Each worker lets REFUSAL_BURST refusals of a client go at once, then holds the next
    ones so that no more than REFUSAL_RATE a second go out: 30 refusals in a row take at
    least (30 - 2 workers x burst) / (2 x rate) seconds however fast the machine is; two
    looping clients get no more than that rate between them; /predict answers throughout;
    an accepted upload of the same client is not held."""
    api, _, _ = stack
    # After the hung-Redis test a worker's circuit may still be open, for up to
    # redis_circuit_open_seconds after its last failure; then its next call probes and
    # closes it. Wait that long, then until both workers (connections go to either) answer.
    time.sleep(2.5)
    wait_until(lambda: all(requests.get(api.url + "/jobs?limit=1", timeout=5).status_code
                           == 200 for _ in range(30)), 20, "both workers reaching Redis")
    held_before = _held(api.url)
    start = time.monotonic()
    assert {_refused_upload(api.url) for _ in range(30)} == {422}
    elapsed = time.monotonic() - start
    assert elapsed >= (30 - 2 * REFUSAL_BURST) / (2 * REFUSAL_RATE) * 0.95, elapsed
    assert _held(api.url) > held_before

    stop, counts, errors = threading.Event(), [0, 0], list[BaseException]()

    def flood(i: int) -> None:
        while not stop.is_set():
            assert _refused_upload(api.url) == 422
            counts[i] += 1

    threads = [threading.Thread(target=_capture, args=(lambda i=i: flood(i), errors))
               for i in range(2)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        predict_latencies(api.url, demo_rows[0], 50)  # every one a 200
        threading.Event().wait(max(3.0 - (time.monotonic() - start), 0))
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    elapsed = time.monotonic() - start
    assert not errors, errors
    # The buckets were left empty above; 2 answers may be in flight when `stop` is set.
    assert sum(counts) <= 2 * REFUSAL_RATE * elapsed + 2 * REFUSAL_BURST + 2, (counts, elapsed)

    held = _held(api.url)
    accepted = requests.post(api.url + "/jobs", timeout=10, files={
        "file": ("ok.csv", _csv(demo_rows, 10_000), "text/csv")})
    assert accepted.status_code == 202, accepted.text
    assert _held(api.url) == held
