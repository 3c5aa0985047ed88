"""The batch baselines, each run as its own process so its memory is its own:

    python -m bench.batch_baselines naive MODEL.pkl IN.csv OUT.csv
    python -m bench.batch_baselines limit MODEL.pkl IN.(csv|parquet) OUT.(csv|parquet)
    python -m bench.batch_baselines limit1 MODEL.pkl IN.csv OUT.csv

`naive`: what a data scientist writes first (pandas read_csv, predict_proba, to_csv).
`limit`: the in-process limit, no queue: pyarrow's multithreaded reader, the model on a
NumPy matrix, pyarrow's writer, the same output columns as a tabserve job.
`limit1`: the same with one thread for everything (pyarrow and the model): run alone and two
at once, it shows how well this machine runs two such processes side by side, the ceiling
for two single-threaded workers.
Prints one JSON line: seconds.
"""

from __future__ import annotations

import json
import pickle
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


def naive(model, src: str, dst: str) -> None:
    frame = pd.read_csv(src)
    proba = model.predict_proba(frame.to_numpy())
    out = pd.DataFrame({"prediction": model.classes_[proba.argmax(1)]})
    for j, cls in enumerate(model.classes_):
        out[f"probability_{cls}"] = proba[:, j]
    out.to_csv(dst, index_label="row")


def limit(model, src: str, dst: str) -> None:
    table = pq.read_table(src) if src.endswith(".parquet") else pacsv.read_csv(src)
    X = np.column_stack([c.to_numpy() for c in table.columns])
    proba = model.predict_proba(X)
    columns = {"row": pa.array(np.arange(len(X))),
               "prediction": pa.array(model.classes_[proba.argmax(1)])}
    for j, cls in enumerate(model.classes_):
        columns[f"probability_{cls}"] = pa.array(proba[:, j])
    out = pa.table(columns)
    if dst.endswith(".parquet"):
        pq.write_table(out, dst)
    else:
        pacsv.write_csv(out, dst)


def main() -> None:
    kind, model_path, src, dst = sys.argv[1:5]
    with open(model_path, "rb") as fh:
        model = pickle.load(fh)
    if kind == "limit1":
        pa.set_cpu_count(1)
        pa.set_io_thread_count(1)
        model.set_params(n_jobs=1)
        kind = "limit"
    started = time.perf_counter()
    {"naive": naive, "limit": limit}[kind](model, src, dst)
    print(json.dumps({"seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
