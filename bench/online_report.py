"""The online benchmark's markdown section and the ratios the project must meet."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import machine
from bench.protocols_report import KEYS as PROTOCOLS
from bench.protocols_report import protocol_check, protocol_tables
from bench.scenarios import ATTEMPTS, BUSY_PERCENT

if TYPE_CHECKING:
    from bench.loadgen import LoadResult
    from bench.scenarios import Config, Results

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SERVERS = (("tabserve", "tabserve `/predict`"),
           ("tabserve-keepalive", "tabserve `/predict`, keep-alive client"),
           ("hello", "hello-world Flask"),
           ("hello-keepalive", "hello-world Flask, keep-alive client"),
           ("hello-after", "hello-world Flask, again after tabserve"),
           ("hello-after-keepalive", "hello-world Flask, again after tabserve, keep-alive client"),
           ("mlflow", "mlflow, `dataframe_split`"), ("mlflow-inputs", "mlflow, `inputs`"),
           ("mlflow-keepalive", "mlflow, `dataframe_split`, keep-alive client"),
           ("mlflow-shipped", "mlflow as started by default (no thread pinning), "
                              "`dataframe_split`"),
           *((f"mlserver-pw{n}{key}", f"MLServer, `parallel_workers` {n}{what}{client}")
             for n, what in ((0, " (inference in its HTTP process)"), (1, " (its default)"),
                             (2, ""))
             for key, client in (("", ""), ("-keepalive", ", keep-alive client"))))
# The ratios are against MLflow's best pinned variant; the default start is for reference.
MLFLOW = ("mlflow", "mlflow-inputs", "mlflow-keepalive")
HELLO = ("hello", "hello-after")
HELLO_KEEPALIVE = ("hello-keepalive", "hello-after-keepalive")
# tabserve's variants: the peer ratios use its best, as they use each peer's best; its share
# of hello-world compares it with hello-world in the same connection mode.
TABSERVE = ("tabserve", "tabserve-keepalive")
MLSERVER = tuple(key for key, _ in SERVERS if key.startswith("mlserver"))  # ratio: the best
MLSERVER_FACTOR = 3.0  # tabserve req/s over MLServer's best, at concurrency 16 (issue 18)
CEILING_SHARE = 0.65  # of hello-world's req/s at concurrency 16 (issue 18; round one: 45%)
P99_FACTOR = 8.0  # mlflow's p99 over tabserve's, at concurrency 16
OVERHEAD_MS = 1.0  # tabserve p50 at concurrency 1 over the in-process model time


@dataclass
class Check:
    what: str
    measured: str
    target: str
    passed: bool | None  # None: not measured
    goal: str = ""  # its row in bench.goals (issue 18's table), if it is one


def checks(results: Results) -> list[Check]:
    """The online targets, each computed from this run's numbers."""
    out = []
    for index, (label, factor) in enumerate(results.models):
        tab_key, tab = _best_tabserve(results, label, 16)
        mlflow = [r for key in MLFLOW if (r := _at(results, label, key, 16))]
        if tab and mlflow:
            # against MLflow's best variant: its highest req/s and its lowest p99
            ratio = tab.rps / max(r.rps for r in mlflow)
            out.append(Check(f"{label}: tabserve req/s ÷ best mlflow req/s, c=16",
                             f"{ratio:.1f}×", f"≥ {factor:g}×", ratio >= factor,
                             "mlflow" if index == 0 else ""))
            p99 = min(r.p99_ms for r in mlflow) / tab.p99_ms
            out.append(Check(f"{label}: best mlflow p99 ÷ tabserve p99, c=16", f"{p99:.1f}×",
                             f"≥ {P99_FACTOR:g}×", p99 >= P99_FACTOR))
        else:
            out.append(Check(f"{label}: tabserve vs mlflow, c=16", "not measured",
                             f"≥ {factor:g}× req/s, ≥ {P99_FACTOR:g}× p99", None))
        out.append(_mlserver_check(results, label, tab, "mlserver" if index == 0 else ""))
        out += _hello_check(results, label, tab_key, tab, required=index == 0)
        tab1 = _at(results, label, "tabserve", 1)
        raw = results.raw.get(label)
        if tab1 and raw:
            over = tab1.p50_ms - raw["numpy_p50_ms"]
            out.append(Check(f"{label}: tabserve p50 at c=1 − in-process predict_proba",
                             f"{tab1.p50_ms:.2f} − {raw['numpy_p50_ms']:.2f} = {over:.2f} ms",
                             f"≤ {OVERHEAD_MS:g} ms", over <= OVERHEAD_MS))
        out.append(Check(*protocol_check(results, label), "protocols" if index == 0 else ""))
    errors = sum(r.errors for (_, server), runs in results.runs.items()
                 if server in TABSERVE or server in PROTOCOLS for r in runs)
    out.append(Check("tabserve errors, all runs (`/predict` and the protocol endpoints)",
                     str(errors), "0", errors == 0))
    return out


