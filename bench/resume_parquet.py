"""What writing a Parquet output in segments (resumable, shared.jobs.segments) costs a job that
is never resumed: one job of N rows, Parquet output, scored in process by two checkouts'
code, alternated run by run.

    .venv/bin/python bench/resume_parquet.py --baseline /work/main [--rows 1000000] [--runs 5]

Each run is its own process (`--child`) importing `shared` from one checkout (PYTHONPATH),
against one redis-server and the demo model trained here; it times `run_job` (start to
succeeded: reading, scoring, writing, and for segments the join) and prints the output's
row groups. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from shared.config import Settings
    from shared.jobs.coordinator import run_job
    from shared.jobs.submit import parse_options, submit_job
    from shared.services import Services

    work = Path(args.work)
    settings = Settings(artifacts_dir=work / "artifacts", data_dir=str(work / args.name),
                        redis_url=args.redis, queue_name="bench-resume", part_rows=0,
                        worker_metrics_port=0, max_upload_bytes=16 * 1024**3,
                        log_level="WARNING")
    rt = Services(settings)
    staged = work / f"{args.name}.staged.{args.format}"
    shutil.copyfile(args.input, staged)
    job = submit_job(rt, staged, args.format, f"input.{args.format}",
                     parse_options({"output_format": "parquet"}))
    started, cpu = time.perf_counter(), _cpu()
    outcome = run_job(rt, job.id, "bench")
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    done = rt.jobs.get(job.id)
    assert done.output is not None, outcome
    result = Path(settings.data_dir) / done.output["key"]
    meta = pq.ParquetFile(result).metadata
    print(json.dumps({"seconds": seconds, "cpu": cpu, "rows": meta.num_rows,
                      "row_groups": meta.num_row_groups, "bytes": result.stat().st_size}))
    if args.keep:
        shutil.copyfile(result, args.keep)
    shutil.rmtree(Path(settings.data_dir), ignore_errors=True)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def writing(table_path: Path, work: Path, runs: int, chunk_rows: int) -> list[tuple]:
    """The writing alone, in this process: one job's output table (chunks of chunk_rows)
    through one ParquetWriter into a stored file, against segments (closed past 4 MiB, or
    at every chunk) and joined; alternated, best of `runs` (wall and CPU seconds)."""
    import pyarrow.parquet as pq

    from shared.jobs.outputs import OutputWriter
    from shared.jobs.segments import SegmentedOutput
    from shared.storage import LocalStorage

    table = pq.read_table(table_path)
    chunks = [table.slice(i, chunk_rows) for i in range(0, table.num_rows, chunk_rows)]
    storage = LocalStorage(work / "writing")

    def one_writer() -> None:
        with storage.writer("one.parquet") as fh:
            writer = OutputWriter(fh, "parquet")
            for chunk in chunks:
                writer.write(chunk)
            writer.close()

    def segments(min_bytes: int) -> None:
        with SegmentedOutput(storage, "segmented.parquet") as out:
            for chunk in chunks:
                out.write(chunk)
                out.cut_past(min_bytes)
            out.close()
        for key in out.segments:
            storage.delete(key)

    order = [("one writer", one_writer),
             ("segments, 4 MiB (default)", lambda: segments(4 << 20)),
             ("segments, one per chunk", lambda: segments(0))]
    times: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in order}
    for i in range(runs):
        for label, write in order if i % 2 == 0 else order[::-1]:
            started, cpu = time.perf_counter(), _cpu()
            write()
            times[label].append((time.perf_counter() - started, _cpu() - cpu))
    return [(label, min(w for w, _ in t), min(c for _, c in t), len(chunks))
            for label, t in times.items()]


def one(code: str, name: str, work: Path, redis_url: str, source: Path, fmt: str,
        keep: Path | None = None) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                          "--work", str(work), "--name", name, "--redis", redis_url,
                          "--input", str(source), "--format", fmt,
                          *(["--keep", str(keep)] if keep else [])],
                         env={"PYTHONPATH": code, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=False, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", help="the checkout to compare with (e.g. /work/main)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--formats", default="parquet,csv")
    parser.add_argument("--child", action="store_true")
    for name in ("work", "name", "redis", "input", "format", "keep"):
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

    work = Path(tempfile.mkdtemp(prefix="tabserve-resume-bench-"))
    train_demo(ModelStore(work / "artifacts"))
    redis = RedisServer(work / "redis")
    codes = {"before (one writer)": args.baseline, "segments": str(HERE.parent)}
    rows = []
    try:
        for fmt in args.formats.split(","):
            source = demo_file(args.rows, fmt)
            runs: dict[str, list[dict]] = {label: [] for label in codes}
            for i in range(args.runs):
                order = list(codes.items()) if i % 2 == 0 else list(codes.items())[::-1]
                for label, code in order:
                    runs[label].append(one(code, f"r{i}", work, redis.url, source, fmt))
            for label, results in runs.items():
                seconds = [r["seconds"] for r in results]
                rows.append((fmt, label, min(seconds), statistics.median(seconds), seconds,
                             min(r["cpu"] for r in results), results[0]["row_groups"],
                             results[0]["bytes"]))
        output = work / "output.parquet"
        (work / "writing").mkdir()
        one(str(HERE.parent), "out", work, redis.url, demo_file(args.rows, "parquet"),
            "parquet", keep=output)
        parts = writing(output, work, args.runs * 2, 25_000)
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("| input | Parquet output written | best s | median s | runs (s) | best CPU s | "
          "row groups | bytes |\n|---|---|---|---|---|---|---|---|")
    for fmt, label, best, median, seconds, cpu, groups, size in rows:
        print(f"| {fmt} | {label} | {best:.2f} | {median:.2f} | "
              f"{', '.join(f'{s:.2f}' for s in seconds)} | {cpu:.2f} | {groups} | {size:,} |")
    print("\n| writing the output alone | best s | best CPU s | chunks |\n|---|---|---|---|")
    for label, wall, cpu, chunks in parts:
        print(f"| {label} | {wall:.3f} | {cpu:.3f} | {chunks} |")


if __name__ == "__main__":
    main()
