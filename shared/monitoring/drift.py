"""Input and prediction drift: Population Stability Index against the manifest's reference.

Each process keeps a rolling window of recent rows per model version as bin indices in a
ring buffer, with running per-bin counts, so observing a request costs a few vectorised
operations. Once per interval, while it has new rows, a process posts its window's counts
to Redis and computes PSI over the sum of the windows that every process has posted lately
(SharedCounts), so all processes publish the same figure: one drift gauge for the service,
not one per process taking turns.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from shared import keys

if TYPE_CHECKING:  # a type only: shared.models imports shared.monitoring
    from shared.models.manifest import Manifest

logger = logging.getLogger(__name__)

EPSILON = 1e-4
MIN_ROWS = 50


def psi(expected: np.ndarray, observed_counts: np.ndarray) -> float:
    """PSI of observed bin counts against expected bin shares (both smoothed by EPSILON)."""
    total = observed_counts.sum()
    if total == 0:
        return 0.0
    e = np.clip(np.asarray(expected, dtype=np.float64), EPSILON, None)
    o = np.clip(observed_counts / total, EPSILON, None)
    return float(np.sum((o - e) * np.log(o / e)))


def _numeric(names: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Sorted float values of categories that are all numbers, and their original indices."""
    try:
        values = np.array([float(n) for n in names], dtype=np.float64)
    except ValueError:
        return None
    sorter = np.argsort(values)
    return values[sorter], sorter


class Binner:
    """Maps a feature's (or the prediction's) values to reference bins; the last bin is null."""

    def __init__(self, ref: dict[str, Any]) -> None:
        self.kind = ref["kind"]
        null = float(ref.get("null_fraction", 0.0))
        freqs = np.asarray(ref["frequencies"], dtype=np.float64) * (1.0 - null)
        self.expected = np.append(freqs, null)
        if self.kind == "numeric":
            self.edges = np.asarray(ref["edges"], dtype=np.float64)
            self.categories = pd.Index([])
            self.index: dict[str, int] = {}
            self.numeric_categories: tuple[np.ndarray, np.ndarray] | None = None
        else:
            self.edges = np.empty(0)
            names = [str(c) for c in ref["categories"]]
            self.categories = pd.Index(names)
            self.index = {c: i for i, c in enumerate(names)}
            self.numeric_categories = _numeric(names)
            # an unseen category lands in an extra bin with no expected share
            self.expected = np.concatenate([freqs, [0.0], [null]])
        self.n_bins = len(self.expected)

    def bins(self, values: Any) -> np.ndarray:
        """Bin index of each value."""
        if self.kind == "numeric":
            x = np.asarray(values, dtype=np.float64)
            out = np.searchsorted(self.edges, x, side="right")
            out[np.isnan(x)] = self.n_bins - 1
            return out
        other, null = self.n_bins - 2, self.n_bins - 1
        arr = np.asarray(values)
        if arr.dtype.kind in "iufb" and self.numeric_categories is not None:
            x = arr.astype(np.float64)
            cats, sorter = self.numeric_categories
            pos = np.clip(np.searchsorted(cats, x), 0, max(len(cats) - 1, 0))
            out = np.where(cats[pos] == x, sorter[pos], other) if len(cats) else \
                np.full(len(x), other)
            out[np.isnan(x)] = null
            return out
        if len(arr) <= 64:
            return np.fromiter(
                (null if v is None or v != v else self.index.get(str(v), other) for v in arr),
                dtype=np.int64, count=len(arr))
        series = pd.Series(arr, dtype=object)
        missing = series.isna().to_numpy()
        out = self.categories.get_indexer(series.astype(str))
        out[out < 0] = other
        out[missing] = null
        return out