def _hello_check(results: Results, label: str, tab_key: str, tab: LoadResult | None,
                 required: bool) -> list[Check]:
    """tabserve's share of hello-world at concurrency 16: the median of the interleaved
    rounds' shares where they ran (scenarios.hello_rounds, keep-alive), the sweeps' figure
    beside it; else the sweeps' alone, in tabserve's best mode."""
    keepalive = tab_key == "tabserve-keepalive"
    hello = _hello_rps(results, 16, keepalive)
    mode = "keep-alive clients" if keepalive else "a connection per request"
    swept = tab.rps / hello if tab and hello else None
    rounds = results.hello_rounds.get(label)
    what = f"{label}: tabserve req/s ÷ hello-world req/s, c=16"
    goal = "hello_share" if required else ""
    if rounds:
        shares = [t / h for t, h in rounds if h]
        share = statistics.median(shares)
        measured = (f"{share:.0%} (rounds {min(shares):.0%}-{max(shares):.0%}"
                    + (f"; the sweeps, minutes apart: {swept:.0%}" if swept else "") + ")")
        what += (f", keep-alive clients, median of {len(shares)} interleaved rounds")
    elif swept is not None:
        share, measured = swept, f"{swept:.0%}"
        what += f", {mode} (tabserve's best mode)"
    else:
        return []
    if not required:
        what += " (for reference; the target is the demo's)"
    return [Check(what, measured, f"≥ {CEILING_SHARE:.0%}",
                  share >= CEILING_SHARE if required else None, goal)]


def _mlserver_check(results: Results, label: str, tab: LoadResult | None,
                    goal: str) -> Check:
    """tabserve against MLServer at its best parallel_workers, concurrency 16."""
    runs = [(key, r) for key in MLSERVER if (r := _at(results, label, key, 16))]
    what = f"{label}: tabserve req/s ÷ best MLServer req/s, c=16"
    if not (tab and runs):
        return Check(what, "not measured", f"≥ {MLSERVER_FACTOR:g}×", None, goal)
    key, best = max(runs, key=lambda kr: kr[1].rps)
    ratio = tab.rps / best.rps
    return Check(f"{what} (best: {dict(SERVERS)[key].removeprefix('MLServer, ')})",
                 f"{ratio:.1f}×", f"≥ {MLSERVER_FACTOR:g}×", ratio >= MLSERVER_FACTOR, goal)


def _best_tabserve(results: Results, label: str,
                   concurrency: int) -> tuple[str, LoadResult | None]:
    """tabserve's variant with the most req/s, and its run."""
    runs = [(key, r) for key in TABSERVE if (r := _at(results, label, key, concurrency))]
    return max(runs, key=lambda kr: kr[1].rps) if runs else ("tabserve", None)


def _at(results: Results, label: str, server: str, concurrency: int) -> LoadResult | None:
    for r in results.runs.get((label, server), []):
        if r.concurrency == concurrency:
            return r
    return None


