"""Per-process services built from settings: model store, model cache, Redis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.artifacts import ModelStore
from shared.config import Settings
from shared.models import ModelCache


@dataclass
class Runtime:
    """What a process (API worker or Celery worker) holds for its lifetime."""

    settings: Settings
    store: ModelStore = field(init=False)
    models: ModelCache = field(init=False)
    _redis: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.store = ModelStore(self.settings.artifacts_dir)
        self.models = ModelCache(self.store, threads=self.settings.model_threads)

    @property
    def redis(self) -> Any:
        """A Redis client, connected lazily on first use."""
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(
                self.settings.redis_url, socket_connect_timeout=1.0, socket_timeout=5.0,
                health_check_interval=30,
            )
        return self._redis
