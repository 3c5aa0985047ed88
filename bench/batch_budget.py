"""The CPU a 1M-row CSV job needs, stage by stage, and what that leaves of issue 18's batch
goals on this machine:

    .venv/bin/python -m bench.batch_budget [--rows 1000000] [--no-write]

Each stage of a job (read, parse, validate, score, lay out, write) runs on one thread with
pyarrow's pools at one thread, as shared.jobs does it, and its CPU seconds are summed over
the file's chunks; beside them, pyarrow's multithreaded reader on the same blocks (what a
job's reader used before it parsed blocks side by side), and an upload of the file through a
real API (`tabserve api`, its CPU and the client's, tabserve_client). The machine's own gain
from running two single-threaded processes at once (bench.batch's bare pair) turns the CPU
seconds into the shortest time two cores allow; the naive pandas script's best time of 3
sets the goals. Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

from bench.batch import BASELINE_RUNS, bare_pair, baseline, stack_envs, upload
from bench.common import demo_file, machine, tree_cpu_seconds
from bench.online_report import write_section
from shared.models.loading import load_model, read_verified
from shared.models.store import ModelStore
from shared.models.training import train_demo

TITLE = "## Batch: the CPU a 1M-row CSV job needs"
# issue 18's batch goals, over the naive script's time
WORKER_GOAL, END_TO_END_GOAL = 2.0, 1.6


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stages(store: ModelStore, name: str, version: int, csv: Path, work: Path) -> dict:
    """CPU seconds of each stage of scoring `csv` in one thread, summed over its chunks."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from shared.jobs.chunks import check_chunk, output_table, score_chunk
    from shared.jobs.csvblocks import (
        CsvLayout,
        csv_convert_options,
        header_columns,
        parse_csv_block,
        read_blocks,
        read_header,
    )
    from shared.jobs.inputs import arrow_type, csv_block_bytes
    from shared.jobs.outputs import OutputWriter
    from shared.jobs.pipeline import configure_arrow

    configure_arrow(1)
    loaded = load_model(store, name, version, threads=1)
    features = loaded.manifest.features
    types = {f.name: arrow_type(f) for f in features}
    columns = [f.name for f in features]
    spent: dict[str, float] = defaultdict(float)
    start_row = 0
    with open(csv, "rb") as fh, open(work / "out.csv", "wb") as out:
        header = read_header(fh)
        layout = CsvLayout(header_columns(header), types, columns)
        block_bytes = csv_block_bytes(fh, 25_000)
        fh.seek(len(header))
        writer = OutputWriter(out, "csv")
        blocks = read_blocks(fh, block_bytes)
        while True:
            t = _cpu()
            block = next(blocks, None)
            spent["read the file in blocks"] += _cpu() - t
            if block is None:
                break
            t = _cpu()
            table, bad = parse_csv_block(block, layout, start_row)
            spent["parse (pyarrow's reader, one thread per block)"] += _cpu() - t
            configure_arrow(0)
            t = _cpu()
            pacsv.read_csv(pa.BufferReader(pa.py_buffer(block.data)),
                           read_options=pacsv.ReadOptions(column_names=layout.names,
                                                          use_threads=True),
                           convert_options=csv_convert_options(layout.names, types, columns))
            spent["for reference: parse with pyarrow's multithreaded reader"] += _cpu() - t
            configure_arrow(1)
            t = _cpu()
            checked = check_chunk(table, start_row, features, bad)
            spent["validate"] += _cpu() - t
            t = _cpu()
            _, result = score_chunk(loaded, checked)
            spent["score (the model, one thread)"] += _cpu() - t
            t = _cpu()
            laid = output_table(loaded, checked, result, None, None, "job.")
            spent["lay out the output"] += _cpu() - t
            t = _cpu()
            writer.write(laid)
            spent["write the output CSV"] += _cpu() - t
            start_row += table.num_rows + len(bad)
        writer.close()
    return dict(spent)


