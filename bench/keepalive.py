"""tabserve `/predict` and the hello-world app under the same gunicorn settings, from wrk at
concurrency 16, each with a connection per request and with keep-alive connections, under
gunicorn worker classes: gevent (tabserve's default, api/gevent_worker.py: keep-alive
connections take turns), gevent-gunicorn (gunicorn's own gevent worker), gthread
(`TABSERVE_WEB_WORKER_CLASS=gthread`, the default before) and sync (round one's); rounds
alternate the classes, so drift falls on every one alike.

    .venv/bin/python -m bench.keepalive [--classes gevent gevent-gunicorn gthread sync]
                                        [--rounds 2] [--seconds 8] [--no-write]

Writes the section "Keep-alive and the worker class" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
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
# class -> the child environment that starts gunicorn with it (api/gunicorn_conf.py reads
# TABSERVE_WEB_WORKER_CLASS; GUNICORN_CMD_ARGS overrides it)
CLASSES = {
    "gevent": {"TABSERVE_WEB_WORKER_CLASS": "gevent"},
    "gevent-gunicorn": {"GUNICORN_CMD_ARGS": "--worker-class gevent"},
    "gthread": {"TABSERVE_WEB_WORKER_CLASS": "gthread"},
    "sync": {"TABSERVE_WEB_WORKER_CLASS": "gthread",
             "GUNICORN_CMD_ARGS": "--worker-class sync --threads 1"},
}


def class_env(worker_class: str) -> dict[str, str]:
    """The child environment that starts gunicorn with this worker class."""
    return dict(CLASSES[worker_class])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", choices=sorted(CLASSES),
                        default=["gevent", "gevent-gunicorn", "gthread", "sync"])
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
             f"Machine: {machine()}; wrk {wrk_version() or '?'}; gevent {_gevent_version()}. "
             f"Load average before {load_before[0]:.2f}, after {load_after[0]:.2f}.", "",
             "Both servers run `api/gunicorn_conf.py` (2 workers; tabserve with its defaults: "
             "monitoring, access log, prediction log) with the worker class given by "
             "`TABSERVE_WEB_WORKER_CLASS` or `GUNICORN_CMD_ARGS` (module docstring); the demo "
             "model, one breast-cancer row per request, wrk at "
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


def _gevent_version() -> str:
    import gevent

    return gevent.__version__


if __name__ == "__main__":
    main()
