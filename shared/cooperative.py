"""Steps that must not hold a gevent worker's event loop.

Under gevent (TABSERVE_WEB_WORKER_CLASS=gevent, the API's default) all of a process's requests
share one loop, and a step that neither waits on a socket nor sleeps holds every other request
of the process until it ends. Under threads (gthread, Celery's workers) the GIL is shared every
few milliseconds anyway, so both helpers change nothing there.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any, TypeVar

T = TypeVar("T")
PAUSE_SECONDS = 1e-6  # any timer: it is due at the loop's next turn


def under_gevent() -> bool:
    """Whether gevent has patched this process's threading (a gevent worker after it started)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def off_loop(fn: Callable[..., T], *args: object) -> T:
    """fn(*args), in one of the loop's native threads under gevent (the loop serves the
    process's other requests meanwhile), or here otherwise. For a long CPU step: a model's
    checksum and unpickling, a large batch's validation and prediction.

    fn must be a pure step: nothing that logs, writes a metric or takes another lock the
    loop's greenlets take. Such a lock is gevent's once patched, and a greenlet waiting on it
    while the native thread holds it was seen to miss its wake-up for seconds (a request
    that arrived while a model was loaded and logged in the thread:
    tests/test_lifecycle.py::test_hot_promotion_under_load)."""
    if not under_gevent():
        return fn(*args)
    import gevent

    return gevent.get_hub().threadpool.apply(fn, args)


def pause() -> None:
    """Let the loop serve the process's other requests between the pieces of a long step (a
    fast upload's reads): no-op outside gevent.

    A timer, not gevent.sleep(0): sleep(0) queues a callback, and gevent runs 50 queued
    callbacks before it checks the time and polls the sockets again, so a loop of 1 ms
    pieces that each sleep(0) held the process's other requests ~50 ms at a time (/predict's
    p99 110-120 ms beside one client uploading large files, against 14-16 ms with the
    uploads on another process; bench.isolation phase f). A timer waits for the loop's next
    turn, which polls first."""
    if under_gevent():
        time.sleep(PAUSE_SECONDS)  # gevent.sleep once patched


def fsync(fh: IO[Any]) -> None:
    """Flush fh and wait for its bytes to reach the disk, off the loop under gevent: an
    fsync waits for the disk, not a socket (a 556 MiB upload's took 0.2 s), and on the loop
    it held every other request of the process as long (/predict's p99 beside one client
    uploading large files back to back: 232 ms, bench.isolation phase f)."""
    fh.flush()
    off_loop(os.fsync, fh.fileno())