class DriftWindow:
    """A rolling window of binned rows for one model version, and its PSI per feature."""

    def __init__(self, manifest: Manifest, size: int) -> None:
        self.manifest = manifest
        ref = manifest.reference or {}
        feats = ref.get("features", {})
        self.names = [f.name for f in manifest.features if f.name in feats]
        self.binners = [Binner(feats[n]) for n in self.names]
        self.pred = Binner(ref["predictions"]) if "predictions" in ref else None
        self.size = size
        width = len(self.binners) + (1 if self.pred else 0)
        self.ring = np.zeros((size, width), dtype=np.int32)
        self.max_bins = max([b.n_bins for b in self._all()] + [1])
        self.counts = np.zeros((width, self.max_bins), dtype=np.int64)
        self.cols = np.arange(width)
        self.filled = 0
        self.pos = 0
        self.lock = threading.Lock()
        self.numeric_idx = [i for i, b in enumerate(self.binners) if b.kind == "numeric"]
        self._fast = manifest.input_kind == "numpy" and len(self.names) == len(manifest.features)
        if self._fast:
            # All-numeric models: bin a whole matrix with one comparison against padded edges.
            longest = max([len(b.edges) for b in self.binners] + [1])
            self.padded = np.full((len(self.binners), longest), np.inf)
            for i, b in enumerate(self.binners):
                self.padded[i, : len(b.edges)] = b.edges
            self.null_bin = np.array([b.n_bins - 1 for b in self.binners])

    def _all(self) -> list[Binner]:
        return self.binners + ([self.pred] if self.pred else [])

    def bin_rows(self, X: Any, labels: Any) -> np.ndarray:
        """Bin indices, one row per input row, one column per feature (+ prediction)."""
        n = len(X)
        out = np.empty((n, len(self.cols)), dtype=np.int32)
        if self._fast and n <= 64:
            X = np.asarray(X, dtype=np.float64)
            out[:, : len(self.binners)] = (self.padded[None, :, :] <= X[:, :, None]).sum(-1)
            nan = np.isnan(X)
            if nan.any():
                out[:, : len(self.binners)][nan] = np.broadcast_to(self.null_bin, X.shape)[nan]
        elif not isinstance(X, pd.DataFrame):
            X = np.asarray(X, dtype=np.float64)
            for i, b in enumerate(self.binners):
                out[:, i] = b.bins(X[:, i])
        else:
            for i, (name, b) in enumerate(zip(self.names, self.binners, strict=True)):
                column = X[name]
                out[:, i] = b.bins(column.to_numpy() if b.kind == "numeric" else list(column))
        if self.pred is not None:
            out[:, -1] = self.pred.bins(labels)
        return out

    def add(self, binned: np.ndarray) -> None:
        """Push binned rows into the window, evicting the oldest."""
        binned = binned[-self.size:]
        n = len(binned)
        if n == 0:
            return
        with self.lock:
            slots = (self.pos + np.arange(n)) % self.size
            evict = slots[self.filled + np.arange(n) >= self.size] if self.filled + n > \
                self.size else slots[:0]
            if n == 1:
                if len(evict):
                    self.counts[self.cols, self.ring[slots[0]]] -= 1
                self.counts[self.cols, binned[0]] += 1
            else:
                for j in self.cols:
                    if len(evict):
                        self.counts[j] -= np.bincount(self.ring[evict, j],
                                                      minlength=self.max_bins)
                    self.counts[j] += np.bincount(binned[:, j], minlength=self.max_bins)
            self.ring[slots] = binned
            self.filled = min(self.filled + n, self.size)
            self.pos = int((self.pos + n) % self.size)

    def snapshot(self) -> tuple[np.ndarray, int]:
        """A copy of the per-bin counts, and the rows they hold."""
        with self.lock:
            return self.counts.copy(), self.filled

    def scores(self, counts: np.ndarray, rows: int,
               ) -> tuple[dict[str, float], float | None] | None:
        """PSI per feature and of the predictions from counts laid out as this window's
        (its own snapshot, or several processes' summed); None while too few rows."""
        if rows < MIN_ROWS:
            return None
        features = {n: psi(b.expected, counts[i, : b.n_bins])
                    for i, (n, b) in enumerate(zip(self.names, self.binners, strict=True))}
        pred = psi(self.pred.expected, counts[-1, : self.pred.n_bins]) if self.pred else None
        return features, pred


_BINNED = object()  # in DriftTracker's queue: rows binned already (no labels to bin)


class SharedCounts:
    """Window counts of every process, in Redis: each process posts its own under a key that
    expires after `ttl` seconds, and reads the sum over the processes that posted within it
    (a process that stopped, or has had no rows for that long, drops out)."""


    def __init__(self, redis: Any, ttl: float) -> None:
        self.redis = redis
        self.ttl = max(int(ttl), 1)
        self.host = socket.gethostname()

    def combine(self, ref: str, counts: np.ndarray, rows: int) -> tuple[np.ndarray, int]:
        """Post this process's counts for model version `ref`; the sum over live processes."""
        key, me = keys.drift_members(ref), f"{self.host}:{os.getpid()}"
        payload = np.concatenate([[rows], counts.ravel()]).astype("<i8").tobytes()
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.drift_counts(ref, me), payload, ex=self.ttl)
        pipe.zadd(key, {me: now})
        pipe.zremrangebyscore(key, "-inf", now - self.ttl)
        pipe.expire(key, self.ttl)
        pipe.zrange(key, 0, -1)
        members = pipe.execute()[-1]
        total, total_rows = np.zeros_like(counts), 0
        for value in self.redis.mget([keys.drift_counts(ref, m.decode()) for m in members]):
            if value is None or len(value) != len(payload):  # expired, or another layout
                continue
            posted = np.frombuffer(value, dtype="<i8")
            total_rows += int(posted[0])
            total += posted[1:].reshape(counts.shape)
        return total, total_rows


