"""The soak: ten minutes of steady /predict load and a stream of jobs while a worker is killed
and replaced every two minutes and Redis is restarted once (issue 13).

    .venv/bin/python -m bench.soak [--minutes 10] [--quick] [--no-write]

Real processes: redis-server with an append-only file on a free loopback port, `tabserve api`
(gunicorn, 2 workers), two `tabserve worker -c 1`: "steady", which runs from start to end (its
memory over the whole run), and "churn", SIGKILLed (the whole process group) every
`--kill-every` seconds, preferably while it scores, and replaced by a new one. Redis is stopped
with SIGTERM once, halfway, and started again on the same port and directory. Every /predict
answer must be 200 with a prediction; every job must succeed once with every input row once, in
order. RSS of every tabserve process and Redis's used_memory are sampled every 10 s. Writes (or
replaces) its section of docs/benchmarks.md; the processes' logs stay in bench/out/soak/.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from bench.common import OUT
from bench.online_report import write_section
from bench.soak_load import (
    JobStream,
    PredictLoad,
    Sample,
    redis_memory,
    tree_rss,
    write_samples,
)
from bench.soak_report import TITLE, report
from shared.config import Settings
from shared.models.store import ModelStore
from shared.models.training import train_demo
from tests.servers import ApiServer, Process, RedisServer, WorkerProcess, tabserve_env

SAMPLE_SECONDS = 10.0
TASK_LINE = re.compile(r"Task (tabserve\.\w+\[[0-9a-f-]+\]) (received|succeeded|failed|raised)")


class Soak:
    """The processes, the events, the samples."""

    def __init__(self, work: Path, logs: Path, part_rows: int) -> None:
        self.work, self.logs = work, logs
        train_demo(ModelStore(work / "artifacts"))
        self.redis = RedisServer(work / "redis", aof=True, timeout=30)
        self.settings = Settings(artifacts_dir=work / "artifacts", data_dir=str(work / "data"),
                                 redis_url=self.redis.url, worker_metrics_port=0,
                                 part_rows=part_rows)
        self.env = tabserve_env(self.settings.as_env())
        self.api = ApiServer(self.env, logs, workers=2)
        self.steady = WorkerProcess(self.env, logs, "steady")
        self.churn = WorkerProcess(self.env, logs, "churn1")
        self.old: list[Process] = []
        self.events: list[tuple[float, str]] = []
        self.samples: list[Sample] = []
        self.t0, self.wall0 = time.monotonic(), time.time()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str) -> None:
        self.events.append((self.now(), text))
        print(f"[{self.now():6.1f} s] {text}", flush=True)

    def sample(self) -> None:
        used, kinds, keys = redis_memory(self.redis.url)
        rss = {"api": tree_rss(self.api.pid), "steady worker": tree_rss(self.steady.pid),
               "churn worker": tree_rss(self.churn.pid), "redis": tree_rss(self.redis.pid)}
        self.samples.append(Sample(self.now(), rss, used, kinds, keys, os.getloadavg()[0]))

    def wait_task(self, procs: list[WorkerProcess], timeout: float) -> str:
        """Wait (bounded) until one of the workers runs a task, then a moment more: which."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in procs:
                task = running_task(proc)
                if task:
                    time.sleep(0.1)  # into its rows
                if task and running_task(proc) == task:
                    return f"{proc.name} running {task}"
            time.sleep(0.02)
        return f"no task running after {timeout:g} s"

    def kill_churn(self, k: int) -> None:
        doing = self.wait_task([self.churn], 30)
        self.churn.kill(signal.SIGKILL)
        self.churn.proc.wait(timeout=10)
        hit = "and killed in it" if running_task(self.churn) else "but it had ended"
        self.event(f"worker {self.churn.name} SIGKILLed ({doing}, {hit})")
        self.old.append(self.churn)
        self.churn = WorkerProcess(self.env, self.logs, f"churn{k}")
        self.event(f"worker churn{k} started and ready")

    def restart_redis(self) -> None:
        doing = self.wait_task([self.steady, self.churn], 20)
        self.redis.kill(signal.SIGTERM)
        self.redis.proc.wait(timeout=60)
        self.event(f"Redis stopped with SIGTERM ({doing})")
        self.old.append(self.redis)
        self.redis = self.redis.restarted(timeout=30)
        self.event("Redis started again (same port and directory, AOF)")

    def stop(self) -> None:
        for proc in [self.churn, self.steady, self.api, self.redis, *self.old]:
            proc.stop()


