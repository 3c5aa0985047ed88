"""Shared pieces of the benchmarks: data files, real servers, RSS sampling, report lines."""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sklearn.datasets import load_breast_cancer

OUT = Path(__file__).resolve().parent / "out"


def demo_table(rows: int) -> pa.Table:
    """`rows` rows of the breast-cancer features (the bundled rows, jittered, repeated)."""
    data = load_breast_cancer()
    rng = np.random.default_rng(0)
    base = data.data
    reps = rows // len(base) + 1
    X = np.tile(base, (reps, 1))[:rows]
    X = X * rng.normal(1.0, 0.01, size=X.shape)
    return pa.table({str(n): X[:, j] for j, n in enumerate(data.feature_names)})


def demo_file(rows: int, fmt: str) -> Path:
    """A cached CSV or Parquet file of `rows` demo rows under bench/out."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"demo-{rows}.{fmt}"
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    if fmt == "parquet":
        pq.write_table(demo_table(rows), tmp, row_group_size=100_000)
    else:
        with pacsv.CSVWriter(tmp, demo_table(1).schema) as writer:
            for start in range(0, rows, 500_000):
                writer.write_table(demo_table(min(500_000, rows - start)))
    tmp.rename(path)
    return path


class RSSSampler:
    """Peak resident memory of a process tree, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_tree = 0
        self.peak_single = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                rss = [p.memory_info().rss for p in procs]
                self.peak_tree = max(self.peak_tree, sum(rss))
                self.peak_single = max(self.peak_single, max(rss))
            except psutil.Error:
                pass
            time.sleep(0.02)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def predict_stack(work: Path, rows: int = 100) -> tuple[Path, Any, Any]:
    """For a /predict load run in `work`: the demo model trained into work/artifacts, a file
    of `rows` bodies (one breast-cancer row each, as wrk's bench/post.lua sends them), a
    redis-server started there (the caller stops it) and the settings for the servers."""
    import json

    from shared.config import Settings
    from shared.models.store import ModelStore
    from shared.models.training import train_demo
    from tests.servers import RedisServer

    train_demo(ModelStore(work / "artifacts"))
    data = load_breast_cancer()
    names = [str(n) for n in data.feature_names]
    bodies = work / "bodies.jsonl"
    bodies.write_text("".join(
        json.dumps({"features": dict(zip(names, row.tolist(), strict=True))}) + "\n"
        for row in data.data[:rows]))
    redis = RedisServer(work / "redis")
    settings = Settings(artifacts_dir=work / "artifacts", data_dir=str(work / "data"),
                        redis_url=redis.url)
    return bodies, redis, settings


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process and its live descendants so far."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in (root, *root.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def machine() -> str:
    """One line on the machine and versions."""
    import pandas
    import sklearn
    import xgboost

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, pyarrow {pa.__version__}, "
            f"pandas {pandas.__version__}, scikit-learn {sklearn.__version__}, "
            f"xgboost {xgboost.__version__}")
