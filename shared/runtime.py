"""Per-process services built from settings: models, Redis, job store, storage, queue."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from shared.artifacts import ModelStore
from shared.config import Settings
from shared.models import ModelCache


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
        """The job records (shared.jobs.JobStore)."""
        from shared.jobs import JobStore

        return JobStore(self.redis, self.settings.job_ttl_seconds)

    @cached_property
    def storage(self) -> Any:
        """Uploads, outputs and error files (shared.storage.LocalStorage)."""
        from shared.storage import LocalStorage

        return LocalStorage(self.settings.data_dir)

    @cached_property
    def celery(self) -> Any:
        """A Celery app for sending jobs by task name."""
        from shared.queue import make_celery

        return make_celery(self.settings)