def upload_cpu(work: Path, csv: Path, runs: int) -> dict:
    """CPU seconds of an upload of `csv` (the client's and the API's) and its wall time,
    best of `runs`; no worker runs, so nothing else takes the CPU."""
    from tests.servers import ApiServer, RedisServer

    train_demo(ModelStore(work / "artifacts"))
    redis = RedisServer(work / "redis")
    api = None
    try:
        _, _, whole = stack_envs(work, redis.url)
        api = ApiServer(whole, work, workers=2)
        best: dict | None = None
        for _ in range(runs):
            me, api_before = psutil.Process(), tree_cpu_seconds(api.pid)
            before, t0 = sum(me.cpu_times()[:2]), time.perf_counter()
            upload(api.url, csv)
            wall = time.perf_counter() - t0
            run = {"seconds": wall, "client_cpu": sum(me.cpu_times()[:2]) - before,
                   "api_cpu": tree_cpu_seconds(api.pid) - api_before}
            if best is None or run["client_cpu"] + run["api_cpu"] < \
                    best["client_cpu"] + best["api_cpu"]:
                best = run
        assert best is not None
        return best
    finally:
        for proc in (api, redis):
            if proc is not None:
                proc.stop()


def run(rows: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tabserve-budget-"))
    try:
        store = ModelStore(work / "artifacts")
        manifest = train_demo(store)
        model_pkl = work / "model.pkl"
        model_pkl.write_bytes(read_verified(store, manifest))
        csv = demo_file(rows, "csv")
        naive = baseline("naive", model_pkl, csv, work / "naive.csv", BASELINE_RUNS)
        pair = bare_pair(model_pkl, csv, work)
        spent = stages(store, manifest.name, manifest.version, csv, work)
        sent = upload_cpu(work / "api", csv, BASELINE_RUNS)
        return {"rows": rows, "bytes": csv.stat().st_size, "naive": naive, "pair": pair,
                "stages": spent, "upload": sent}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(r: dict, command: str) -> str:
    stages_, up, naive = r["stages"], r["upload"], r["naive"]
    gain = r["pair"]["gain"]
    job = sum(v for k, v in stages_.items() if not k.startswith("for reference"))
    uploaded = up["client_cpu"] + up["api_cpu"]
    worker_floor, e2e_floor = job / gain, (job + uploaded) / gain
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [TITLE, "", f"Command: `{command}` ({when})", "", f"Machine: {machine()}", "",
             f"A {r['rows']:,}-row demo CSV file ({r['bytes'] / 2**20:,.0f} MiB). Each stage "
             "of a job runs on one thread, pyarrow's pools at one thread, and its CPU "
             "seconds (user and system) are summed over the file's 25,000-row chunks. The "
             "upload is the same file sent with tabserve_client to `tabserve api` (2 "
             "workers, no job worker running), the client's CPU and the API's, best of "
             f"{BASELINE_RUNS}. The machine's gain from a second single-threaded process is "
             "the in-process limit with one thread run alone and then two at once "
             "(bench.batch's bare pair): with it, CPU seconds become the shortest time two "
             "CPUs allow, if every stage overlapped perfectly.", "",
             "| stage | CPU seconds |", "|---|---|"]
    for name, seconds in stages_.items():
        lines.append(f"| {name} | {seconds:.2f} |")
    lines += [f"| **a job, all stages** | **{job:.2f}** |",
              f"| upload: the client (tabserve_client) | {up['client_cpu']:.2f} |",
              f"| upload: the API | {up['api_cpu']:.2f} (the upload took "
              f"{up['seconds']:.2f} s) |",
              f"| **a job and its upload** | **{job + uploaded:.2f}** |", "",
              "| | seconds |", "|---|---|",
              f"| naive pandas script, best of {BASELINE_RUNS} "
              f"({', '.join(f'{s:.2f}' for s in naive['runs'])}) | {naive['seconds']:.2f} |",
              f"| this machine's gain from a second single-threaded process | {gain:.2f}× |",
              f"| shortest worker time 2 CPUs allow (a job's CPU / gain) | {worker_floor:.2f} |",
              f"| shortest upload → result 2 CPUs allow ((job + upload) / gain) | "
              f"{e2e_floor:.2f} |",
              f"| worker time the goal asks for (naive / {WORKER_GOAL:g}) | "
              f"{naive['seconds'] / WORKER_GOAL:.2f} |",
              f"| upload → result the goal asks for (naive / {END_TO_END_GOAL:g}) | "
              f"{naive['seconds'] / END_TO_END_GOAL:.2f} |", "",
              f"The most these CPU seconds allow: worker time "
              f"{naive['seconds'] / worker_floor:.2f}× the naive script (goal "
              f"{WORKER_GOAL:g}×), upload to result {naive['seconds'] / e2e_floor:.2f}× "
              f"(goal {END_TO_END_GOAL:g}×), before any time a stage waits for another."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results = run(args.rows)
    command = f"python -m bench.batch_budget --rows {args.rows}"
    text = report(results, command)
    print(text)
    if not args.no_write:
        write_section(TITLE, text)


if __name__ == "__main__":
    main()
