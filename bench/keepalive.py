"""tabserve `/predict` and the hello-world app under the same gunicorn settings (the default
gthread workers), from wrk at concurrency 16, each with a connection per request and with
keep-alive connections; two alternated rounds of 8 s.

    .venv/bin/python -m bench.keepalive

Prints the rows of docs/benchmarks.md's "Keep-alive" section (pasted there by hand).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from sklearn.datasets import load_breast_cancer

from bench.loadgen import run_load
from bench.scenarios import HelloServer
from shared.config import Settings
from shared.models.store import ModelStore
from shared.models.training import train_demo
from tests.servers import ApiServer, RedisServer, tabserve_env


def main() -> None:
    data = load_breast_cancer()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_demo(ModelStore(work / "artifacts"))
        bodies = work / "bodies.jsonl"
        bodies.write_text("".join(
            json.dumps({"features": dict(zip(map(str, data.feature_names), row.tolist(),
                                             strict=True))}) + "\n" for row in data.data[:100]))
        redis = RedisServer(work / "redis")
        settings = Settings(artifacts_dir=work / "artifacts", data_dir=str(work / "data"),
                            redis_url=redis.url)
        api = ApiServer(tabserve_env(settings.as_env()), work, workers=2)
        hello = HelloServer(work, 2)
        try:
            for rnd in range(2):
                for name, url in (("tabserve /predict", api.url + "/predict"),
                                  ("hello-world", hello.url + "/predict")):
                    for close in (True, False):
                        run_load("wrk", url, bodies, 16, 2, close)  # warm-up
                        r = run_load("wrk", url, bodies, 16, 8, close)
                        print(f"| {rnd + 1} | {name} | {'close' if close else 'keep-alive'} | "
                              f"{r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |",
                              flush=True)
        finally:
            hello.stop()
            api.stop()
            redis.stop()


if __name__ == "__main__":
    main()
