"""/predict beside batch jobs on the same machine: p50/p99/max of a steady /predict load
while 1M-row CSV jobs run on one worker, at the workers' CPU priority 0 and 10
(TABSERVE_WORKER_NICE), against the same load idle; and what the priority costs the jobs.

    .venv/bin/python -m bench.contention [--rows 1000000] [--jobs 3] [--rate 100]
                                         [--nice 0 10] [--no-write]

The jobs are uploaded before their worker starts (uploads are another benchmark's matter:
bench.isolation), then the /predict load runs from the first job's start to the last one's
end. One worker process (`--concurrency 1`, its default threads), the API with 2 gunicorn
workers, all on this machine's cores. Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

from bench.common import demo_file, machine
from bench.goals import record
from bench.isolation import steady_predict
from bench.online_report import write_section
from shared.config import Settings
from shared.models.store import ModelStore
from shared.models.training import train_demo
from tests.jobclient import wait_job
from tests.servers import ApiServer, RedisServer, WorkerProcess, tabserve_env, wait_until

TITLE = "/predict beside batch jobs: the workers' CPU priority"


@dataclass
class Phase:
    name: str
    latencies: list[float]
    errors: int
    job_seconds: list[float]
    load: float
    span: float = 0.0  # the first job's start to the last one's end

    def row(self, idle_p99: float | None) -> str:
        ms = np.asarray(self.latencies) * 1e3
        p50, p99 = np.percentile(ms, [50, 99])
        ratio = f"{p99 / idle_p99:.2f}" if idle_p99 else "1.00"
        jobs = ", ".join(f"{s:.2f}" for s in self.job_seconds) or "-"
        span = f"{self.span:.2f}" if self.span else "-"
        return (f"| {self.name} | {len(ms) + self.errors} | {self.errors} | {p50:.2f} | "
                f"{p99:.2f} | {ms.max():.1f} | {ratio} | {jobs} | {span} | {self.load:.1f} |")

    @property
    def p99(self) -> float:
        return float(np.percentile(np.asarray(self.latencies) * 1e3, 99))


def _ts(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def with_jobs(name: str, api: ApiServer, env: dict[str, str], work: Path, path: Path,
              jobs: int, rate: float) -> Phase:
    """Upload `jobs` copies of the file, start one worker, and measure /predict from the
    first job's start to the last one's end."""
    ids = []
    for _ in range(jobs):
        with open(path, "rb") as fh:
            r = requests.post(api.url + "/jobs", data=fh, timeout=600,
                              headers={"Content-Type": "text/csv"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    worker = WorkerProcess(env, work, name.split()[0].replace("=", ""), 1)
    result: dict[str, object] = {}
    try:
        wait_until(lambda: requests.get(f"{api.url}/jobs/{ids[0]}", timeout=5).json()[
            "status"] != "queued", 120, "the first job to start", interval=0.01)
        done = threading.Event()

        def load() -> None:
            # Slices of the steady load until the last job has ended.
            latencies: list[float] = []
            errors = 0
            while not done.is_set():
                part, failed = steady_predict(api.url, rate, 1.0)
                latencies += part
                errors += failed
            result["latencies"], result["errors"] = latencies, errors

        thread = threading.Thread(target=load)
        thread.start()
        finished = [wait_job(api.url, i, timeout=1800, interval=0.2) for i in ids]
        done.set()
        thread.join()
    finally:
        worker.stop()
    assert all(j["status"] == "succeeded" for j in finished), finished
    seconds = [_ts(j["finished_at"]) - _ts(j["started_at"]) for j in finished]
    span = max(_ts(j["finished_at"]) for j in finished) - min(_ts(j["started_at"])
                                                               for j in finished)
    return Phase(name, result["latencies"], result["errors"], seconds,  # type: ignore[arg-type]
                 os.getloadavg()[0], span)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0, help="/predict requests/s")
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument("--nice", type=int, nargs="+", default=[0, 10])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    path = demo_file(args.rows, "csv")
    with tempfile.TemporaryDirectory(prefix="tabserve-contention-") as tmp:
        work = Path(tmp)
        train_demo(ModelStore(work / "artifacts"))
        redis = RedisServer(work)
        phases: list[Phase] = []
        try:
            base = Settings(artifacts_dir=work / "artifacts", data_dir=str(work / "data"),
                            redis_url=redis.url, worker_metrics_port=0, min_free_bytes=0)
            api = ApiServer(tabserve_env(base.as_env()), work, workers=2)
            try:
                steady_predict(api.url, args.rate, 3.0)  # warm-up
                lat, err = steady_predict(api.url, args.rate, args.idle_seconds)
                phases.append(Phase("idle", lat, err, [], os.getloadavg()[0]))
                print(phases[-1].row(None), flush=True)
                for nice in args.nice:
                    env = tabserve_env(base.with_overrides(worker_nice=nice).as_env())
                    phases.append(with_jobs(f"nice={nice}: {args.jobs} jobs of {args.rows:,} "
                                            "rows", api, env, work, path, args.jobs,
                                            args.rate))
                    print(phases[-1].row(phases[0].p99), flush=True)
            finally:
                api.stop()
        finally:
            redis.stop()
    text = report(args, phases)
    print(text)
    if not args.no_write:
        write_section(f"## {TITLE}", text)
        record_goal(args, phases)


def record_goal(args: argparse.Namespace, phases: list[Phase]) -> None:
    """This run's row of issue 18's table (bench.goals): the phase at the workers' default
    priority (the first with jobs)."""
    idle, p = phases[0].p99, phases[1]
    worst = float(np.max(np.asarray(p.latencies) * 1e3))
    ratio = p.p99 / idle
    record("beside_job", f"p99 {ratio:.2f}× idle, max {worst:.1f} ms ({p.name})",
           ratio <= 3 and worst <= 50 and not p.errors, _command(args))


def _command(args: argparse.Namespace) -> str:
    return (f"python -m bench.contention --rows {args.rows} --jobs {args.jobs} "
            f"--rate {args.rate:g} --nice {' '.join(map(str, args.nice))}")


def report(args: argparse.Namespace, phases: list[Phase]) -> str:
    idle = phases[0].p99
    command = _command(args)
    lines = [
        f"## {TITLE}", "",
        f"Command: `{command}` ({dt.date.today()})", "",
        f"Machine: {machine()}. One worker (`--concurrency 1`, default threads), the API with 2 "
        "gunicorn workers, the load generator: all on the same cores. /predict: "
        f"{args.rate:g} requests/s, open loop, 4 keep-alive clients, one row each; with jobs, "
        "from the first job's start to the last one's end (the files uploaded before the "
        "worker starts). Job seconds: running to succeeded, each job (a 1M-row job runs as two "
        "parts, which may interleave with other jobs' parts); all jobs: the first start to the "
        "last end.", "",
        "| phase | /predict requests | errors | p50 ms | p99 ms | max ms | p99 / idle p99 | "
        "job seconds | all jobs s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(p.row(idle if i else None) for i, p in enumerate(phases)), "",
    ]
    for p in phases[1:]:
        ms = np.asarray(p.latencies) * 1e3
        ok = p.p99 <= 3 * idle and ms.max() <= 50 and not p.errors
        lines.append(f"- {p.name}: p99 {p.p99 / idle:.2f}× idle, max {ms.max():.1f} ms "
                     f"(goal ≤ 3×, ≤ 50 ms): {'PASS' if ok else 'FAIL'}; all jobs in "
                     f"{p.span:.2f} s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
