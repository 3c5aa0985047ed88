"""Steps that must not hold a gevent worker's event loop.

Under gevent (TABSERVE_WEB_WORKER_CLASS=gevent, the API's default) all of a process's requests
share one loop, and a step that neither waits on a socket nor sleeps holds every other request
of the process until it ends. Under threads (gthread, Celery's workers) the GIL is shared every
few milliseconds anyway, so both helpers change nothing there.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


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
    fast upload's reads): no-op outside gevent."""
    if under_gevent():
        time.sleep(0)  # gevent.sleep(0) once patched