def report(results: Results, config: Config, command: str, quick: bool) -> tuple[str, str]:
    """The section title and its markdown."""
    title = f"## Online /predict vs hello-world and mlflow ({'quick' if quick else 'full'} run)"
    lines = [title, "", f"Run {time.strftime('%Y-%m-%d %H:%M')}. Command: `{command}`", "",
             f"Machine: {machine()}; {os.cpu_count()} CPUs shared by the servers and the load "
             "generator.", "",
             _other_cpu(results), "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in results.versions.items()) + ".", "",
             _method(config), ""]
    lines += ["### In-process model time (one row, one thread)", "",
              "The model's own `predict_proba` (the raw in-process time the p50 target "
              "refers to), and tabserve's predict on the same rows through "
              "shared/models/fastpredict.py where the model has a fast path (the forest's own "
              "native code; XGBoost's trees as NumPy arrays for a few rows, "
              "shared/models/xgbtrees.py), identical to the bit (tests/test_fastpredict.py).", "",
              "| model | `predict_proba`, 1-row NumPy: p50 (p99) ms "
              "| 1-row DataFrame: p50 (p99) ms | tabserve's predict, 1 row: p50 (p99) ms "
              "| other CPU % |", "|---|---|---|---|---|"]
    for label, raw in results.raw.items():
        served = (f"{raw['served_p50_ms']:.3f} ({raw['served_p99_ms']:.3f})"
                  if "served_p50_ms" in raw else "")
        lines.append(f"| {label} | {raw['numpy_p50_ms']:.3f} ({raw['numpy_p99_ms']:.3f}) | "
                     f"{raw['dataframe_p50_ms']:.3f} ({raw['dataframe_p99_ms']:.3f}) | "
                     f"{served} | {raw['other_cpu']:.0f} |")
    for label, _ in results.models:
        lines += ["", f"### {label}: single-row requests", "",
                  "| concurrency | server | req/s | p50 ms | p99 ms | errors | other CPU % |",
                  "|---|---|---|---|---|---|---|"]
        for c in config.concurrency:
            for server, name in SERVERS:
                r = _at(results, "" if server in (*HELLO, *HELLO_KEEPALIVE) else label,
                        server, c)
                if r is None:
                    lines.append(f"| {c} | {name} | not measured | | | | |")
                    continue
                kinds = ", ".join(f"{k} {v}" for k, v in r.error_kinds.items())
                lines.append(f"| {c} | {name} | {r.rps:,.0f} | {r.p50_ms:.2f} | "
                             f"{r.p99_ms:.2f} | {r.errors}{f' ({kinds})' if kinds else ''} | "
                             f"{r.other_cpu or 0:.0f} |")
    lines += protocol_tables(results, config)
    lines += _hello_rounds_table(results, config)
    lines += ["", "### Targets", "", "| target | measured | required | result |",
              "|---|---|---|---|"]
    for check in checks(results):
        verdict = {True: "pass", False: "**FAIL**", None: "—"}[check.passed]
        lines.append(f"| {check.what} | {check.measured} | {check.target} | {verdict} |")
    lines += _variant_ratios(results) + _ceilings(results)
    notes = [*_busy_note(results), *results.notes]
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    return title, "\n".join(lines) + "\n"


def record_goals(results: Results, command: str, quick: bool) -> None:
    """This run's rows of issue 18's table (bench.goals)."""
    from bench.goals import record  # bench.goals writes its section with this module

    for check in checks(results):
        if check.goal:
            record(check.goal, check.measured, check.passed, command,
                   "quick run" if quick else "")


def _other_cpu(results: Results) -> str:
    kept = [r.other_cpu or 0.0 for runs in results.runs.values() for r in runs]
    mean = sum(kept) / len(kept) if kept else 0.0
    text = (f"Other processes (not this benchmark's) used "
            f"{results.other_cpu_before:.0f}% of the machine's CPU just before the "
            f"run and {mean:.0f}% on average during the measured runs (at most "
            f"{max(kept, default=0):.0f}% in one; column \"other CPU %\"). A run during which "
            f"they used more than {BUSY_PERCENT:g}% is repeated, up to {ATTEMPTS} times, and "
            "the quietest attempt kept. Load average (1, 5, 15 min) at the start "
            f"{_load(results.load_before)}, at the end {_load(results.load_after)}.")
    if max(kept, default=0) > BUSY_PERCENT:
        text += (" **The machine was not quiet for every run: rows with a high \"other CPU\" "
                 "are lower and noisier than a quiet machine gives.**")
    return text


