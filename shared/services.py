"""Per-process services built from settings: models, Redis, job store, storage, queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from shared.config import Settings
from shared.models.loading import ModelCache
from shared.models.store import ModelStore

if TYPE_CHECKING:
    import redis
    from celery import Celery

    from shared.jobs.store import JobStore
    from shared.monitoring.drift import DriftTracker
    from shared.monitoring.predictions import PredictionLog
    from shared.security.gate import Gate
    from shared.security.jobcap import JobCap
    from shared.storage import Storage


T = TypeVar("T")


class cached_property(Generic[T]):  # noqa: N801 - named as the functools one it replaces
    """functools.cached_property without its lock. Python 3.11's holds one lock for every
    instance of the class: a worker's heartbeat or reaper thread building a property while
    the Celery pool forks left the child holding a lock no thread would release (it hung at
    its first job). Two threads racing may build a property twice; one value is kept."""

    def __init__(self, build: Callable[[Any], T]) -> None:
        self.build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]
        return obj.__dict__.setdefault(self.name, self.build(obj))


class Services:
    """What a process (API worker or Celery worker) holds for its lifetime; built lazily."""

    def __init__(self, settings: Settings, fail_fast: bool = False) -> None:
        self.settings = settings
        # The API's Redis calls fail fast (shared.redisguard): they share threads with
        # /predict. A worker's block the job they serve anyway, so they wait longer.
        self.fail_fast = fail_fast
        self.store = ModelStore.from_settings(settings)
        self.models = ModelCache(self.store, threads=settings.model_threads)

    @cached_property
    def redis(self) -> redis.Redis:
        """A Redis client; it connects on first command."""
        import redis as redis_py

        if self.fail_fast:
            from shared.redisguard import CircuitBreaker, guarded_client

            s = self.settings
            breaker = CircuitBreaker(s.redis_circuit_failures, s.redis_circuit_open_seconds)
            return guarded_client(s.redis_url, s.api_redis_timeout_seconds, breaker)
        return redis_py.Redis.from_url(
            self.settings.redis_url, socket_connect_timeout=1.0, socket_timeout=5.0,
            health_check_interval=30,
        )

    @cached_property
    def jobs(self) -> JobStore:
        """The job records."""
        from shared.jobs.mirror import RecordMirror
        from shared.jobs.store import JobStore

        store = JobStore(self.redis, self.settings.job_ttl_seconds, RecordMirror(self.storage))
        if self.settings.callback_host_list:
            from shared.jobs.callbacks import queue_callback

            store.on_end = lambda job_id: queue_callback(self, job_id)
        return store

    @cached_property
    def storage(self) -> Storage:
        """Uploads, outputs and error files: a directory or a bucket."""
        from shared.storage import make_storage

        return make_storage(self.settings)

    @cached_property
    def drift(self) -> DriftTracker:
        """Rolling drift windows of this process, summed with the other processes' windows
        through Redis."""
        from shared.monitoring.drift import DriftTracker, SharedCounts
        from shared.monitoring.metrics import record_drift

        interval = self.settings.drift_interval_seconds
        # A process posts at most once per interval while it has rows: three missed posts
        # and its window leaves the sum.
        shared = SharedCounts(self.redis, ttl=3 * interval + 5)
        return DriftTracker(self.settings.drift_window, interval, record_drift, shared)

    @cached_property
    def predictions(self) -> PredictionLog:
        """Online predictions kept for feedback."""
        from shared.monitoring.predictions import PredictionLog

        return PredictionLog(self.redis, self.settings.prediction_ttl_seconds,
                             self.settings.prediction_log_max_memory_percent)

    @cached_property
    def payload_sample_rate(self) -> float:
        """Share of requests whose inputs and outputs are logged (TABSERVE_LOG_PAYLOADS)."""
        return self.settings.payload_sample_rate

    @cached_property
    def celery(self) -> Celery:
        """A Celery app for sending jobs by task name."""
        from shared.jobs.queue import make_celery

        return make_celery(self.settings)

    @cached_property
    def gate(self) -> Gate:
        """API keys, roles and the per-key rate limit (open when no key is configured)."""
        from shared.security.gate import Gate
        from shared.security.keystore import KeyStore
        from shared.security.ratelimit import RateLimiter

        settings = self.settings
        if not settings.auth_enabled:
            return Gate(None, None, settings.metrics_public)
        limiter = RateLimiter(self.redis, settings.rate_limit_requests,
                              settings.rate_limit_window_seconds)
        return Gate(KeyStore(settings.api_keys, settings.api_keys_file), limiter,
                    settings.metrics_public)

    @cached_property
    def job_cap(self) -> JobCap:
        """The per-key cap on queued and running jobs."""
        from shared.jobs.record import LIVE
        from shared.security.jobcap import JobCap

        return JobCap(self.redis, self.settings.max_live_jobs_per_key,
                      [status.value for status in LIVE])
