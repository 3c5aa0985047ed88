"""Per-process services built from settings: models, Redis, job store, storage, queue."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from shared.config import Settings
from shared.models.loading import ModelCache
from shared.models.store import ModelStore


class Runtime:
    """What a process (API worker or Celery worker) holds for its lifetime; built lazily."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.artifacts_dir)
        self.models = ModelCache(self.store, threads=settings.model_threads)

    @cached_property
    def redis(self) -> Any:
        """A Redis client; it connects on first command."""
        import redis

        return redis.Redis.from_url(
            self.settings.redis_url, socket_connect_timeout=1.0, socket_timeout=5.0,
            health_check_interval=30,
        )

    @cached_property
    def jobs(self) -> Any:
        """The job records (shared.jobs.store.JobStore)."""
        from shared.jobs.store import JobStore

        return JobStore(self.redis, self.settings.job_ttl_seconds)

    @cached_property
    def storage(self) -> Any:
        """Uploads, outputs and error files (a shared.storage.Storage: directory or bucket)."""
        from shared.storage import make_storage

        return make_storage(self.settings)

    @cached_property
    def drift(self) -> Any:
        """Rolling drift windows of this process, summed with the other processes' windows
        through Redis (shared.monitoring.drift.DriftTracker)."""
        from shared.monitoring.drift import DriftTracker, SharedCounts
        from shared.monitoring.metrics import record_drift

        interval = self.settings.drift_interval_seconds
        # A process posts at most once per interval while it has rows: three missed posts
        # and its window leaves the sum.
        shared = SharedCounts(self.redis, ttl=3 * interval + 5)
        return DriftTracker(self.settings.drift_window, interval, record_drift, shared)

    @cached_property
    def predictions(self) -> Any:
        """Online predictions kept for feedback (shared.monitoring.predictions.PredictionLog)."""
        from shared.monitoring.predictions import PredictionLog

        return PredictionLog(self.redis, self.settings.prediction_ttl_seconds,
                             self.settings.prediction_log_max_memory_percent)

    @cached_property
    def payload_sample_rate(self) -> float:
        """Share of requests whose inputs and outputs are logged (TABSERVE_LOG_PAYLOADS)."""
        return self.settings.payload_sample_rate

    @cached_property
    def celery(self) -> Any:
        """A Celery app for sending jobs by task name."""
        from shared.jobs.queue import make_celery

        return make_celery(self.settings)
