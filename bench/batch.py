"""Batch benchmark: files scored through the queue by a real worker, with its peak RSS.

    .venv/bin/python -m bench.batch [--rows 1000000 5000000] [--formats csv parquet]

Starts redis-server, gunicorn (`tabserve api`) and one `tabserve worker` (one pool
process, one model thread), submits each file, and reports rows/s end to end (submit to
downloadable result) and for the worker alone (running to succeeded), and the worker's
peak RSS. Appends a section to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import requests

from bench.common import RSSSampler, demo_file, machine
from shared.artifacts import ModelStore
from shared.config import Settings
from shared.training import train_demo
from tests.jobclient import CONTENT_TYPES, wait_job
from tests.servers import ApiServer, RedisServer, WorkerProcess, tabserve_env

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def run(rows_list: list[int], formats: list[str], chunk_rows: int) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="tabserve-bench-"))
    artifacts = work / "artifacts"
    train_demo(ModelStore(artifacts))
    redis = RedisServer(work / "redis")
    settings = Settings(artifacts_dir=artifacts, data_dir=str(work / "data"),
                        redis_url=redis.url, chunk_rows=chunk_rows,
                        max_upload_bytes=8 * 1024**3)
    env = tabserve_env(settings.as_env())
    api = ApiServer(env, work, workers=1)
    worker = WorkerProcess(env, work, "bench")
    results = []
    try:
        for fmt in formats:
            for rows in rows_list:
                path = demo_file(rows, fmt)
                results.append(_one(api.url, worker.pid, path, fmt, rows))
                print(results[-1], flush=True)
    finally:
        worker.stop()
        api.stop()
        redis.stop()
    return results


def _one(url: str, worker_pid: int, path: Path, fmt: str, rows: int) -> dict:
    with RSSSampler(worker_pid) as rss:
        t0 = time.perf_counter()
        with open(path, "rb") as fh:
            r = requests.post(url + "/jobs", data=fh, timeout=3600,
                              headers={"Content-Type": CONTENT_TYPES[fmt]})
        assert r.status_code == 202, r.text
        t_submit = time.perf_counter() - t0
        job = wait_job(url, r.json()["id"], timeout=3600)
        t_done = time.perf_counter() - t0
    assert job["status"] == "succeeded", job
    started = time.mktime(time.strptime(job["started_at"][:19], "%Y-%m-%dT%H:%M:%S")) + float(
        "0." + job["started_at"][20:23])
    finished = time.mktime(time.strptime(job["finished_at"][:19], "%Y-%m-%dT%H:%M:%S")) + float(
        "0." + job["finished_at"][20:23])
    worker_s = finished - started
    return {"format": fmt, "rows": rows, "file_mb": round(path.stat().st_size / 1e6),
            "upload_s": round(t_submit, 2), "end_to_end_s": round(t_done, 2),
            "worker_s": round(worker_s, 2), "worker_rows_per_s": round(rows / worker_s),
            "end_to_end_rows_per_s": round(rows / t_done),
            "peak_rss_mb_pool": round(rss.peak_single / 2**20),
            "peak_rss_mb_tree": round(rss.peak_tree / 2**20)}


def report(results: list[dict], command: str) -> str:
    lines = [f"## Batch through the queue ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `{command}`", "", f"Machine: {machine()}", "",
             "| format | rows | file MB | upload s | worker s | worker rows/s | end-to-end s "
             "| end-to-end rows/s | worker peak RSS MB (largest process / tree) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['format']} | {r['rows']:,} | {r['file_mb']} | {r['upload_s']} | "
                     f"{r['worker_s']} | {r['worker_rows_per_s']:,} | {r['end_to_end_s']} | "
                     f"{r['end_to_end_rows_per_s']:,} | {r['peak_rss_mb_pool']} / "
                     f"{r['peak_rss_mb_tree']} |")
    by_fmt: dict[str, dict[int, dict]] = {}
    for r in results:
        by_fmt.setdefault(r["format"], {})[r["rows"]] = r
    for fmt, runs in by_fmt.items():
        if len(runs) >= 2:
            small, large = runs[min(runs)], runs[max(runs)]
            ratio = large["peak_rss_mb_pool"] / max(small["peak_rss_mb_pool"], 1)
            lines.append("")
            lines.append(f"{fmt}: peak RSS at {max(runs):,} rows is {ratio:.2f}x that at "
                         f"{min(runs):,} rows ({max(runs) // min(runs)}x the rows).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--formats", nargs="+", default=["csv"])
    parser.add_argument("--chunk-rows", type=int, default=Settings().chunk_rows)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results = run(args.rows, args.formats, args.chunk_rows)
    command = "python -m bench.batch " + " ".join(
        ["--rows", *map(str, args.rows), "--formats", *args.formats])
    text = report(results, command)
    print(text)
    if not args.no_write:
        DOCS.parent.mkdir(exist_ok=True)
        existing = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n\n"
        DOCS.write_text(existing.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    main()
