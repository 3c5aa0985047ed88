"""Fail fast on a Redis that does not answer: short timeouts and a circuit breaker in the API's
Redis connections.

A hung Redis (SIGSTOPped, a full network buffer) accepts connections and never answers, so each
call waits for the socket timeout while it holds a thread that could answer `/predict`. The
API's client therefore times out quickly, never retries, and counts failures in a breaker that
every command passes through (job views, /readyz, /metrics' queue gauges, feedback, the
prediction log's flush): after `failures` failed calls in a row the circuit opens, and for
`open_seconds` every call fails at once with CircuitOpenError, a redis.ConnectionError, so
`redis_errors` answers it with the usual JSON 503. Then one call goes through
as a probe: an answer closes the circuit, a failure opens it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.errors import QueueUnavailableError

logger = logging.getLogger(__name__)


@contextmanager
def redis_errors() -> Iterator[None]:
    """Turn an unreachable Redis into a 503 with a clear message (a timeout, a refused
    connection, or the API's open circuit: shared.redisguard)."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise QueueUnavailableError(
            f"the job queue (Redis) is not reachable: {exc.__class__.__name__}; "
            "online /predict is unaffected"
        ) from None


class CircuitOpenError(redis.ConnectionError):
    """Redis failed repeatedly just now: the call was not attempted."""


class CircuitBreaker:
    """Consecutive-failure circuit breaker shared by the connections of one client."""

    def __init__(self, failures: int, open_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.open_seconds = open_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failed = 0
        self._opened_at: float | None = None
        self._probe: tuple[int, float] | None = None  # (thread, until when it may probe)

    @property
    def state(self) -> str:
        """closed, open, or half-open (a probe may go through)."""
        opened = self._opened_at
        if opened is None:
            return "closed"
        return "open" if self._clock() < opened + self.open_seconds else "half-open"

    def before_call(self) -> None:
        """Raise CircuitOpenError unless a call may go to Redis now."""
        if self._opened_at is None:
            return
        with self._lock:
            if self._opened_at is None:
                return
            now = self._clock()
            retry_at = self._opened_at + self.open_seconds
            me = threading.get_ident()
            if now >= retry_at and (self._probe is None or self._probe[1] < now
                                    or self._probe[0] == me):
                if self._probe is None or self._probe[0] != me:
                    self._probe = (me, now + self.open_seconds)
                return  # this thread probes; the others keep failing fast meanwhile
            wait = max(retry_at - now, 0.0)
        raise CircuitOpenError(f"Redis failed {self.failures} times in a row; not retried "
                               f"for {wait:.1f} s more")

    def record_success(self) -> None:
        """Redis answered: close the circuit."""
        if self._failed == 0 and self._opened_at is None:
            return
        with self._lock:
            if self._opened_at is not None:
                logger.warning("redis answers again: circuit closed")
            self._failed, self._opened_at, self._probe = 0, None, None

    def record_failure(self) -> None:
        """A call timed out or lost its connection: open the circuit after enough of them."""
        with self._lock:
            self._failed += 1
            self._probe = None
            if self._opened_at is not None or self._failed >= self.failures:
                if self._opened_at is None:
                    logger.warning("redis failed %d times in a row: circuit open for %.1f s",
                                   self._failed, self.open_seconds)
                self._opened_at = self._clock()


class _GuardedConnection:
    """Mixed into the pool's connection class: gates connecting and sending on the breaker,
    and reports what reading found. Reading is not gated: a pipeline's replies must be read
    once its commands are sent."""

    breaker: CircuitBreaker

    def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
        return self._gated(super().connect_check_health, args, kwargs)  # type: ignore[misc]

    def send_packed_command(self, *args: Any, **kwargs: Any) -> Any:
        return self._gated(super().send_packed_command, args, kwargs)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = super().read_response(*args, **kwargs)  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError):
            self.breaker.record_failure()
            raise
        except redis.RedisError:  # an error reply: Redis is there
            self.breaker.record_success()
            raise
        self.breaker.record_success()
        return response

    def _gated(self, call: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        self.breaker.before_call()
        try:
            return call(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Counted once: sending may connect, and connecting is gated too.
            if not isinstance(exc, CircuitOpenError) and not getattr(exc, "counted", False):
                exc.counted = True  # type: ignore[union-attr]
                self.breaker.record_failure()
            raise


def guarded_client(url: str, timeout: float, breaker: CircuitBreaker) -> redis.Redis:
    """A Redis client whose calls time out after `timeout` seconds, are never retried, and
    fail at once while `breaker` is open."""
    pool = redis.ConnectionPool.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0), health_check_interval=30,
    )
    base = pool.connection_class
    pool.connection_class = type(f"Guarded{base.__name__}", (_GuardedConnection, base),
                                 {"breaker": breaker})
    return redis.Redis(connection_pool=pool)