def _busy_note(results: Results) -> list[str]:
    """A plain word when the machine had more runnable processes than cores."""
    cores = os.cpu_count() or 1
    if max(results.load_before[0], results.load_after[0]) <= cores:
        return []
    return [f"**Busy machine**: load average {_load(results.load_before)} at the start and "
            f"{_load(results.load_after)} at the end on {cores} cores (other work was running): "
            "every server's figures are lower and noisier than a quiet machine gives, and the "
            "ratios less certain. Re-run on a quiet machine."]


def _load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def _variant_ratios(results: Results) -> list[str]:
    """tabserve against each MLflow variant at concurrency 16 (the targets use the best)."""
    names = dict(SERVERS)
    lines = ["", "tabserve (its best mode) against each MLflow and MLServer variant at "
             "concurrency 16:", "",
             "| model | peer variant | tabserve req/s ÷ peer's | peer p99 ÷ tabserve's |",
             "|---|---|---|---|"]
    for label, _ in results.models:
        _, tab = _best_tabserve(results, label, 16)
        for key in (*MLFLOW, "mlflow-shipped", *MLSERVER):
            ml = _at(results, label, key, 16)
            if tab and ml:
                lines.append(f"| {label} | {names[key]} | {tab.rps / ml.rps:.1f}× | "
                             f"{ml.p99_ms / tab.p99_ms:.1f}× |")
    return lines if len(lines) > 5 else []


def _hello_rounds_table(results: Results, config: Config) -> list[str]:
    """Each interleaved round of tabserve's /predict and hello-world (keep-alive, c=16)."""
    lines: list[str] = []
    for label, rounds in results.hello_rounds.items():
        lines += ["", f"### {label}: `/predict` and hello-world in interleaved rounds", "",
                  f"Keep-alive clients at concurrency 16, {config.duration:g} s each, the two "
                  "servers' runs back to back (who goes first alternating) while both are up; "
                  "the share of hello-world target uses the rounds' median.", "",
                  "| round | tabserve `/predict` req/s | hello-world req/s | share |",
                  "|---|---|---|---|"]
        lines += [f"| {i} | {t:,.0f} | {h:,.0f} | {t / h:.0%} |"
                  for i, (t, h) in enumerate(rounds, 1) if h]
    return lines


def _hello_rps(results: Results, concurrency: int, keepalive: bool = False) -> float | None:
    """The HTTP ceiling: the mean of hello-world's runs before and after tabserve's, in one
    connection mode."""
    keys = HELLO_KEEPALIVE if keepalive else HELLO
    runs = [r for key in keys if (r := _at(results, "", key, concurrency))]
    return sum(r.rps for r in runs) / len(runs) if runs else None


def _ceilings(results: Results) -> list[str]:
    """The most tabserve could serve here: neither more than the HTTP ceiling (hello-world)
    nor more rows than the cores can score, whatever the server does."""
    hello = _hello_rps(results, 16)
    cores = os.cpu_count() or 1
    lines = []
    for label, factor in results.models:
        raw = results.raw.get(label)
        if not (hello and raw):
            continue
        model_bound = cores * 1000 / raw["numpy_p50_ms"]
        served_ms = raw.get("served_p50_ms", raw["numpy_p50_ms"])
        served_bound = cores * 1000 / served_ms
        ceiling = min(hello, served_bound)
        peers = []
        for name, keys, target in (("MLflow", MLFLOW, factor), ("MLServer", MLSERVER,
                                                                MLSERVER_FACTOR)):
            if runs := [r for key in keys if (r := _at(results, label, key, 16))]:
                best = max(r.rps for r in runs)
                peers.append((name, best, f"about {ceiling / best:.1f}× {name}'s best "
                              f"({best:,.0f} req/s) against the {target:g}× target"))
        if not peers:
            continue
        lines.append(f"- {label}: a server calling `predict_proba` can serve at most "
                     f"{cores} cores ÷ {raw['numpy_p50_ms']:.2f} ms = {model_bound:,.0f} req/s; "
                     f"tabserve at most min(hello-world {hello:,.0f}, {cores} cores ÷ "
                     f"{served_ms:.2f} ms = {served_bound:,.0f}) = {ceiling:,.0f} req/s, "
                     + ", ".join(text for _, _, text in peers) + ".")
        for name, best, _ in peers:
            if best > 1.1 * model_bound:
                lines[-1] += (f" **{name}'s best is above what the cores can score at the "
                              "in-process model time: that run is suspect; run again.**")
    if lines:
        lines = ["", "Ceilings at concurrency 16 on this machine (the load generator's share "
                 "of the cores is not even counted, and the model time varies by some 10% "
                 "from one process to another):", "", *lines]
    return lines


