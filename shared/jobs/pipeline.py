"""Overlapping a job's stages: read and parse ahead, write behind, while the model scores.

pyarrow's parser, the model's native code and pyarrow's writers release the GIL, so with a
bounded queue between stages a worker keeps more than one core busy and memory stays at a
few chunks whatever the file's size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterable[T], depth: int = 1) -> Generator[T, None, None]:
    """Produce items in a thread, up to `depth` ahead of the consumer."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(_Failure(exc))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


class WriteBehind:
    """Runs write(item) in a thread, at most `depth` items behind; errors surface on put/close."""

    def __init__(self, write: Callable[[Any], None], depth: int = 1) -> None:
        self._write = write
        self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _END:
                return
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as exc:  # raised in the caller's thread
                    self._error = exc

    def put(self, item: Any) -> None:
        """Queue an item for writing (blocks while the writer is `depth` behind)."""
        if self._error is not None:
            raise self._error
        self._q.put(item)

    def close(self) -> None:
        """Wait for every queued write; raise the first error."""
        self._q.put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error


def lower_priority(nice: int) -> None:
    """Raise this process's niceness to `nice` (never lower it: that needs privileges), so
    that scoring yields the CPU to online requests on the same machine. Threads started
    afterwards (pyarrow's pools, the job's reader and writer) inherit it."""
    import os

    current = os.nice(0)
    if nice > current:
        os.nice(nice - current)


def cores(threads: int) -> int:
    """The threads a worker's stages use at once: TABSERVE_WORKER_THREADS, 0 for one per
    CPU."""
    import os

    return threads or os.cpu_count() or 1


def configure_arrow(threads: int) -> None:
    """Size pyarrow's thread pools (0: one per CPU) and use an allocator that returns freed
    memory, so a worker's resident memory follows its chunks rather than its peak."""
    import pyarrow as pa

    count = cores(threads)
    pa.set_cpu_count(count)
    pa.set_io_thread_count(max(count, 2))
    # The system allocator hands large blocks back at once; the bundled one keeps them
    # (measured peak for a 1M-row CSV job: 428 MB against 443 MB, at the same speed).
    pa.set_memory_pool(pa.system_memory_pool())
