"""Issue 18's goals in one table: each benchmark records the rows it measures as it writes
its own section, and `python -m bench.goals` (the last step of `make bench`) writes the table
into docs/benchmarks.md with the run's command, machine and versions.

`make bench` names its run (BENCH_RUN, the UTC time it started); a row recorded by another
run (an earlier `make bench`, or one benchmark run by hand) is shown with its own time and
marked, so the table never passes off an old figure as this run's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import machine
from bench.online_report import write_section

STORE = Path(__file__).resolve().parent / "out" / "goals.json"
TITLE = "## Issue 18's goals, side by side (`make bench`)"
RUN_ENV = "BENCH_RUN"


@dataclass(frozen=True)
class Goal:
    key: str
    measure: str
    goal: str


GOALS = (
    Goal("hello_share", "`/predict` req/s, demo model, monitoring on, vs hello-world Flask "
         "under the same server settings (c=16)", "≥ 65%"),
    Goal("mlserver", "`/predict` req/s vs Seldon MLServer (`mlserver-sklearn`) at its best "
         "`parallel_workers` (c=16)", "≥ 3×"),
    Goal("mlflow", "`/predict` req/s vs `mlflow models serve` at its best request shape (c=16)",
         "≥ 3×"),
    Goal("protocols", "`/v2/models/<m>/infer` (binary, and JSON) and `/invocations` req/s vs "
         "`/predict`, same API (demo, c=16)", "≥ 0.9× each"),
    Goal("beside_job", "`/predict` p99 while one 1M-row job runs on the same machine vs idle "
         "p99", "≤ 3×, max ≤ 50 ms"),
    Goal("uploads", "`/predict` p99 with 10 uploads trickling at 300 KB/s vs without",
         "≤ 2×, no error"),
    Goal("end_to_end", "1M-row CSV, upload → downloadable result vs the naive pandas script",
         "≥ 1.6×"),
    Goal("worker_time", "1M-row CSV, worker time vs the naive script", "≥ 2×"),
    Goal("rss", "1M-row CSV, worker peak RSS vs the naive script's", "≤ 1/3"),
    Goal("two_workers", "one 5M-row job on 2 single-threaded workers vs 1", "≥ 1.8×"),
)
KEYS = {g.key for g in GOALS}


@dataclass(frozen=True)
class Row:
    key: str
    measured: str
    passed: bool | None  # None: not judged (a busy machine), or not measured
    command: str
    at: str  # UTC, when it was recorded
    run: str  # the BENCH_RUN it belongs to ("" when run by hand)
    note: str = ""


def record(key: str, measured: str, passed: bool | None, command: str, note: str = "") -> None:
    """Keep one goal's measurement of this run (replacing that goal's previous one)."""
    if key not in KEYS:
        raise KeyError(f"no goal {key!r}")
    rows = _load()
    rows[key] = Row(key, measured, passed, command,
                    time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    os.environ.get(RUN_ENV, ""), note)
    STORE.parent.mkdir(parents=True, exist_ok=True)
    STORE.write_text(json.dumps({k: asdict(r) for k, r in rows.items()}, indent=1))


def _load() -> dict[str, Row]:
    try:
        return {k: Row(**v) for k, v in json.loads(STORE.read_text()).items() if k in KEYS}
    except (OSError, ValueError, TypeError):
        return {}


def table(rows: dict[str, Row], run: str) -> str:
    """The section: a row per goal, in issue 18's order."""
    when = f"`make bench` run of {run}" if run else "rows as last recorded (no BENCH_RUN set)"
    lines = [TITLE, "",
             f"Command: `make bench` (each row's own command below), {when}.", "",
             f"Machine: {machine()}; server, load and peers share the 2 cores.", "",
             "| measure | goal | measured | result | by | recorded |",
             "|---|---|---|---|---|---|"]
    for goal in GOALS:
        row = rows.get(goal.key)
        if row is None:
            lines.append(f"| {goal.measure} | {goal.goal} | not measured | — | | |")
            continue
        verdict = {True: "pass", False: "**FAIL**", None: "not judged"}[row.passed]
        stale = " (an earlier run)" if run and row.run != run else ""
        note = f" ({row.note})" if row.note else ""
        lines.append(f"| {goal.measure} | {goal.goal} | {row.measured}{note} | {verdict} | "
                     f"`{row.command}` | {row.at}{stale} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    text = table(_load(), os.environ.get(RUN_ENV, ""))
    print(text)
    if "--no-write" not in argv:
        write_section(TITLE, text)


if __name__ == "__main__":
    main(sys.argv[1:])