def _tail(proc: WorkerProcess) -> str:
    with open(proc.log_path, "rb") as log:
        log.seek(max(0, log.seek(0, os.SEEK_END) - 30_000))
        return log.read().decode(errors="replace")


def running_task(proc: WorkerProcess) -> str | None:
    """The task a worker's log last shows received and not finished (`name[id]`), or None."""
    tail = _tail(proc)
    tasks = TASK_LINE.findall(tail)
    return tasks[-1][0] if tasks and tasks[-1][1] == "received" else None


def chaos_plan(seconds: float, kill_every: float) -> list[tuple[float, str]]:
    """When to kill the churn worker and when to restart Redis (halfway)."""
    plan = [(t, "kill") for t in range(int(kill_every), int(seconds), int(kill_every))]
    middle = seconds / 2
    if any(abs(t - middle) < 15 for t, _ in plan):
        middle += kill_every / 4
    return sorted([*plan, (middle, "redis")])


def run(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="tabserve-soak-"))
    logs = OUT / "soak"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    load_start = os.getloadavg()
    soak = Soak(work, logs, args.part_rows)
    seconds = args.minutes * 60
    load = PredictLoad(soak.api.url, args.rate, args.threads, soak.t0)
    stream = JobStream(soak.api.url, args.rows, args.job_every, soak.t0)
    try:
        soak.t0 = load.t0 = stream.t0 = time.monotonic()
        soak.wall0 = time.time()
        soak.event(f"start: /predict at {args.rate:g}/s, a job every {args.job_every:g} s")
        load.start()
        stream.start()
        sampler = threading.Thread(target=_sample_loop, args=(soak, seconds), daemon=True)
        sampler.start()
        kills = 1
        for at, what in chaos_plan(seconds, args.kill_every):
            time.sleep(max(0.0, at - soak.now()))
            if what == "kill":
                kills += 1
                soak.kill_churn(kills)
            else:
                soak.restart_redis()
        time.sleep(max(0.0, seconds - soak.now()))
        stream.stop_submitting()
        load.join()
        soak.event(f"load stopped; {len(stream.pending())} jobs still to finish")
        stream.drain(timeout=240)
        soak.event(f"drained; {len(stream.pending())} jobs unfinished")
        sampler.join()
        soak.sample()
        write_samples(soak.samples, logs / "samples.csv")
        return report(args, soak, load, stream, load_start, os.getloadavg())
    finally:
        soak.stop()
        shutil.rmtree(work, ignore_errors=True)


def _sample_loop(soak: Soak, seconds: float) -> None:
    while soak.now() < seconds:
        soak.sample()
        time.sleep(max(0.0, SAMPLE_SECONDS - soak.now() % SAMPLE_SECONDS))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true",
                        help="2 minutes, a worker killed every 40 s (not written)")
    parser.add_argument("--rate", type=float, default=50.0, help="/predict requests/s")
    parser.add_argument("--threads", type=int, default=8, help="/predict client threads")
    parser.add_argument("--job-every", type=float, default=4.0, help="seconds between jobs")
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 100_000],
                        help="rows of the jobs, in turn")
    parser.add_argument("--part-rows", type=int, default=50_000,
                        help="TABSERVE_PART_ROWS: the 100,000-row jobs are cut in two parts")
    parser.add_argument("--kill-every", type=float, default=120.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.kill_every, args.no_write = 2.0, 40.0, True
    text = run(args)
    print(text)
    if not args.no_write:
        write_section(f"## {TITLE}", text)


if __name__ == "__main__":
    main()
