"""Drift windows fed two ways agree: rows a batch job has binned already (its own PSI) and
raw rows binned by the tracker give the process's window the same counts and PSI. Processes
publish the PSI of their windows summed through a real Redis, and their own without it."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from shared.models.loading import load_model
from shared.models.store import ModelStore
from shared.models.training import train_demo
from shared.monitoring.drift import DriftAccumulator, DriftTracker, SharedCounts
from tests.servers import free_port, wait_until


@pytest.fixture
def demo_model(tmp_path, demo_data):
    """The demo model loaded, its rows, and its labels for them."""
    _, X = demo_data
    store = ModelStore(tmp_path)
    manifest = train_demo(store)
    loaded = load_model(store, manifest.name, manifest.version)
    return loaded, X, loaded.predict(np.asfortranarray(X)).labels


def test_binned_rows_from_a_job_count_as_raw_rows_do(demo_model):
    loaded, X, labels = demo_model
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


def _tracker(shared, published: dict, name: str) -> DriftTracker:
    tracker = DriftTracker(10_000, 0.0, lambda m, f, p: published.__setitem__(name, (f, p)),
                           shared)
    tracker._thread = object()  # drained by hand, no thread
    return tracker


def test_processes_publish_the_psi_of_their_windows_summed(demo_model, redis_client):
    """Two processes (two hosts' worth of identity, one real Redis): one sees training-like
    rows, the other shifted ones; both publish the PSI of the two windows together."""
    loaded, X, labels = demo_model
    shifted = X * 1.4
    published: dict[str, tuple] = {}
    shares = [SharedCounts(redis_client, ttl=30) for _ in range(3)]
    for share, host in zip(shares, ("api-1", "api-2", "alone"), strict=True):
        share.host = host
    first, second = _tracker(shares[0], published, "first"), _tracker(shares[1], published,
                                                                      "second")
    alone = _tracker(None, published, "alone")  # no Redis: its own window only
    first.observe(loaded.manifest, X, labels)
    second.observe(loaded.manifest, shifted, labels)
    alone.observe(loaded.manifest, np.concatenate([X, shifted]), np.concatenate([labels] * 2))
    first.drain()
    assert max(published["first"][0].values()) < 0.1  # the only window posted yet
    second.drain()
    alone.drain()
    assert published["second"] == published["alone"]  # both windows, summed
    assert max(published["second"][0].values()) > 0.1
    first._last.clear()  # due again, with an (empty) batch of rows
    first.observe(loaded.manifest, X[:0], labels[:0])
    first.drain()
    assert published["first"] == published["alone"]  # sees the other's window too
    ref = loaded.manifest.ref
    counts, rows = first._windows[ref].snapshot()
    assert shares[2].combine(ref, counts, rows)[1] == 3 * len(X)  # a third process joins


def test_a_process_that_stops_posting_leaves_the_sum(redis_client):
    counts = np.arange(6, dtype=np.int64).reshape(2, 3)
    old, new = SharedCounts(redis_client, ttl=1), SharedCounts(redis_client, ttl=1)
    old.host, new.host = "old", "new"
    assert old.combine("m:1", counts, 10)[1] == 10
    total, rows = new.combine("m:1", counts, 20)
    assert rows == 30 and np.array_equal(total, 2 * counts)
    # "old" posts no more: once its TTL has passed, the sum is "new"'s alone.
    wait_until(lambda: new.combine("m:1", counts, 20)[1] == 20, 5, "the old post to expire")
    total, rows = new.combine("m:1", counts, 20)
    assert rows == 20 and np.array_equal(total, counts)


def test_rows_after_a_publish_are_published_on_the_timer(demo_model):
    """A burst shorter than the interval, whose first publish found too few rows, shows an
    interval later without any further rows."""
    loaded, X, labels = demo_model
    published: list[dict] = []
    tracker = DriftTracker(10_000, 1.0, lambda m, f, p: published.append(f))
    tracker._thread = object()  # drained by hand below
    tracker.observe(loaded.manifest, X[:10], labels[:10])
    tracker.drain()  # due, but 10 rows are too few
    tracker.observe(loaded.manifest, X[10:200], labels[10:200])
    tracker.drain()  # enough rows, but not due
    assert published == []
    started = time.monotonic()
    wait_until(lambda: tracker.drain() or published, 3, "a publish on the timer")
    assert time.monotonic() - started < 2.0  # within the interval (and a drain)
    assert set(published[0]) == set(tracker._windows[loaded.manifest.ref].names)


def test_without_redis_a_process_publishes_its_own_window(demo_model):
    loaded, X, labels = demo_model
    away = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    published: dict[str, tuple] = {}
    tracker, alone = _tracker(SharedCounts(away, ttl=30), published, "away"), _tracker(
        None, published, "alone")
    for t in (tracker, alone):
        t.observe(loaded.manifest, X * 1.4, labels)
        t.drain()  # never raises
    assert published["away"] == published["alone"]
