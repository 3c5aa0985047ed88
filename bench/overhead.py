"""Monitoring overhead on /predict: the same API with metrics, drift and the prediction log
on (the default) and off (TABSERVE_MONITORING=0), alternated, under the same load; and what
the per-request JSON access line costs on top (the default, log level INFO, against WARNING).

    .venv/bin/python -m bench.overhead [--duration 10] [--rounds 3]

Single-row breast-cancer requests, 2 gunicorn sync workers, wrk (or the Python generator).
Writes (or replaces) its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from sklearn.datasets import load_breast_cancer

from bench.common import machine
from bench.loadgen import run_load, wrk_version
from bench.online_report import write_section
from shared.config import Settings
from shared.models.store import ModelStore
from shared.models.training import train_demo
from tests.servers import ApiServer, RedisServer, tabserve_env

TITLE = "Monitoring overhead on /predict"
# name: (monitoring, log level); "defaults" is tabserve as it ships
VARIANTS = {"defaults": (True, "INFO"), "monitoring": (True, "WARNING"),
            "neither": (False, "WARNING")}


def _bodies(path: Path) -> Path:
    data = load_breast_cancer()
    with open(path, "w") as fh:
        for row in data.data[:500]:
            fh.write(json.dumps({"features": dict(zip(data.feature_names, row.tolist(),
                                                      strict=True))}) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    tool = "wrk" if wrk_version() else "python"
    work = Path(tempfile.mkdtemp(prefix="tabserve-overhead-"))
    train_demo(ModelStore(work / "artifacts"))
    bodies = _bodies(work / "bodies.jsonl")
    redis = RedisServer(work / "redis")
    results: dict[tuple[str, int], list] = {}
    try:
        for _ in range(args.rounds):
            for variant, (monitoring, level) in VARIANTS.items():
                settings = Settings(artifacts_dir=work / "artifacts", redis_url=redis.url,
                                    data_dir=str(work / "data"), monitoring=monitoring,
                                    drift_interval_seconds=10, log_level=level)
                api = ApiServer(tabserve_env(settings.as_env()), work, workers=2)
                try:
                    run_load(tool, api.url + "/predict", bodies, 16, 2, False)  # warm-up
                    for c in args.concurrency:
                        r = run_load(tool, api.url + "/predict", bodies, c, args.duration,
                                     False)
                        results.setdefault((variant, c), []).append(r)
                        print(variant, c, round(r.rps), r.p50_ms, r.p99_ms, r.errors,
                              flush=True)
                finally:
                    api.stop()
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"## {TITLE}", "",
             f"Command: `python -m bench.overhead --duration {args.duration:g} --rounds "
             f"{args.rounds}` ({time.strftime('%Y-%m-%d')}, load by {tool})", "",
             f"Machine: {machine()}", "",
             "Medians over alternated rounds; monitoring = Prometheus metrics, drift windows "
             "and the prediction log for feedback; access log = one JSON line per request "
             "(log level INFO).", "",
             "| concurrency | monitoring | access log | req/s | p50 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|"]
    for c in args.concurrency:
        for variant, (monitoring, level) in VARIANTS.items():
            runs = results[(variant, c)]
            lines.append(
                f"| {c} | {'on' if monitoring else 'off'} | "
                f"{'on' if level == 'INFO' else 'off'} | "
                f"{statistics.median(r.rps for r in runs):,.0f} | "
                f"{statistics.median(r.p50_ms for r in runs):.3f} | "
                f"{statistics.median(r.p99_ms for r in runs):.3f} | "
                f"{sum(r.errors for r in runs)} |")
    lines.append("")
    for c in args.concurrency:
        on = statistics.median(r.p50_ms for r in results[("monitoring", c)])
        off = statistics.median(r.p50_ms for r in results[("neither", c)])
        rps_on = statistics.median(r.rps for r in results[("monitoring", c)])
        rps_off = statistics.median(r.rps for r in results[("neither", c)])
        lines.append(f"- concurrency {c}: p50 latency +{(on - off) / off:.1%} "
                     f"({on - off:+.3f} ms), throughput {rps_on / rps_off - 1:+.1%} with "
                     f"monitoring on; requirement < 10% of the request's latency: "
                     f"{'PASS' if (on - off) / off < 0.10 else 'FAIL'}")
        rps_log = statistics.median(r.rps for r in results[("defaults", c)])
        lines.append(f"  - the access log line on top: throughput {rps_log / rps_on - 1:+.1%} "
                     "(for reference)")
    text = "\n".join(lines) + "\n"
    print(text)
    write_section(f"## {TITLE}", text)


if __name__ == "__main__":
    main()
