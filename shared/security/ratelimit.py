"""A per-key rate limit shared by every API process: a fixed window counted in Redis."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import redis

from shared import keys
from shared.errors import TooManyRequestsError

logger = logging.getLogger(__name__)

# One round trip: count the request, and start the window's expiry on its first.
_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""
# After Redis fails, requests go unlimited for this long instead of each waiting on it:
# /predict keeps serving while Redis is away.
SKIP_AFTER_FAILURE_SECONDS = 5.0


class RateLimiter:
    """At most `limit` requests per key in each window of `window` seconds (0: no limit)."""

    def __init__(self, client: redis.Redis, limit: int, window: int) -> None:
        self.limit, self.window = limit, window
        self._count: Any = client.register_script(_COUNT) if limit else None
        self._skip_until = 0.0

    def check(self, key_name: str) -> None:
        """Count a request of this key; TooManyRequestsError (429) once it is over."""
        if not self.limit or time.monotonic() < self._skip_until:
            return
        now = time.time()
        window = int(now // self.window)
        try:
            count = int(self._count(keys=[keys.rate_window(key_name, window)],
                                    args=[self.window + 1]))
        except redis.RedisError as exc:
            logger.warning("rate limit not applied for %.0f s: Redis failed: %s",
                           SKIP_AFTER_FAILURE_SECONDS, exc.__class__.__name__)
            self._skip_until = time.monotonic() + SKIP_AFTER_FAILURE_SECONDS
            return
        if count > self.limit:
            retry = math.ceil((window + 1) * self.window - now)
            raise TooManyRequestsError(
                f"key {key_name!r} made more than {self.limit} requests in {self.window} s "
                "(TABSERVE_RATE_LIMIT_REQUESTS per TABSERVE_RATE_LIMIT_WINDOW_SECONDS); "
                f"retry in {retry} s", retry_after=retry)
