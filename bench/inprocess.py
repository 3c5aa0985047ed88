"""In-process model time: what one-row scoring costs with no server in the way."""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits


def measure_raw(model: Any, names: list[str], X: np.ndarray, calls: int,
                served: Any = None) -> dict[str, float]:
    """Median and p99 ms of predict_proba on one row: a NumPy array and a DataFrame; and of
    tabserve's own predict (`served`, a LoadedModel: its fast path where it has one)."""
    arrays = [X[i:i + 1] for i in range(len(X))]
    frames = [pd.DataFrame(a, columns=names) for a in arrays]
    out = {}
    with threadpool_limits(1):
        out.update(_time_calls(model.predict_proba, "numpy", arrays, calls))
        if served is not None:
            columns = [np.asfortranarray(a) for a in arrays]  # as the validator builds rows
            out.update(_time_calls(served.predict, "served", columns, calls))
        with warnings.catch_warnings():
            # fitted on a matrix, so a DataFrame draws a feature-name warning on every call
            warnings.simplefilter("ignore")
            out.update(_time_calls(model.predict_proba, "dataframe", frames, calls))
    return out


def _time_calls(predict: Any, kind: str, inputs: list[Any], calls: int) -> dict[str, float]:
    times = []
    for i in range(calls + 100):
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter_ns()
        predict(x)
        if i >= 100:  # the first calls warm caches
            times.append((time.perf_counter_ns() - t0) / 1e6)
    return {f"{kind}_p50_ms": statistics.median(times),
            f"{kind}_p99_ms": float(np.percentile(times, 99))}
