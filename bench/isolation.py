"""/predict while other clients misbehave: a steady /predict rate, measured in phases, each
beside one disruption; then /predict throughput of the gevent workers (the default) against
gthread and sync ones.

    .venv/bin/python -m bench.isolation [--duration 15] [--rate 100] [--no-write]

Phases (tabserve's defaults, 2 gunicorn workers, a local redis-server, no Celery worker):
idle; (a) 50 connections trickling a /predict body at 1 byte/s, reconnecting when cut off;
(b) 10 multipart uploads of a 6 MB CSV at 300 KB/s each, one after another per client;
(c) Redis SIGSTOPped for 30 s while 8 clients poll GET /jobs/<id>; (d) 2 clients posting a
CSV whose header has 100,000 columns, back to back; (e) 2 clients posting the largest /predict
batch (TABSERVE_MAX_ONLINE_ROWS, 1,000 rows), back to back; (f) 1 client uploading the
1M-row demo CSV (556 MiB) with tabserve_client as fast as loopback allows, back to back, each
job then cancelled and deleted (no worker runs); (g) 1 client downloading that file's result
(scored first by a `tabserve worker`, stopped before the phase) again and again. The
disruptions run in a child process, the /predict client (4 threads, open loop, keep-alive,
5 s timeout) in this one. Writes (or replaces) its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from sklearn.datasets import load_breast_cancer

from bench.common import demo_file, machine
from bench.goals import record
from bench.loadgen import run_load, wrk_version
from bench.online_report import DOCS, write_section
from shared.config import Settings
from shared.models.store import ModelStore
from shared.models.training import train_demo
from tests.servers import ApiServer, RedisServer, tabserve_env, wait_until

TITLE = "/predict isolation: slow clients, large uploads, a hung Redis, wide headers"
CLIENT_THREADS = 4
UPLOAD_BYTES = 6 * 1024 * 1024
UPLOAD_RATE = 300 * 1000
REDIS_STOP_SECONDS = 30.0
BATCH_ROWS = Settings.model_fields["max_online_rows"].default  # the largest /predict batch
LARGE_UPLOAD_ROWS = 1_000_000  # phase (f)'s file: bench.common's demo CSV
# Above this 1-minute load average at the end of the idle phase (2 cores), other work slowed
# the idle baseline itself: a p99 ratio against it says nothing.
BUSY_LOAD = 2.5


@dataclass
class Phase:
    name: str
    seconds: float
    latencies: list[float]
    errors: int
    side: dict[str, int]  # what the disruptive clients got: status (or error) -> count
    load: float  # the machine's 1-minute load average at the end
    # CPU used during the /predict load, in cores: the API answering /predict, the /predict
    # client (this process), the disruption (its clients, and an upload pool if any)
    cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _features() -> list[dict[str, float]]:
    data = load_breast_cancer()
    return [dict(zip(map(str, data.feature_names), row.tolist(), strict=True))
            for row in data.data[:100]]


def steady_predict(url: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """/predict at `rate` requests/s for `seconds`, from CLIENT_THREADS keep-alive clients."""
    rows = _features()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        session = requests.Session()
        interval = CLIENT_THREADS / rate
        start = time.monotonic() + k * interval / CLIENT_THREADS
        for i in range(int(seconds / interval)):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.monotonic()
            try:
                ok = session.post(url + "/predict", json={"features": rows[i % len(rows)]},
                                  timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                if ok:
                    latencies.append(time.monotonic() - t0)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENT_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0]


# Disruptions: each runs in a child process until `stop` is set, and counts what it got.

def _count(side: dict[str, int], key: object) -> None:
    side[str(key)] = side.get(str(key), 0) + 1


def trickle(port: int, stop: mp.Event, side: dict[str, int]) -> None:
    """50 connections sending a /predict body a byte a second; reopened when cut off."""
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{")

    def opened() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(head)
        return sock

    socks = [opened() for _ in range(50)]
    while not stop.wait(1.0):
        for i, sock in enumerate(socks):
            try:
                sock.sendall(b" ")
            except OSError:
                _count(side, _status_of(sock))
                sock.close()
                socks[i] = opened()
    for sock in socks:
        sock.close()


def _status_of(sock: socket.socket, timeout: float = 1.0) -> str:
    """The status code of the answer on sock, or "cut" when none comes within timeout."""
    sock.settimeout(timeout)
    try:
        line = sock.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
        return line.split(" ")[1] if line.startswith("HTTP/") else "cut"
    except OSError:
        return "cut"


def uploads(port: int, stop: mp.Event, side: dict[str, int]) -> None:
    """10 clients, each uploading a 6 MB CSV at 300 KB/s, again and again."""
    data = load_breast_cancer()
    header = ",".join(map(str, data.feature_names)).encode() + b"\n"
    line = ",".join(map(str, data.data[0])).encode() + b"\n"
    csv = header + line * (UPLOAD_BYTES // len(line))
    boundary = "benchboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"in.csv\"\r\nContent-Type: text/csv\r\n\r\n").encode() + csv + \
        f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()

    def client() -> None:
        while not stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                sock.sendall(head)
                piece = UPLOAD_RATE // 10
                for start in range(0, len(body), piece):
                    if stop.is_set():
                        break
                    t0 = time.monotonic()
                    sock.sendall(body[start:start + piece])
                    time.sleep(max(0.1 - (time.monotonic() - t0), 0))
                else:  # the checks of a 6 MB CSV take a while on a busy machine
                    _count(side, _status_of(sock, 30.0))
                sock.close()
            except OSError as exc:
                _count(side, type(exc).__name__)

    _threads(client, 10, stop)


def poll_jobs(url: str, stop: mp.Event, side: dict[str, int]) -> None:
    """8 clients polling GET /jobs/<id> every 0.1 s."""
    def client() -> None:
        session = requests.Session()
        while not stop.wait(0.1):
            try:
                r = session.get(url + "/jobs/0f0c0d0e-0000-4000-8000-000000000000", timeout=10)
                _count(side, r.status_code)
            except requests.RequestException as exc:
                _count(side, type(exc).__name__)

    _threads(client, 8, stop)


def wide_headers(url: str, stop: mp.Event, side: dict[str, int]) -> None:
    """2 clients posting a CSV whose header has 100,000 columns, back to back."""
    header = ",".join(f"c{i}" for i in range(100_000)).encode() + b"\n"
    csv = header + b",".join(b"1" for _ in range(100_000)) + b"\n"

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(url + "/jobs", files={"file": ("wide.csv", csv, "text/csv")},
                                 timeout=30)
                _count(side, r.status_code)
            except requests.RequestException as exc:
                _count(side, type(exc).__name__)

    _threads(client, 2, stop)


def large_batches(url: str, stop: mp.Event, side: dict[str, int]) -> None:
    """2 clients posting /predict batches of the most rows a request may hold, back to back:
    a batch of 1,000 rows or more is scored off the event loop (shared.cooperative)."""
    import json

    rows = _features()
    body = json.dumps({"instances": [rows[i % len(rows)] for i in range(BATCH_ROWS)]}).encode()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(url + "/predict", data=body, timeout=30,
                                 headers={"Content-Type": "application/json"})
                _count(side, r.status_code)
            except requests.RequestException as exc:
                _count(side, type(exc).__name__)

    _threads(client, 2, stop)


def large_uploads(url: str, path: str, stop: mp.Event, side: dict[str, int]) -> None:
    """1 client uploading a large CSV as fast as it can, with the project's client (as
    `tabserve score` does), again and again; each job is cancelled, then deleted with its
    file, so that the disk does not fill (no worker scores them)."""
    from tabserve_client import Client, TabserveError

    with Client(url, timeout=600) as client:
        while not stop.is_set():
            try:
                job = client.submit_job(Path(path))
                _count(side, 202)
                client.cancel(job.id)  # queued: cancelled
                client.cancel(job.id)  # finished: deleted with its files
            except TabserveError as exc:
                _count(side, exc.status or type(exc).__name__)
            except requests.RequestException as exc:
                _count(side, type(exc).__name__)


def downloads(url: str, job_id: str, stop: mp.Event, side: dict[str, int]) -> None:
    """1 client downloading a job's result as fast as it can, again and again."""
    session = requests.Session()
    while not stop.is_set():
        try:
            with session.get(f"{url}/jobs/{job_id}/result", stream=True, timeout=60) as r:
                for _ in r.iter_content(1 << 20):
                    pass
            _count(side, r.status_code)
        except requests.RequestException as exc:
            _count(side, type(exc).__name__)