def _method(config: Config) -> str:
    tool = ("`wrk` (bench/post.lua), 2 threads (1 at concurrency 1), on the same 2 cores as "
            "the server" if config.tool == "wrk" else
            "bench/loadgen.py (Python asyncio, one process) on the same 2 cores as the server")
    return f"""How: each server runs alone with {config.workers} workers and one model thread per \
worker, is warmed up for {config.warmup:g} s, then loaded for {config.duration:g} s at each \
concurrency (closed loop: each connection sends its next request when the answer is in) by \
{tool}. Every request is one row of scikit-learn's breast-cancer data, the 569 rows in turn: \
`{{"features": {{...}}}}` to tabserve and hello-world; to MLflow's `/invocations` either \
`{{"dataframe_split": {{"columns": [...], "data": [[...]]}}}}` (named columns, like tabserve's \
request) or `{{"inputs": [[...]]}}` (a bare 2-D array, MLflow's leanest path to NumPy). Requests \
carry `Connection: close`, so every server pays for a connection per request; each server is \
measured again with keep-alive clients (tabserve and hello-world run tabserve's gevent worker, \
api/gevent_worker.py, which keeps connections), and each ratio to a peer uses tabserve's best \
mode and the peer's best variant; tabserve's share of hello-world compares the two in tabserve's \
best mode. What a keep-alive client gets from MLflow: uvicorn started with `--workers` listens on \
a socket created with protocol 0, so asyncio leaves Nagle's algorithm on for accepted connections \
and each answer waits for the client's delayed ACK (about 40 ms). The ratios below use MLflow's \
best variant. tabserve and hello-world run under gunicorn with api/gunicorn_conf.py; tabserve \
with its defaults (a JSON log line per request, Prometheus metrics, predictions buffered to a \
local Redis); MLflow's server is uvicorn (FastAPI) with `--workers {config.workers}` and \
`OMP_NUM_THREADS=1` (the same one model thread per worker as tabserve), and once more as a user \
starts it, without that (for reference: the ratios use the pinned variants). Seldon MLServer \
(`mlserver start`, its own venv in bench/out/mlserver-venv, settings.json on 127.0.0.1 with \
everything else at its defaults: gRPC and metrics on their own ports, access log on) serves the \
same pickles with mlserver-sklearn (`predict_proba` requested in each V2 JSON body: `{{"inputs": \
[{{"name": "input-0", "shape": [1, 30], "datatype": "FP64", "data": [...]}}], "outputs": \
[{{"name": "predict_proba"}}]}}`, to `/v2/models/<m>/infer`), with `OMP_NUM_THREADS=1`, at \
`parallel_workers` 0, 1 (its default) and 2, each from a `Connection: close` client and from a \
keep-alive one; its HTTP side is one uvicorn process whatever the setting. The ratio uses its \
best of these six. Hello-world runs before and after tabserve (the sweeps' ratio uses the mean \
of the two), and in interleaved rounds with tabserve's keep-alive `/predict`, seconds apart \
(the share of hello-world target uses the rounds' median). Before the load, answers are \
checked against the in-process model. In-process time: \
median over {config.raw_calls} calls, rows in turn, with no server running."""


def write_section(title: str, text: str) -> None:
    """Replace the section with this title in docs/benchmarks.md, or append it."""
    existing = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    lines = existing.rstrip("\n").split("\n")
    if title in lines:
        start = lines.index(title)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        lines[start:end] = text.rstrip("\n").split("\n") + ([""] if end < len(lines) else [])
    else:
        lines += ["", *text.rstrip("\n").split("\n")]
    DOCS.write_text("\n".join(lines) + "\n")
