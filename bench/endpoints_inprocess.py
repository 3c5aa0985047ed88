"""The protocol endpoints beside /predict, in process: the Flask app called as WSGI with
prebuilt environs (no server, no sockets), monitoring on as users run it (Prometheus
multiprocess files, drift, the prediction log in a real redis-server), the access log on and
written to /dev/null. One row per request, the bodies bench.protocols sends; the endpoints
interleaved in rounds, so that each ratio to /predict comes from the same minutes; and
bench.hello_app (a bare Flask app) with /predict's body, for /predict's share of it:

    PYTHONPATH=$PWD python -m bench.endpoints_inprocess [requests] [--profile ENDPOINT]

`requests` is per endpoint (split over the rounds). `--profile` runs cProfile over that
endpoint's requests alone and prints the top of its cumulative and own-time tables.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROUNDS = 6
BLOCK = 20  # requests of one endpoint in a row, then the next endpoint's
WARMUP = 300  # requests per endpoint before the timed rounds


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A redis-server on a free loopback port for the run; its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def request_bodies(names: list[str], row: list[float]) -> dict[str, tuple[str, bytes, dict]]:
    """Each endpoint's (path, body, headers) for one row, as bench.protocols (and
    bench.online for /predict) send them."""
    from bench.protocols import V2_BINARY_HEADER, protocol_json_bodies, v2_binary_body

    shapes = protocol_json_bodies(names, row)
    as_json = {"Content-Type": "application/json"}
    v2 = "/v2/models/breast-cancer/versions/1/infer"
    return {
        "predict": ("/predict?model=breast-cancer:1",
                    json.dumps({"features": dict(zip(names, row, strict=True))}).encode(),
                    as_json),
        "invocations-split": ("/invocations?model=breast-cancer:1",
                              json.dumps(shapes["mlflow"]).encode(), as_json),
        "invocations-inputs": ("/invocations?model=breast-cancer:1",
                               json.dumps(shapes["mlflow-inputs"]).encode(), as_json),
        "v2-json": (v2, json.dumps(shapes["v2-json"]).encode(), as_json),
        "v2-binary": (v2, v2_binary_body(row),
                      {"Content-Type": "application/octet-stream",
                       "Inference-Header-Content-Length": str(len(V2_BINARY_HEADER))}),
    }


def environ_of(path: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """A WSGI environ for a POST, as gunicorn would give it (wsgi.input set per call)."""
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(path=path, method="POST", data=body, headers=headers,
                             base_url="http://127.0.0.1:8000")
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    environ.pop("wsgi.input", None)
    return environ


def caller(app: Any, environ: dict[str, Any], body: bytes) -> Callable[[], str]:
    """A call of the app with this request; it returns the status line."""
    status: list[str] = []

    def start_response(line: str, headers: list, exc_info: Any = None) -> None:
        status.append(line)

    def call() -> str:
        status.clear()
        env = dict(environ)
        env["wsgi.input"] = io.BytesIO(body)
        result = app(env, start_response)
        try:
            for _ in result:
                pass
        finally:
            if hasattr(result, "close"):
                result.close()
        return status[0]

    return call


def build_app(root: Path, redis_url: str) -> tuple[Any, list[str], list[list[float]]]:
    """The app with the demo model, monitoring and the access log on (to /dev/null)."""
    from api import create_app
    from shared import logs
    from shared.config import Settings
    from shared.models.store import ModelStore
    from shared.models.training import train_demo

    train_demo(ModelStore(root / "artifacts"))
    settings = Settings(artifacts_dir=root / "artifacts", data_dir=str(root / "data"),
                        monitoring=True, access_log=True, default_model="breast-cancer",
                        redis_url=redis_url, log_level="INFO")
    app = create_app(settings)
    assert logs._handler is not None
    logs._handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 - the run's lifetime
    loaded = app.extensions["tabserve"].models.resolve(None, "breast-cancer")
    from sklearn.datasets import load_breast_cancer

    X = load_breast_cancer().data
    return app, loaded.validator.names, X.tolist()


def measure(app: Any, names: list[str], rows: list[list[float]], requests: int,
            only: list[str] | None = None) -> dict[str, list[list[float]]]:
    """Microseconds per request, per endpoint and round."""
    from bench.hello_app import app as hello_app

    per_row = [request_bodies(names, row) for row in rows[:64]]
    keys = only or [*per_row[0], "hello"]
    calls = {key: [caller(hello_app if key == "hello" else app,
                          environ_of(*bodies["predict" if key == "hello" else key]),
                          bodies["predict" if key == "hello" else key][1])
                   for bodies in per_row]
             for key in keys}
    for key in keys:
        for i in range(WARMUP):
            line = calls[key][i % len(per_row)]()
            assert line.startswith("200"), (key, line)
    times: dict[str, list[list[float]]] = {key: [] for key in keys}
    blocks = max(1, requests // (ROUNDS * BLOCK))
    clock = time.perf_counter_ns
    for _ in range(ROUNDS):
        samples: dict[str, list[float]] = {key: [] for key in keys}
        for b in range(blocks):  # A B C D ... in short blocks; who goes first rotates
            for key in keys[b % len(keys):] + keys[:b % len(keys)]:
                batch, got = calls[key], samples[key]
                for i in range(BLOCK):
                    call = batch[(b * BLOCK + i) % len(batch)]
                    t0 = clock()
                    line = call()
                    got.append((clock() - t0) / 1e3)
                    assert line.startswith("200"), (key, line)
        for key in keys:
            times[key].append(samples[key])
    return times


def report(times: dict[str, list[list[float]]]) -> None:
    base = "predict"
    all_times = {k: sorted(t for rnd in v for t in rnd) for k, v in times.items()}
    base_med = statistics.median(all_times[base])
    print(f"{'endpoint':<20} {'median us':>10} {'p90 us':>8} {'x /predict req/s':>17} "
          f"{'per-round range':>16} {'extra us':>9}")
    for key, ts in all_times.items():
        med = statistics.median(ts)
        p90 = ts[int(len(ts) * 0.9)]
        rounds = [statistics.median(times[base][i]) / statistics.median(rnd)
                  for i, rnd in enumerate(times[key])]
        print(f"{key:<20} {med:>10.1f} {p90:>8.1f} {base_med / med:>17.2f} "
              f"{min(rounds):>7.2f}-{max(rounds):<8.2f} {med - base_med:>9.1f}")
    if "hello" in all_times:
        share = statistics.median(all_times["hello"]) / base_med
        print(f"/predict's share of hello-world's req/s: {share:.0%} (hello-world: "
              "bench.hello_app, a bare Flask app reading the same body)")
    print(f"({ROUNDS} rounds of {len(times[base][0])} requests per endpoint, interleaved)")


def profile(app: Any, names: list[str], rows: list[list[float]], key: str,
            requests: int) -> None:
    import cProfile
    import pstats

    per_row = [request_bodies(names, row) for row in rows[:64]]
    calls = [caller(app, environ_of(*b[key]), b[key][1]) for b in per_row]
    for i in range(WARMUP):
        calls[i % len(calls)]()
    prof = cProfile.Profile()
    prof.enable()
    for i in range(requests):
        calls[i % len(calls)]()
    prof.disable()
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(30)


def main(argv: list[str]) -> None:
    requests = int(argv[0]) if argv and argv[0].isdigit() else 6000
    target = argv[argv.index("--profile") + 1] if "--profile" in argv else None
    root = Path(tempfile.mkdtemp(prefix="bench-endpoints-"))
    metrics_dir = root / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # before prometheus_client loads
    try:
        with redis_server(root) as url:
            app, names, rows = build_app(root, url)
            if target:
                profile(app, names, rows, target, requests)
            else:
                report(measure(app, names, rows, requests))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
