"""Predictions kept for later feedback: online ones buffered and written to Redis off the
request path; a job's written per chunk as packed bytes (one entry per row)."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import numpy as np
import orjson

from shared import keys
from shared.ids import random_hex
from shared.monitoring.metrics import record_predictions_dropped

logger = logging.getLogger(__name__)

# Online predictions: a hash per 10-minute bucket of prediction id -> value, the bucket named
# by the id's first 8 hex digits. (Ids from before the buckets have a key each.)
BUCKET_SECONDS = 600
FLUSH_SECONDS = 0.5
MAX_BUFFER = 100_000
MEMORY_CHECK_SECONDS = 5.0  # how often the flush thread reads Redis's memory use
SET_BATCH = 1_000  # predictions per HSET: each command short enough for Redis to stay responsive


def new_prediction_id() -> str:
    """A request's prediction id (rows of an `instances` request add `.<index>`): its
    10-minute bucket in 8 hex digits, then 96 random bits."""
    return f"{int(time.time()) // BUCKET_SECONDS:08x}{random_hex(12)}"


def lookup_online_prediction(client: Any, prediction_id: str) -> bytes | None:
    """The stored value of an online prediction id (without `.<index>`), or None."""
    raw = None
    if len(prediction_id) == 32:
        raw = client.hget(keys.prediction_bucket(prediction_id[:8]), prediction_id)
    if raw is None:  # an id from before the buckets: a key of its own
        raw = client.get(keys.online_prediction(prediction_id))
    return raw


class PredictionLog:
    """Buffers online predictions in memory; a daemon thread writes them to Redis in batches.

    Redis stays off the /predict path: a request only appends to a deque. If Redis is away,
    the buffered predictions are dropped (with a warning) and serving goes on.

    Each kept prediction costs Redis memory for the whole TTL (7 days by default), which at a
    steady request rate adds up (docs/benchmarks.md). So the log yields to the job queue and
    job state, which share that Redis: while Redis uses more than `max_memory_percent` of its
    `maxmemory`, new predictions are dropped and counted
    (tabserve_prediction_log_dropped_total), never written. A Redis without maxmemory is not
    checked.
    """

    def __init__(self, client: Any, ttl_seconds: int, max_memory_percent: int = 80) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self.max_memory_percent = max_memory_percent
        self._buffer: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=MAX_BUFFER)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_warning = 0.0
        self._memory_checked = -MEMORY_CHECK_SECONDS
        self._memory_full = False

    def add(self, prediction_id: str, model: str, version: int, task: str,
            labels: list[Any]) -> None:
        """Remember a request's predicted labels under its prediction id."""
        value = orjson.dumps({"m": model, "v": version, "t": task, "p": labels})
        self._buffer.append((prediction_id, value))
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:  # started lazily, in the process that serves
                self._thread = threading.Thread(target=self._run, name="predlog", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            self.flush()

    def flush(self) -> int:
        """Write what is buffered; returns how many predictions were written."""
        items: list[tuple[str, bytes]] = []
        while self._buffer and len(items) < 10_000:
            items.append(self._buffer.popleft())
        if not items:
            return 0
        try:
            if self._redis_full():
                self._drop(len(items), "redis_memory",
                           f"Redis is over {self.max_memory_percent}% of its maxmemory "
                           "(TABSERVE_PREDICTION_LOG_MAX_MEMORY_PERCENT)")
                return 0
            buckets: dict[str, list[tuple[str, bytes]]] = {}
            for item in items:
                buckets.setdefault(item[0][:8], []).append(item)
            pipe = self.client.pipeline(transaction=False)
            for bucket, pairs in buckets.items():
                key = keys.prediction_bucket(bucket)
                for start in range(0, len(pairs), SET_BATCH):
                    pipe.hset(key, mapping=dict(pairs[start:start + SET_BATCH]))
                # Kept until the bucket's last id is `ttl` old.
                pipe.expireat(key, (int(bucket, 16) + 1) * BUCKET_SECONDS + self.ttl)
            pipe.execute()
        except Exception as exc:  # Redis away: drop, warn at most once a minute
            self._drop(len(items), "redis_unavailable", str(exc))
            return 0
        return len(items)

    def _redis_full(self) -> bool:
        """Whether Redis is past the log's share of its maxmemory (read every few seconds)."""
        now = time.monotonic()
        if now - self._memory_checked >= MEMORY_CHECK_SECONDS:
            info = self.client.info("memory")
            limit = int(info.get("maxmemory") or 0)
            self._memory_full = limit > 0 and \
                int(info["used_memory"]) * 100 >= limit * self.max_memory_percent
            self._memory_checked = now
        return self._memory_full

    def _drop(self, count: int, reason: str, why: str) -> None:
        record_predictions_dropped(reason, count)
        if time.monotonic() - self._last_warning > 60:
            self._last_warning = time.monotonic()
            logger.warning("prediction log: %d predictions dropped: %s", count, why)


def pack_job_chunk(n_rows: int, kept_rows: np.ndarray, start_row: int, labels: np.ndarray,
                   classes: np.ndarray | None) -> bytes:
    """The packed predictions of one chunk, every row of it (skipped rows empty)."""
    offsets = kept_rows - start_row
    if classes is not None and len(classes) <= 254:
        codes = np.zeros(n_rows, dtype=np.uint8)
        sorter = np.argsort(classes)
        pos = np.clip(np.searchsorted(classes, labels, sorter=sorter), 0, len(classes) - 1)
        index = sorter[pos]
        found = classes[index] == labels
        codes[offsets] = np.where(found, index + 1, 0).astype(np.uint8)
        return codes.tobytes()
    values = np.full(n_rows, np.nan, dtype=np.float64)
    values[offsets] = np.asarray(labels, dtype=np.float64)
    return values.tobytes()


def lookup_job_prediction(client: Any, job_id: str, row: int, classes: list[Any] | None) -> Any:
    """A job row's predicted label (or value); None when unknown."""
    width = 1 if classes is not None and len(classes) <= 254 else 8
    raw = client.getrange(keys.job_predictions(job_id), row * width, row * width + width - 1)
    if len(raw) != width:
        return None
    if width == 1:
        return classes[raw[0] - 1] if raw[0] and classes else None
    value = float(np.frombuffer(raw, dtype=np.float64)[0])
    return None if value != value else value