class DriftTracker:
    """Windows per model version, fed off the request path.

    `observe` only appends the rows to a queue; a daemon thread of this process bins them
    in batches every DRAIN_SECONDS, adds them to the model version's window, and publishes
    the PSI of each window with new rows once per interval, on its own timer: a request pays
    for a deque append, not for binning, and a burst shorter than the interval shows.
    """

    DRAIN_SECONDS = 0.25

    def __init__(self, window: int, interval: float,
                 publish: Callable[[Manifest, dict[str, float], float | None], None],
                 shared: SharedCounts | None = None) -> None:
        self.window = window
        self.interval = interval
        self.publish = publish
        self.shared = shared
        self._shared_failed = False
        self._windows: dict[str, DriftWindow] = {}
        self._last: dict[str, float] = {}
        self._changed: set[str] = set()  # windows with rows not yet published
        self._pending: collections.deque[tuple[Manifest, Any, Any]] = collections.deque(
            maxlen=10_000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def observe(self, manifest: Manifest, X: Any, labels: Any) -> None:
        """Queue rows (model input and predicted labels) for the model version's window."""
        if not manifest.reference or self.window <= 0:
            return
        self._pending.append((manifest, X, labels))
        self._ensure_thread()

    def observe_binned(self, manifest: Manifest, binned: np.ndarray) -> None:
        """Queue rows binned already (by a DriftAccumulator of the same model version)."""
        if not manifest.reference or self.window <= 0:
            return
        self._pending.append((manifest, binned, _BINNED))
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:  # started in the process that serves
                    self._thread = threading.Thread(target=self._run, name="drift",
                                                    daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.DRAIN_SECONDS)
            try:
                self.drain()
            except Exception:  # drift is best effort; never take the process down
                logger.exception("drift: could not update the windows")

    def drain(self) -> None:
        """Bin and add what is queued, then publish the windows that are due."""
        self._add_pending()
        self._publish_due(time.monotonic())

    def _add_pending(self) -> None:
        batches: dict[str, list[tuple[Manifest, Any, Any]]] = {}
        while self._pending:
            item = self._pending.popleft()
            batches.setdefault(item[0].ref, []).append(item)
        self._changed.update(batches)
        for ref, items in batches.items():
            w = self._windows.get(ref)
            if w is None:
                w = self._windows.setdefault(ref, DriftWindow(items[0][0], self.window))
            raw = []
            for item in items:
                if item[2] is _BINNED:  # binned by a job already
                    w.add(item[1])
                else:
                    raw.append(item)
            if raw:
                if isinstance(raw[0][1], pd.DataFrame):
                    X: Any = pd.concat([x for _, x, _ in raw], ignore_index=True)
                else:
                    X = np.concatenate([np.asarray(x, dtype=np.float64) for _, x, _ in raw])
                labels = np.concatenate([np.asarray(y) for _, _, y in raw])
                w.add(w.bin_rows(X, labels))

    def _publish_due(self, now: float) -> None:
        # On the timer, not on the next request: rows that came after a publish (or after
        # one that found too few rows) show an interval later, whether or not traffic
        # continues. An idle window is not posted again, so it leaves the shared sum.
        for ref in [r for r in self._changed if now - self._last.get(r, -1e18) >= self.interval]:
            self._changed.discard(ref)
            self._last[ref] = now
            w = self._windows[ref]
            scores = w.scores(*self._combined(ref, w))
            if scores is not None:
                self.publish(w.manifest, *scores)

    def _combined(self, ref: str, w: DriftWindow) -> tuple[np.ndarray, int]:
        """The counts of every live process's window (this one's alone without Redis)."""
        counts, rows = w.snapshot()
        if self.shared is None:
            return counts, rows
        try:
            combined = self.shared.combine(ref, counts, rows)
        except Exception as exc:  # Redis away: this process's window, as before
            if not self._shared_failed:
                logger.warning("drift: windows not shared (Redis: %s); this process's alone",
                               exc)
            self._shared_failed = True
            return counts, rows
        self._shared_failed = False
        return combined


class DriftAccumulator:
    """Bin counts over all rows of one batch job (no window): the job's own PSI."""

    def __init__(self, manifest: Manifest) -> None:
        self.window = DriftWindow(manifest, 1)
        self.counts = np.zeros_like(self.window.counts)

    def add(self, X: Any, labels: Any) -> np.ndarray:
        """Count a chunk's rows; returns them binned (for DriftTracker.observe_binned)."""
        binned = self.window.bin_rows(X, labels)
        for j in range(binned.shape[1]):
            self.counts[j] += np.bincount(binned[:, j], minlength=self.counts.shape[1])
        return binned

    def merge(self, counts: list[list[int]]) -> None:
        """Add another accumulator's counts (a part of the same job)."""
        self.counts += np.asarray(counts, dtype=np.int64)

    def result(self) -> dict[str, Any]:
        """PSI per feature and of the predictions, rounded for the job record."""
        w = self.window
        features = {n: round(psi(b.expected, self.counts[i, : b.n_bins]), 6)
                    for i, (n, b) in enumerate(zip(w.names, w.binners, strict=True))}
        out: dict[str, Any] = {"features": features}
        if w.pred is not None:
            out["prediction"] = round(psi(w.pred.expected, self.counts[-1, : w.pred.n_bins]), 6)
        return out
