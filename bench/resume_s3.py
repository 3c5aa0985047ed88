"""What writing a CSV or JSON lines output (and the errors file) in segments on S3 costs a job
that is never resumed: one job of N rows with on_error=skip, scored in process by two
checkouts' code against a real SeaweedFS S3 server on loopback, alternated run by run.

    .venv/bin/python bench/resume_s3.py --baseline /work/main [--rows 500000] [--runs 3]

The baseline is a checkout from before segments (on S3 it writes one object per file, and
records no checkpoint); each run is its own process (`--child`) importing `shared` from one
checkout (PYTHONPATH); it times `run_job` (start to succeeded: reading, scoring, writing,
and for segments the join). Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def child(args: argparse.Namespace) -> None:
    from shared.config import Settings
    from shared.jobs.coordinator import run_job
    from shared.jobs.submit import parse_options, submit_job
    from shared.services import Services

    work = Path(args.work)
    settings = Settings(artifacts_dir=work / "artifacts", data_dir=f"s3://tabserve/{args.name}",
                        s3_endpoint_url=args.endpoint, staging_dir=str(work / "staging"),
                        redis_url=args.redis, queue_name="bench-resume-s3", part_rows=0,
                        worker_metrics_port=0, max_upload_bytes=16 * 1024**3,
                        log_level="WARNING")
    rt = Services(settings)
    staged = work / f"{args.name}.staged.csv"
    shutil.copyfile(args.input, staged)
    job = submit_job(rt, staged, "csv", "input.csv", parse_options(
        {"output_format": args.format, "on_error": "skip"}))
    started, cpu = time.perf_counter(), _cpu()
    outcome = run_job(rt, job.id, "bench")
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    done = rt.jobs.get(job.id)
    assert done.output is not None, outcome
    size = rt.storage.size(done.output["key"])
    print(json.dumps({"seconds": seconds, "cpu": cpu, "rows": done.output["rows"],
                      "bytes": size}))
    rt.storage.delete_prefix("jobs")


def one(code: str, name: str, work: Path, redis_url: str, endpoint: str, source: Path,
        fmt: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                          "--work", str(work), "--name", name, "--redis", redis_url,
                          "--endpoint", endpoint, "--input", str(source), "--format", fmt],
                         env={**env, "PYTHONPATH": code, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=False, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", help="the checkout to compare with (e.g. /work/main)")
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--formats", default="csv,jsonl")
    parser.add_argument("--child", action="store_true")
    for name in ("work", "name", "redis", "endpoint", "input", "format"):
        parser.add_argument(f"--{name}")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sys.path.insert(0, str(HERE.parent))
    from bench.common import demo_file
    from shared.models.store import ModelStore
    from shared.models.training import train_demo
    from tests.servers import RedisServer
    from tests.test_s3 import ACCESS_KEY, REGION, SECRET_KEY, SeaweedServer

    work = Path(tempfile.mkdtemp(prefix="tabserve-resume-s3-bench-"))
    train_demo(ModelStore(work / "artifacts"))
    redis = RedisServer(work / "redis")
    (work / "weed").mkdir()
    weed = SeaweedServer(work / "weed")
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
           "HOME": os.environ.get("HOME", str(work))}
    codes = {"before (one object, no checkpoint)": args.baseline, "segments": str(HERE.parent)}
    rows = []
    try:
        source = demo_file(args.rows, "csv")
        for fmt in args.formats.split(","):
            runs: dict[str, list[dict]] = {label: [] for label in codes}
            for i in range(args.runs):
                order = list(codes.items()) if i % 2 == 0 else list(codes.items())[::-1]
                for label, code in order:
                    runs[label].append(one(code, f"r{i}", work, redis.url, weed.endpoint,
                                           source, fmt, env))
            for label, results in runs.items():
                seconds = [r["seconds"] for r in results]
                rows.append((fmt, label, min(seconds), statistics.median(seconds), seconds,
                             min(r["cpu"] for r in results), results[0]["bytes"]))
    finally:
        weed.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("| output | written | best s | median s | runs (s) | best CPU s | bytes |\n"
          "|---|---|---|---|---|---|---|")
    for fmt, label, best, median, seconds, cpu, size in rows:
        print(f"| {fmt} | {label} | {best:.2f} | {median:.2f} | "
              f"{', '.join(f'{s:.2f}' for s in seconds)} | {cpu:.2f} | {size:,} |")


if __name__ == "__main__":
    main()
