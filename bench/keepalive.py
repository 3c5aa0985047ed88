"""tabserve `/predict` and the hello-world app under the same gunicorn settings, from wrk at
concurrency 16, each with a connection per request and with keep-alive connections, under
gunicorn's worker classes: gthread (tabserve's default), sync (round one's), and gevent (an
event loop per process, in bench/out/gevent-lib, never in the project's virtualenv); rounds
alternate the classes, so drift falls on every one alike.

    .venv/bin/python -m bench.keepalive [--classes gthread gevent sync] [--rounds 2]
                                        [--seconds 8] [--no-write]

Writes the section "Keep-alive and the worker class" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, predict_stack
from bench.loadgen import LoadResult, run_load, wrk_version
from bench.online_report import write_section
from bench.scenarios import HelloServer
from shared.config import Settings
from tests.servers import ApiServer, tabserve_env

TITLE = "## Keep-alive and the worker class: tabserve and hello-world"
GEVENT = "gevent==26.9.0"  # what `pip install gevent` took on 2026-12-02
GEVENT_LIB = Path(__file__).resolve().parent / "out" / "gevent-lib"
CLASSES = {"gthread": "", "sync": "--worker-class sync --threads 1",
           "gevent": "--worker-class gevent"}


def ensure_gevent() -> Path:
    """gevent installed for the benchmark alone (pip --target), outside the virtualenv."""
    if not (GEVENT_LIB / "gevent").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target",
                        str(GEVENT_LIB), GEVENT], check=True)
    return GEVENT_LIB


def class_env(worker_class: str) -> dict[str, str]:
    """The child environment that starts gunicorn with this worker class."""
    env = {"GUNICORN_CMD_ARGS": CLASSES[worker_class]} if CLASSES[worker_class] else {}
    if worker_class == "gevent":
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ensure_gevent()), os.environ.get("PYTHONPATH", "")]))
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", choices=sorted(CLASSES),
                        default=["gthread", "gevent", "sync"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows: list[tuple[int, str, str, str, LoadResult]] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bodies, redis, settings = predict_stack(work)
        try:
            for rnd in range(args.rounds):
                for worker_class in args.classes:
                    rows += _round(rnd + 1, worker_class, work, settings, bodies, args.seconds)
        finally:
            redis.stop()
    text = report(args, rows, load_before, os.getloadavg())
    print(text)
    if not args.no_write:
        write_section(TITLE, text)


def _round(rnd: int, worker_class: str, work: Path, settings: Settings, bodies: Path,
           seconds: float) -> list[tuple[int, str, str, str, LoadResult]]:
    extra = class_env(worker_class)
    api = ApiServer(tabserve_env(settings.as_env(), extra), work, workers=2)
    try:
        hello = HelloServer(work, 2, extra)
    except Exception:
        api.stop()
        raise
    out = []
    try:
        for name, url in (("tabserve /predict", api.url + "/predict"),
                          ("hello-world", hello.url + "/predict")):
            for close in (True, False):
                run_load("wrk", url, bodies, 16, 2, close)  # warm-up
                r = run_load("wrk", url, bodies, 16, seconds, close)
                out.append((rnd, worker_class, name, "close" if close else "keep-alive", r))
                print(out[-1][:4], f"{r.rps:,.0f} req/s", flush=True)
    finally:
        hello.stop()
        api.stop()
        time.sleep(1)
    return out


def report(args: argparse.Namespace, rows: list, load_before: tuple, load_after: tuple) -> str:
    command = (f"python -m bench.keepalive --classes {' '.join(args.classes)} "
               f"--rounds {args.rounds} --seconds {args.seconds:g}")
    lines = [TITLE, "",
             f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Machine: {machine()}; wrk {wrk_version() or '?'}; {GEVENT} for the gevent "
             f"rows. Load average before {load_before[0]:.2f}, after {load_after[0]:.2f}.", "",
             "Both servers run `api/gunicorn_conf.py` (2 workers; tabserve with its defaults: "
             "monitoring, access log, prediction log) with the worker class given by "
             "`GUNICORN_CMD_ARGS`; the demo model, one breast-cancer row per request, wrk at "
             "16 connections, 2 s of warm-up then the measured seconds; rounds alternate the "
             "classes.", "",
             "| round | worker class | server | connections | req/s | p50 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for rnd, cls, name, conn, r in rows:
        lines.append(f"| {rnd} | {cls} | {name} | {conn} | {r.rps:,.0f} | {r.p50_ms:.2f} | "
                     f"{r.p99_ms:.2f} | {r.errors} |")
    lines += ["", "Means over the rounds, and tabserve's share of hello-world under the same "
              "class and connections:", "",
              "| worker class | connections | tabserve req/s | hello-world req/s | share |",
              "|---|---|---|---|---|"]
    for cls in args.classes:
        for conn in ("close", "keep-alive"):
            tab = [r.rps for _, c, n, k, r in rows if c == cls and k == conn and "tabserve" in n]
            hello = [r.rps for _, c, n, k, r in rows if c == cls and k == conn and "hello" in n]
            if tab and hello:
                t, h = statistics.mean(tab), statistics.mean(hello)
                lines.append(f"| {cls} | {conn} | {t:,.0f} | {h:,.0f} | {t / h:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
