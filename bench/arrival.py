"""A CSV job scored while its upload arrives against the same job waiting for its whole file,
at the speed of a link: loopback (as fast as the machine copies), 100 MB/s and 25 MB/s.

    .venv/bin/python -m bench.arrival [--rows 1000000] [--rates 0 100 25] [--no-write]

Starts redis-server, two gunicorn APIs on the same Redis and data directory (the default,
which scores a CSV body of 8 MiB or more as it arrives, and one with
TABSERVE_STREAM_UPLOAD_MIN_BYTES=0, which waits for whole files) and one `tabserve worker`.
For each rate, each API in turn takes the same file, sent at that rate with a
Content-Length; the time is upload start to the result downloadable (the job's finished_at,
same clock), and how long after the upload's last byte that was. Writes its section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import requests

from bench.batch import stack_envs
from bench.common import demo_file, machine
from bench.online_report import write_section
from shared.models.store import ModelStore
from shared.models.training import train_demo
from tests.jobclient import wait_job
from tests.servers import ApiServer, RedisServer, WorkerProcess

TITLE = "## Batch: scoring while the upload arrives"
PIECE = 256 * 1024
ROUNDS = 2


class PacedFile:
    """A file read at `rate` bytes per second (0: as fast as it is read), with a length, so
    that requests sends it with a Content-Length."""

    def __init__(self, path: Path, rate: float) -> None:
        self.fh, self.rate, self.size = open(path, "rb"), rate, path.stat().st_size  # noqa: SIM115
        self.sent, self.started, self.ended = 0, 0.0, 0.0

    def __len__(self) -> int:
        return self.size - self.sent

    def read(self, size: int = -1) -> bytes:
        if not self.started:
            self.started = time.time()
        piece = self.fh.read(PIECE if size is None or size < 0 else min(size, PIECE))
        self.sent += len(piece)
        if self.rate:
            due = self.started + self.sent / self.rate
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
        if not piece and not self.ended:
            self.ended = time.time()
        return piece


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def one(url: str, path: Path, rate: float) -> dict:
    body = PacedFile(path, rate)
    t0 = time.time()
    r = requests.post(url + "/jobs", data=body, headers={"Content-Type": "text/csv"},
                      timeout=3600)
    answered = time.time()
    assert r.status_code == 202, r.text
    job = wait_job(url, r.json()["id"], timeout=3600, interval=0.05)
    assert job["status"] == "succeeded", job
    done = _ts(job["finished_at"])
    last_byte = body.ended or answered
    body.fh.close()
    return {"seconds": done - t0, "upload_s": last_byte - t0, "after_s": done - last_byte,
            "streamed": bool(job["input"].get("streamed"))}


def run(rows: int, rates: list[float]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tabserve-arrival-"))
    train_demo(ModelStore(work / "artifacts"))
    src = demo_file(rows, "csv")
    redis = RedisServer(work / "redis")
    _, env, whole = stack_envs(work, redis.url)
    procs: list = [redis]
    out: dict = {"rows": rows, "bytes": src.stat().st_size, "rates": {}}
    try:
        arriving = ApiServer(env, work, workers=2)
        procs.append(arriving)
        waiting = ApiServer(whole, work, workers=2)
        procs.append(waiting)
        procs.append(WorkerProcess(env, work, "a1"))
        for rate in rates:
            runs: dict[str, list[dict]] = {"arriving": [], "whole": []}
            for _ in range(ROUNDS):  # alternated: the machine's drift falls on both
                runs["whole"].append(one(waiting.url, src, rate * 1e6))
                runs["arriving"].append(one(arriving.url, src, rate * 1e6))
            out["rates"][rate] = runs
            print(rate, runs, flush=True)
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def report(r: dict, command: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [TITLE, "", f"Command: `{command}` ({when})",
             "", f"Machine: {machine()}", "",
             f"A {r['rows']:,}-row CSV ({r['bytes'] / 2**20:,.0f} MiB), the demo model, one "
             "`tabserve worker` (default threads); the client sends the file at the rate "
             "shown with a Content-Length. \"Whole file first\" is an API with "
             "`TABSERVE_STREAM_UPLOAD_MIN_BYTES=0`; \"scored as it arrives\" the default. "
             f"Seconds from the upload's first byte to the result downloadable (median of "
             f"{ROUNDS}, alternated), and of those, after the upload's last byte.", "",
             "| upload rate | whole file first: s | after the last byte | scored as it arrives: s "
             "| after the last byte | speed-up |", "|---|---|---|---|---|---|"]
    for rate, runs in r["rates"].items():
        w = statistics.median(x["seconds"] for x in runs["whole"])
        wa = statistics.median(x["after_s"] for x in runs["whole"])
        a = statistics.median(x["seconds"] for x in runs["arriving"])
        aa = statistics.median(x["after_s"] for x in runs["arriving"])
        assert all(x["streamed"] for x in runs["arriving"])
        label = "loopback, unpaced" if not rate else f"{rate:g} MB/s"
        lines.append(f"| {label} | {w:.2f} | {wa:.2f} | {a:.2f} | {aa:.2f} | {w / a:.2f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rates", type=float, nargs="+", default=[0, 100, 25],
                        help="MB/s (0: unpaced)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results = run(args.rows, args.rates)
    command = (f"python -m bench.arrival --rows {args.rows} --rates "
               + " ".join(f"{x:g}" for x in args.rates))
    text = report(results, command)
    print(text)
    if not args.no_write:
        write_section(TITLE, text)


if __name__ == "__main__":
    main()
