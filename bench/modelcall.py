"""One row through the demo XGBoost model, in a tight loop and amid a server's other work: the
per-call CPU of libxgboost and of its trees as NumPy arrays (shared/models/xgbtrees.py).

    .venv/bin/python -m bench.modelcall [--calls 3000] [--no-write]

In process, one thread. "Amid requests": between two calls, the Flask app answers a request
(GET /models through its test client), as a server's worker does between two predictions;
only the model call is timed. Both paths are checked to give the model's own output first.

Writes (or replaces) its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer

from bench.common import machine
from bench.online_report import write_section
from shared.config import Settings
from shared.models import fastpredict
from shared.models.store import ModelStore
from shared.models.training import train_demo

TITLE = "One XGBoost row: libxgboost or its trees as arrays, in and out of a server's rhythm"


def _paths(model: object, probe: np.ndarray) -> dict[str, Callable[[np.ndarray], object]]:
    arrays = fastpredict.compile_fast_path(model, probe)
    saved = fastpredict.ARRAY_CELLS
    fastpredict.ARRAY_CELLS = 0  # the same fast path with libxgboost for every row count
    try:
        native = fastpredict.compile_fast_path(model, probe)
    finally:
        fastpredict.ARRAY_CELLS = saved
    assert arrays is not None and native is not None and "arrays" in arrays.kind
    return {"libxgboost (proxy DMatrix, no Python wrapper)": native,
            "trees as NumPy arrays": arrays}


def _time(fn: Callable[[np.ndarray], object], rows: list[np.ndarray], calls: int,
          between: Callable[[], object] | None) -> list[float]:
    times = []
    for i in range(calls):
        if between is not None:
            between()
        row = rows[i % len(rows)]
        started = time.perf_counter()
        fn(row)
        times.append((time.perf_counter() - started) * 1e6)
    return times[calls // 10:]  # the first tenth warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "artifacts")
        train_demo(store)
        settings = Settings(artifacts_dir=Path(tmp) / "artifacts", monitoring=False,
                            access_log=False, redis_url="redis://127.0.0.1:9/0")
        os.environ.update(settings.as_env())
        from api import create_app

        app = create_app(settings)
        runtime = app.extensions["tabserve"]
        loaded = runtime.models.resolve(None, settings.default_model)
        data = load_breast_cancer().data
        rows = [np.ascontiguousarray(data[i:i + 1]) for i in range(len(data))]
        client = app.test_client()

        def request() -> object:
            return client.get("/models")

        results = []
        for label, path in _paths(loaded.model, data[:64]).items():
            for row in rows[:50]:
                own = loaded.model.predict_proba(row)
                assert np.asarray(path(row)).tobytes() == own.tobytes(), label
            tight = _time(path, rows, args.calls, None)
            amid = _time(path, rows, args.calls, request)
            results.append((label, tight, amid))
    lines = [f"## {TITLE}", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M')}. Command: "
             f"`.venv/bin/python -m bench.modelcall --calls {args.calls}`", "",
             f"Machine: {machine()}.", "", __doc__.split("\n\n")[2].replace("\n", " "), "",
             "| path | tight loop: p50 (mean) us | amid requests: p50 (mean) us |",
             "|---|---|---|"]
    for label, tight, amid in results:
        lines.append(f"| {label} | {statistics.median(tight):.1f} "
                     f"({statistics.fmean(tight):.1f}) | {statistics.median(amid):.1f} "
                     f"({statistics.fmean(amid):.1f}) |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(f"## {TITLE}", text)


if __name__ == "__main__":
    main()
