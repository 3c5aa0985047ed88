"""Refused job submissions slow their client down.

A job submission is the one request whose refusal can cost the API real work: the body is
read, staged and checked before the 4xx (a CSV header too wide, a file that is not one, a
wrong key). A client that loops on such requests, answered as fast as they are refused, takes
cores the online path needs (bench.isolation phase (d): two clients, ~200 refusals a second,
0.7 cores of API). So each client has a bucket of refusals: `burst` of them go out at once,
then the bucket refills at `per_second`, and a refusal beyond it is answered only once the
bucket would have room again (at most `max_wait` seconds later). The wait costs no CPU and
holds one of the process's threads, so at most `slots` refusals wait at a time in a process;
past that, they are answered at once. A client that stops being refused gets full speed back
(accepted submissions are never delayed).

Per process, in memory: this bounds the load one client puts on each process and needs no
Redis (which may be the thing that is down). A client is its API key's name when
authentication is on, else its address: behind a proxy that does not pass the client's
address, every client shares one bucket, which docs/security.md says.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

# Clients remembered per process; the least recently refused are forgotten first (a
# forgotten client starts again with a full bucket).
MAX_CLIENTS = 10_000


class RefusalThrottle:
    """A bucket of refusals per client; `wait_for` delays a refusal past the bucket."""

    def __init__(self, burst: int, per_second: float, slots: int, max_wait: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.burst, self.per_second, self.max_wait = burst, per_second, max_wait
        self.enabled = per_second > 0 and slots > 0
        self._slots = threading.BoundedSemaphore(max(slots, 1))
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # level, at

    def delay(self, client: str) -> float:
        """Count a refusal of this client: the seconds to hold its answer (0: at once)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            level, at = self._buckets.pop(client, (float(self.burst), now))
            level = min(float(self.burst), level + (now - at) * self.per_second) - 1.0
            # Refusals that arrive together queue one behind another, up to max_wait.
            level = max(level, -self.max_wait * self.per_second)
            self._buckets[client] = (level, now)
            while len(self._buckets) > MAX_CLIENTS:
                self._buckets.popitem(last=False)
        return 0.0 if level >= 0 else min(-level / self.per_second, self.max_wait)

    def hold(self, client: str) -> float:
        """Count a refusal and wait as long as `delay` says, if a slot is free; the seconds
        waited."""
        wait = self.delay(client)
        if wait <= 0 or not self._slots.acquire(blocking=False):
            return 0.0
        try:
            # time.sleep looked up now, not when this module was imported: under gevent
            # workers (GUNICORN_CMD_ARGS) it is patched to yield to the process's other
            # requests only after the module may already have been imported.
            (self._sleep or time.sleep)(wait)
        finally:
            self._slots.release()
        return wait
