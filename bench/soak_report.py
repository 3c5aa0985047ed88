"""The soak's section of docs/benchmarks.md: requests, jobs, memory, events."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from bench.common import machine
from bench.soak_load import (
    JobStream,
    PredictLoad,
    Sample,
    log_counts,
    lost_attempts,
    succeeded_lines,
)

if TYPE_CHECKING:
    from bench.soak import Soak

TITLE = "Soak: /predict and jobs for 10 minutes, workers killed, Redis restarted"
RSS_TOLERANCE = 0.10  # flat: the end within 10% of the first sample after the warm-up
REDIS_TOLERANCE = 2 << 20  # flat: Redis's memory less its kept data within 2 MiB
MB = 1 << 20


def _minute_rows(load: PredictLoad, soak: Soak) -> list[str]:
    rows = []
    minutes = int(np.ceil(max((a.at for a in load.answers), default=0) / 60))
    for m in range(minutes):
        got = [a for a in load.answers if m * 60 <= a.at < (m + 1) * 60]
        ok = np.asarray([a.seconds for a in got if a.ok]) * 1e3
        p50, p99, top = (np.percentile(ok, [50, 99]).tolist() + [ok.max()]) if len(ok) else \
            (0.0, 0.0, 0.0)
        s = _at(soak.samples, min((m + 1) * 60, soak.samples[-1].at))
        used = f"{s.redis_used / MB:.1f}" if s.redis_used is not None else "down"
        memory = (f"{s.rss['api'] / MB:.0f} | {s.rss['steady worker'] / MB:.0f} | "
                  f"{s.rss['churn worker'] / MB:.0f} | {used}")
        events = "; ".join(f"{t:.0f} s: {e}" for t, e in soak.events
                           if m * 60 <= t < (m + 1) * 60) or "-"
        rows.append(f"| {m + 1} | {len(got)} | {len(got) - len(ok)} | {p50:.1f} | {p99:.1f} | "
                    f"{top:.0f} | {memory} | {events} |")
    return rows


def _at(samples: list[Sample], t: float) -> Sample:
    return min(samples, key=lambda s: abs(s.at - t))


def _memory(soak: Soak, seconds: float) -> tuple[list[str], list[str]]:
    """The memory table (start, middle, end) and the flatness verdicts."""
    samples = soak.samples
    warm = _at(samples, min(60.0, seconds / 4))
    picked = [("start (after warm-up)", warm), ("middle", _at(samples, seconds / 2)),
              ("end", samples[-1])]
    lines = ["| when | s | API (gunicorn, 3 processes) MB | steady worker MB | "
             "churn worker MB | Redis used_memory MB | Redis: tabserve keys MB | "
             "used less tabserve keys MB | keys | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, s in picked:
        used = f"{s.redis_used / MB:.1f}" if s.redis_used is not None else "down"
        kept = f"{s.kept / MB:.1f}" if s.kept is not None else "-"
        less = f"{(s.redis_used - s.kept) / MB:.1f}" if s.redis_used and s.kept else "-"
        lines.append(f"| {label} | {s.at:.0f} | {s.rss['api'] / MB:.0f} | "
                     f"{s.rss['steady worker'] / MB:.0f} | {s.rss['churn worker'] / MB:.0f} | "
                     f"{used} | {kept} | {less} | {s.keys} | {s.load:.1f} |")
    end = samples[-1]
    verdicts = []
    for name in ("api", "steady worker"):
        grew = end.rss[name] / max(warm.rss[name], 1) - 1
        verdicts.append(f"{name} RSS {warm.rss[name] / MB:.0f} → {end.rss[name] / MB:.0f} MB "
                        f"({grew:+.1%}): {'PASS' if grew <= RSS_TOLERANCE else 'FAIL'}")
    peak = max(s.rss["api"] for s in samples if s.at >= warm.at)
    verdicts.append(f"API peak after warm-up {peak / MB:.0f} MB")
    redis_ok = [s for s in samples if s.kept is not None and s.at >= warm.at]
    if redis_ok and warm.kept is not None and end.kept is not None \
            and warm.redis_used is not None and end.redis_used is not None:
        rest = [s.redis_used - s.kept for s in redis_ok
                if s.redis_used is not None and s.kept is not None]
        spread = max(rest) - min(rest)
        verdicts.append(f"Redis used_memory less tabserve's keys between {min(rest) / MB:.1f} "
                        f"and {max(rest) / MB:.1f} MB after warm-up (flat: within "
                        f"{REDIS_TOLERANCE / MB:g} MB): "
                        f"{'PASS' if spread <= REDIS_TOLERANCE else 'FAIL'}")
        verdicts.append(f"Redis used_memory itself {warm.redis_used / MB:.1f} → "
                        f"{end.redis_used / MB:.1f} MB: not flat by design, it grows with the "
                        f"data tabserve keeps for its TTL (7 days): tabserve's keys "
                        f"{warm.kept / MB:.1f} → {end.kept / MB:.1f} MB, by kind at the end "
                        f"{_kinds(end)}, at the start {_kinds(warm)}")
    return lines, verdicts


def _kinds(sample: Sample) -> str:
    kinds = sorted((sample.kinds or {}).items(), key=lambda kv: -kv[1])
    return ", ".join(f"`{kind}` {size / MB:.2f} MB" for kind, size in kinds[:6])


def _hits(soak: Soak, stream: JobStream) -> list[str]:
    """The attempts the faults cost: which job, when its attempt was given up, its end."""
    lines = []
    for lost in lost_attempts(soak.logs, soak.wall0):
        job = stream.jobs.get(lost.job_id)
        end = (f"{job.status} at {job.finished:.0f} s, {job.attempts} attempt(s), ledger "
               f"{job.ledger or 'not checked'}" if job and job.finished else "never finished")
        rows = job.rows if job else "?"
        lines.append(f"  - {lost.at:.0f} s: job {lost.job_id}{lost.part} ({rows} rows): "
                     f"attempt {lost.attempt} {lost.why}; the job {end}")
    return [f"- attempts lost to the faults, from the workers' logs: {len(lines)}", *lines]


def _logs(soak: Soak) -> list[str]:
    counts = log_counts(soak.logs)
    return [f"- {who}' logs: " + ", ".join(f"{what}: {n}" for what, n in said.items())
            if who == "workers" else f"- the {who}'s log: " + ", ".join(
                f"{what}: {n}" for what, n in said.items() if "error" in what or "trace" in what)
            for who, said in counts.items()]


def _jobs(stream: JobStream, soak: Soak) -> list[str]:
    jobs = list(stream.jobs.values())
    status = Counter(j.status for j in jobs)
    ledger_ok = sum(j.ledger == "ok" for j in jobs)
    once = Counter(succeeded_lines(soak.logs, j.id) for j in jobs)
    retried = [j for j in jobs if j.attempts > 1]
    bad = [j for j in jobs if j.ledger != "ok"]
    lines = [f"- jobs submitted and accepted: {len(jobs)} ({Counter(j.rows for j in jobs)} by "
             f"rows; split into parts: {sum(j.parts > 0 for j in jobs)}); submissions refused "
             f"and retried: {sum(stream.refused.values())}"
             + (f" ({dict(stream.refused)})" if stream.refused else ""),
             f"- final status: {dict(status)}; ledger (every key once, in order) ok for "
             f"{ledger_ok} of {len(jobs)}",
             f"- workers' logs saying `job <id>: succeeded`, jobs by count: {dict(once)}",
             f"- jobs that needed more than one attempt: {len(retried)} "
             f"({Counter((j.attempts, (j.retry or {}).get('reason')) for j in retried)})",
             f"- errors while following jobs (retried): {sum(stream.poll_errors.values())}"
             + (f" ({dict(stream.poll_errors)})" if stream.poll_errors else "")]
    lines += [f"  - job {j.id} ({j.rows} rows): status {j.status}, ledger {j.ledger or 'none'}"
              for j in bad[:20]]
    passed = ledger_ok == len(jobs) and set(once) == {1} and status == {"succeeded": len(jobs)}
    lines.append(f"- every job succeeded exactly once: {'PASS' if passed else 'FAIL'}")
    return lines


def _requests(load: PredictLoad) -> list[str]:
    failed = [a for a in load.answers if not a.ok]
    why = Counter(a.reason for a in failed)
    lines = [f"- /predict requests sent: {len(load.answers)}, failed: {len(failed)}: "
             f"{'PASS' if not failed else 'FAIL'}"]
    lines += [f"  - {n} × {reason}" for reason, n in why.most_common(10)]
    if failed:
        lines.append(f"  - at (s): {', '.join(f'{a.at:.1f}' for a in failed[:30])}")
    return lines


def report(args: argparse.Namespace, soak: Soak, load: PredictLoad, stream: JobStream,
           load_start: tuple[float, ...], load_end: tuple[float, ...]) -> str:
    seconds = args.minutes * 60
    memory, verdicts = _memory(soak, seconds)
    lines = [f"## {TITLE}", "",
             f"Command: `python -m bench.soak --minutes {args.minutes:g}` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Machine: {machine()}. Load average (1, 5, 15 min) at the start "
             f"{', '.join(f'{x:.2f}' for x in load_start)}, at the end "
             f"{', '.join(f'{x:.2f}' for x in load_end)}: the two cores are shared with the "
             "soak's own client and with other engineers' test runs, so latencies are those "
             "of a busy machine.", "",
             f"redis-server with `--appendonly yes`; `tabserve api` (gunicorn, 2 workers, "
             f"gthread); two `tabserve worker -c 1`, `TABSERVE_PART_ROWS={args.part_rows}`, "
             f"the rest tabserve's defaults (job lease 30 s). /predict: {args.rate:g} "
             f"requests/s, open loop, {args.threads} keep-alive clients, one breast-cancer row "
             "each, a failure is any answer but 200 with a prediction, or none within 10 s. "
             f"Jobs: a CSV every {args.job_every:g} s of "
             f"{' and '.join(map(str, args.rows))} rows in turn with a `key` column, "
             "followed to their end by a client that downloads the "
             "result, checks the ledger (every key once, in order) and deletes the job. "
             f"The \"churn\" worker is SIGKILLed (process group) every {args.kill_every:g} s, "
             "waiting up to 30 s for it to be scoring, and a new one started; the \"steady\" "
             "worker runs throughout. Redis is stopped with SIGTERM once, halfway, and started "
             "again on the same port and directory. Memory sampled every 10 s.", "",
             *_requests(load), *_jobs(stream, soak), *_hits(soak, stream), *_logs(soak), "",
             "Per minute (memory: the sample nearest the minute's end, MB):", "",
             "| minute | /predict requests | failed | p50 ms | p99 ms | max ms | API RSS | "
             "steady worker RSS | churn worker RSS | Redis used_memory | events |",
             "|---|---|---|---|---|---|---|---|---|---|---|", *_minute_rows(load, soak), "",
             *memory, "", *[f"- {v}" for v in verdicts], "",
             "Logs of every process: `bench/out/soak/` (not committed)."]
    return "\n".join(lines) + "\n"