def _scored_job(api: ApiServer, work: Path, redis: RedisServer, path: Path) -> str:
    """A job of `path`, scored by a worker started for it and stopped once it is done."""
    from tabserve_client import Client
    from tests.jobclient import wait_job
    from tests.servers import WorkerProcess

    worker = WorkerProcess(tabserve_env(_settings(work, redis).as_env()), work, "isolation")
    try:
        with Client(api.url, timeout=600) as client:
            job_id = client.submit_job(path).id
        assert wait_job(api.url, job_id, timeout=600, interval=0.5)["status"] == "succeeded"
        return job_id
    finally:
        worker.stop()


def _threads(client: Callable[[], None], n: int, stop: mp.Event) -> None:
    threads = [threading.Thread(target=client, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(timeout=35)


def session_cpu(sid: int) -> float:
    """CPU seconds used so far by the live processes of session `sid` (a server started in
    its own session: its master and workers)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    total += process_cpu(int(entry))
            except OSError:
                continue  # gone meanwhile
    return total


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system, all threads) used so far by process `pid`."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_phase(name: str, api: ApiServer, target: Callable | None, args: tuple, rate: float,
              seconds: float, settle: float = 3.0,
              around: tuple[Callable[[], None], Callable[[], None]] | None = None,
              pool: ApiServer | None = None) -> Phase:
    """The steady /predict load for `seconds` beside one disruption, after `settle` s of it
    (`pool`: a second API the disruption talks to, its CPU counted with the disruption's)."""
    manager = mp.Manager()
    side = manager.dict()
    stop = mp.Event()
    child = mp.Process(target=_disrupt, args=(target, args, stop, side)) if target else None
    if child:
        child.start()
        time.sleep(settle)
    if around:
        around[0]()

    def other() -> float:
        return (process_cpu(child.pid) if child and child.pid else 0.0) + (
            session_cpu(pool.pid) if pool else 0.0)

    cpu0 = (session_cpu(api.pid), time.process_time(), other(), time.monotonic())
    try:
        latencies, errors = steady_predict(api.url, rate, seconds)
        took = time.monotonic() - cpu0[3]
        cpu = ((session_cpu(api.pid) - cpu0[0]) / took, (time.process_time() - cpu0[1]) / took,
               (other() - cpu0[2]) / took)
    finally:
        if around:
            around[1]()
        stop.set()
        if child:
            child.join(timeout=60)
            if child.is_alive():
                child.kill()
    result = Phase(name, seconds, latencies, errors, dict(side), os.getloadavg()[0], cpu)
    manager.shutdown()
    print(name, _row(result, None), flush=True)
    return result


def _disrupt(target: Callable, args: tuple, stop: mp.Event, side: dict) -> None:
    counts: dict[str, int] = {}
    syncer = threading.Thread(target=_sync_counts, args=(counts, side, stop), daemon=True)
    syncer.start()
    target(*args, stop, counts)
    side.update(counts)


def _sync_counts(counts: dict[str, int], side: dict, stop: mp.Event) -> None:
    while not stop.wait(1.0):
        side.update(dict(counts))


def _row(phase: Phase, idle_p99: float | None) -> str:
    ms = np.asarray(phase.latencies) * 1e3 if phase.latencies else np.zeros(1)
    p50, p99 = np.percentile(ms, [50, 99])
    ratio = f"{p99 / idle_p99:.2f}" if idle_p99 else "1.00"
    side = ", ".join(f"{k}: {v}" for k, v in sorted(phase.side.items())) or "-"
    cpu = " | ".join(f"{c:.2f}" for c in phase.cpu)
    return (f"| {phase.name} | {len(phase.latencies) + phase.errors} | {phase.errors} | "
            f"{p50:.2f} | {p99:.2f} | {ms.max():.1f} | {ratio} | {phase.load:.1f} | {cpu} | "
            f"{side} |")


def throughput(work: Path, redis: RedisServer, seconds: float) -> list[str]:
    """Closed-loop /predict req/s at 16 connections: gevent and gthread (keep-alive, close),
    sync."""
    tool = "wrk" if wrk_version() else "python"
    bodies = work / "bodies.jsonl"
    import json

    bodies.write_text("".join(json.dumps({"features": f}) + "\n" for f in _features()))
    lines = []
    for label, cls, threads, close in (
            ("gevent (the default), keep-alive", "gevent", 64, False),
            ("gevent (the default), Connection: close", "gevent", 64, True),
            ("gthread, keep-alive", "gthread", 64, False),
            ("gthread, Connection: close", "gthread", 64, True),
            ("sync (gthread, web_threads=1), Connection: close", "gthread", 1, True)):
        settings = _settings(work, redis).with_overrides(web_worker_class=cls,
                                                         web_threads=threads)
        api = ApiServer(tabserve_env(settings.as_env()), work, workers=2)
        try:
            run_load(tool, api.url + "/predict", bodies, 16, 2, close)  # warm-up
            r = run_load(tool, api.url + "/predict", bodies, 16, seconds, close)
        finally:
            api.stop()
        lines.append(f"| {label} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
                     f"{r.errors} |")
        print(lines[-1], flush=True)
    return lines


def _settings(work: Path, redis: RedisServer) -> Settings:
    return Settings(artifacts_dir=work / "artifacts", data_dir=str(work / "data"),
                    redis_url=redis.url, worker_metrics_port=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=100.0, help="/predict requests/s")
    parser.add_argument("--redis-stop", type=float, default=REDIS_STOP_SECONDS,
                        help="seconds Redis stays stopped in phase (c)")
    parser.add_argument("--throughput-seconds", type=float, default=10.0)
    parser.add_argument("--phases", default="idle,a,b,c,d,e,f,g",
                        help="comma-separated phases to run (idle is always run first): a, "
                        "b, c, d, e, f, g; b2 and b3: the uploads of (b) to a second API process "
                        "(b3: at nice 10)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tabserve-isolation-"))
    train_demo(ModelStore(work / "artifacts"))
    redis = RedisServer(work / "redis")
    try:
        api = ApiServer(tabserve_env(_settings(work, redis).as_env()), work, workers=2)
        try:
            phases = _phases(api, redis, args.rate, args.duration, args.redis_stop,
                             set(args.phases.split(",")), work)
        finally:
            os.kill(redis.pid, signal.SIGCONT)
            api.stop()
        speed = throughput(work, redis, args.throughput_seconds) \
            if args.throughput_seconds > 0 else []
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    text = _report(args, phases, speed)
    print(text)
    if not args.no_write:
        add_to_section(f"## {TITLE}", text)
        record_goal(args, phases)


def record_goal(args: argparse.Namespace, phases: list[Phase]) -> None:
    """This run's row of issue 18's table (bench.goals): phase (b) against idle."""
    uploads = next((p for p in phases if p.name.startswith("(b) ")), None)
    if uploads is None or phases[0].name != "idle":
        return
    idle, p99 = (float(np.percentile(np.asarray(p.latencies) * 1e3, 99))
                 for p in (phases[0], uploads))
    busy = phases[0].load > BUSY_LOAD
    record("uploads", f"p99 {p99 / idle:.2f}× ({p99:.1f} ms against {idle:.1f}), "
           f"{uploads.errors} errors", None if busy else p99 <= 2 * idle and not uploads.errors,
           f"python -m bench.isolation --phases {args.phases}",
           f"load average {phases[0].load:.1f} at idle: not judged" if busy else "")


def add_to_section(title: str, text: str) -> None:
    """Add this run at the end of the section (earlier runs stay: the history), or write
    the section when there is none."""
    existing = DOCS.read_text() if DOCS.exists() else ""
    lines = existing.rstrip("\n").split("\n")
    if title not in lines:
        write_section(title, text)
        return
    start = lines.index(title)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    run = text.rstrip("\n").split("\n")
    run[0] = "### Run of " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    while end > start and not lines[end - 1].strip():
        end -= 1
    lines[end:end] = ["", *run] + ([""] if end < len(lines) else [])
    DOCS.write_text("\n".join(lines) + "\n")


def _phases(api: ApiServer, redis: RedisServer, rate: float, seconds: float,
            redis_stop: float, wanted: set[str], work: Path) -> list[Phase]:
    requests.post(api.url + "/predict", json={"features": _features()[0]}, timeout=30)
    hang = (lambda: os.kill(redis.pid, signal.SIGSTOP),
            lambda: os.kill(redis.pid, signal.SIGCONT))
    phases = [run_phase("idle", api, None, (), rate, seconds)]
    if "a" in wanted:
        phases.append(run_phase("(a) 50 bodies at 1 byte/s", api, trickle, (api.port,), rate,
                                seconds))
    if "b" in wanted:
        phases.append(run_phase("(b) 10 uploads at 300 KB/s", api, uploads, (api.port,), rate,
                                seconds + 5))
    for key, label, nice in (("b2", "(b2) the same uploads to a separate upload pool", 0),
                             ("b3", "(b3) the same, upload pool at nice 10", 10)):
        if key in wanted:
            phases.append(_to_upload_pool(label, api, work, redis, nice, rate, seconds + 5))
    if "c" in wanted:
        phases.append(run_phase("(c) Redis stopped, 8 pollers", api, poll_jobs, (api.url,),
                                rate, redis_stop, settle=1.0, around=hang))
        _after_redis(api)
    if "d" in wanted:
        phases.append(run_phase("(d) 100,000-column headers", api, wide_headers, (api.url,),
                                rate, seconds))
    if "e" in wanted:
        phases.append(run_phase(f"(e) {BATCH_ROWS:,}-row /predict batches", api,
                                large_batches, (api.url,), rate, seconds))
    big = demo_file(LARGE_UPLOAD_ROWS, "csv") if wanted & {"f", "g"} else None
    if "f" in wanted and big:
        phases.append(run_phase(f"(f) {big.stat().st_size / 2**20:,.0f} MiB CSV uploads, "
                                "back to back", api, large_uploads, (api.url, str(big)), rate,
                                seconds))
    if "g" in wanted and big:
        job_id = _scored_job(api, work, redis, big)
        size = requests.get(f"{api.url}/jobs/{job_id}", timeout=10).json()["output"][
            "size_bytes"]
        phases.append(run_phase(f"(g) {size / 2**20:,.0f} MiB result downloads, back to back",
                                api, downloads, (api.url, job_id), rate, seconds))
    return phases


def _to_upload_pool(label: str, api: ApiServer, work: Path, redis: RedisServer, nice: int,
                    rate: float, seconds: float) -> Phase:
    """Phase (b) with the uploads sent to a second `tabserve api` (one gunicorn worker) on
    the same machine and Redis, as a front proxy routing POST /jobs elsewhere would do:
    /predict's processes then share the CPU with the uploads, not the interpreter."""
    pool = ApiServer(tabserve_env(_settings(work, redis).as_env()), work, workers=1)
    try:
        if nice:
            os.setpriority(os.PRIO_PGRP, pool.pid, nice)  # its session: every process of it
        return run_phase(label, api, uploads, (pool.port,), rate, seconds, pool=pool)
    finally:
        pool.stop()


def _after_redis(api: ApiServer) -> None:
    """Wait for every API worker's circuit to close again (a probe after the open interval):
    ten readiness answers in a row, on new connections spread over the workers, see Redis."""
    in_a_row = [0]

    def redis_ok() -> bool:
        ok = requests.get(api.url + "/readyz", timeout=5).json()["checks"]["redis"]["status"]
        in_a_row[0] = in_a_row[0] + 1 if ok == "ok" else 0
        return in_a_row[0] >= 10

    wait_until(redis_ok, 30, "Redis back", interval=0.2)


def _report(args: argparse.Namespace, phases: list[Phase], speed: list[str]) -> str:
    idle_p99 = float(np.percentile(np.asarray(phases[0].latencies) * 1e3, 99))
    worst = max(float(np.percentile(np.asarray(p.latencies) * 1e3, 99)) for p in phases)
    errors = sum(p.errors for p in phases)
    lines = [f"## {TITLE}", "",
             f"Command: `python -m bench.isolation --duration {args.duration:g} --rate "
             f"{args.rate:g} --redis-stop {args.redis_stop:g} --phases {args.phases}` "
             f"({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {machine()}. Server, load and disruptions share the two cores, with "
             "whatever else runs (the load average column: 2.0 is both cores busy).", "",
             f"tabserve's defaults (gevent workers, body minimum "
             f"64 KiB/s after 10 s, Redis calls 0.5 s and a circuit after 3 failures), "
             f"2 gunicorn workers. /predict: {args.rate:g} requests/s, open loop, from "
             f"{CLIENT_THREADS} keep-alive clients (5 s timeout), one breast-cancer row each; "
             "each disruption runs a few seconds before the /predict load starts and until it "
             "ends. Errors: any answer but 200, or no answer within 5 s.", "",
             "CPU columns, in cores, during the /predict load: the API answering /predict (all "
             "its processes), the /predict client, the disruption (its clients, and in (b2) "
             "and (b3) the upload pool).", "",
             "| phase | /predict requests | errors | p50 ms | p99 ms | max ms | p99 / idle p99 "
             "| load avg | API CPU | client CPU | disruption CPU | the disruptive clients got |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(p, idle_p99) for p in phases]
    busy = phases[0].load > BUSY_LOAD
    verdict = ("NOT JUDGED: the machine was busy (load average "
               f"{phases[0].load:.1f} at idle), so idle itself was slowed"
               if busy else 'PASS' if worst <= 2 * idle_p99 else 'FAIL')
    lines += ["", f"- every /predict answered: {'PASS' if errors == 0 else 'FAIL'} "
              f"({errors} errors); p99 within 2x of idle in every phase: {verdict} "
              f"(worst {worst:.2f} ms against {idle_p99:.2f} ms)"]
    if speed:
        lines += ["", f"Closed-loop throughput, 16 connections, {args.throughput_seconds:g} s, "
                  "2 workers (the cost of threads):",
                  "", "| workers | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|",
                  *speed]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
