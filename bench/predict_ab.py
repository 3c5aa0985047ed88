"""/predict over HTTP from two source trees, alternated in one run, beside hello-world: a
change's before and after on a noisy machine, where only figures of the same minutes compare.

    .venv/bin/python -m bench.predict_ab --before /tmp/tabserve-main [--after .] [--rounds 3]
                                         [--seconds 8] [--close]

Each round starts `tabserve api` (api/gunicorn_conf.py: its default worker class, 2 workers,
monitoring, the access log and the prediction log on, as users run it) from each tree in turn,
and the hello-world app, and runs wrk at 16 keep-alive connections (`--close`: a connection per
request) against each: the demo model, one breast-cancer row per request. Prints a table;
docs/benchmarks.md quotes it by hand.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import predict_stack, tree_cpu_seconds
from bench.loadgen import LoadResult, run_load
from bench.scenarios import HelloServer
from shared.config import Settings
from tests.servers import ApiServer, tabserve_env

# CPU microseconds of the server's processes per request answered, by server and round: on
# a noisy machine steadier than req/s, which other processes' load moves.
cpu_us: dict[str, list[float]] = {"before": [], "after": [], "hello": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the base")
    parser.add_argument("--after", type=Path, default=Path.cwd())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--close", action="store_true", help="a connection per request")
    parser.add_argument("--after-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the after server alone (a setting "
                        "tried against the same code)")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    results: dict[str, list[LoadResult]] = {"before": [], "after": [], "hello": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bodies, redis, settings = predict_stack(work)
        try:
            for rnd in range(args.rounds):
                order = ["before", "after", "hello"]
                order = order[rnd % 3:] + order[:rnd % 3]  # who goes first rotates
                for name in order:
                    extra = dict(e.split("=", 1) for e in args.after_env) if name == "after" \
                        else {}
                    r = _run(name, trees[name] if name != "hello" else None, extra, work,
                             settings, bodies, args.seconds, args.close)
                    results[name].append(r)
                    print(f"round {rnd + 1} {name:<6} {r.rps:8,.0f} req/s  p50 {r.p50_ms:.2f} "
                          f"ms  p99 {r.p99_ms:.2f} ms  errors {r.errors}  CPU "
                          f"{cpu_us[name][-1]:.0f} us/request", flush=True)
        finally:
            redis.stop()
    print(report(args, results))


def _run(name: str, tree: Path | None, extra: dict[str, str], work: Path, settings: Settings,
         bodies: Path, seconds: float, close: bool) -> LoadResult:
    server: HelloServer | ApiServer
    if tree is None:
        server = HelloServer(work, 2)
    else:
        server = ApiServer(tabserve_env(settings.as_env(), {"PYTHONPATH": str(tree), **extra}),
                           work, workers=2, cwd=tree)
    url = server.url + "/predict"
    try:
        run_load("wrk", url, bodies, 16, 2, close)  # warm-up
        before = tree_cpu_seconds(server.pid)
        result = run_load("wrk", url, bodies, 16, seconds, close)
        spent = tree_cpu_seconds(server.pid) - before
        cpu_us[name].append(spent * 1e6 / max(1, result.requests))
        return result
    finally:
        server.stop()
        time.sleep(1)


def report(args: argparse.Namespace, results: dict[str, list[LoadResult]]) -> str:
    hello = statistics.mean(r.rps for r in results["hello"])
    lines = [f"wrk c=16, {'close' if args.close else 'keep-alive'}, {args.seconds:g} s x "
             f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f}", "",
             "| server | req/s per round | mean req/s | share of hello-world | p50 ms | p99 ms "
             "| server CPU µs/request |", "|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        mean = statistics.mean(r.rps for r in runs)
        lines.append(f"| {name} | {', '.join(f'{r.rps:,.0f}' for r in runs)} | {mean:,.0f} | "
                     f"{mean / hello:.0%} | {statistics.median(r.p50_ms for r in runs):.2f} | "
                     f"{statistics.median(r.p99_ms for r in runs):.2f} | "
                     f"{', '.join(f'{c:.0f}' for c in cpu_us[name])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
