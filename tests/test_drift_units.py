"""Drift windows fed two ways agree: rows a batch job has binned already (its own PSI) and
raw rows binned by the tracker give the process's window the same counts and PSI."""

from __future__ import annotations

import numpy as np

from shared.artifacts import ModelStore
from shared.drift import DriftAccumulator, DriftTracker
from shared.models import load_model
from shared.training import train_demo


def test_binned_rows_from_a_job_count_as_raw_rows_do(tmp_path, demo_data):
    _, X = demo_data
    store = ModelStore(tmp_path)
    manifest = train_demo(store)
    loaded = load_model(store, manifest.name, manifest.version)
    labels = loaded.predict(np.asfortranarray(X)).labels
    shifted = X * 1.4

    published: dict[str, tuple] = {}
    raw = DriftTracker(10_000, 0.0, lambda m, f, p: published.__setitem__("raw", (f, p)))
    binned = DriftTracker(10_000, 0.0, lambda m, f, p: published.__setitem__("binned", (f, p)))
    raw._thread = binned._thread = object()  # drained by hand below, no threads
    job = DriftAccumulator(loaded.manifest)
    for rows in (X, shifted):
        raw.observe(loaded.manifest, rows, labels)
        binned.observe_binned(loaded.manifest, job.add(rows, labels))
    raw.drain()
    binned.drain()
    ref = loaded.manifest.ref
    assert np.array_equal(raw._windows[ref].counts, binned._windows[ref].counts)
    assert published["raw"] == published["binned"]
    assert max(published["raw"][0].values()) > 0.1  # the shifted half shows
