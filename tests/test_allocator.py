"""The API's allocator setting (shared.allocator): freed upload pieces are reused from the
heap instead of landing on new pages each time, which the page-fault count shows."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import os, resource, socket, sys, threading
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.unreader import SocketUnreader
from werkzeug.wsgi import LimitedStream
from api.upload import PacedInput
from shared.allocator import keep_heap
from shared.jobs.submit import copy_limited
if sys.argv[1] == "keep":
    assert keep_heap()
SIZE = 300 << 20
ours, theirs = socket.socketpair()
def send():
    block = b"x" * (256 << 10)
    for _ in range(SIZE // len(block)):
        theirs.sendall(block)
threading.Thread(target=send, daemon=True).start()
# what an upload goes through: gunicorn's body reader, the API's pacing, Flask's stream,
# the copy into the staging file
body = Body(LengthReader(SocketUnreader(ours), SIZE))
stream = LimitedStream(PacedInput(body, 1, 10.0, None), SIZE)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with open(os.devnull, "wb") as out:
    assert copy_limited(stream, out, SIZE) == SIZE
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True,
                         text=True, check=True, timeout=60)
    return int(out.stdout)


def test_kept_heap_reuses_freed_pieces():
    default, kept = _faults("default"), _faults("keep")
    # 300 MiB: glibc's defaults fault on 60,000-100,000 pages, the kept heap on ~2,300
    assert default > 20_000, default
    assert kept < default / 10, (kept, default)


def test_gunicorn_workers_keep_the_heap(monkeypatch):
    import importlib

    import shared.allocator

    calls = []
    monkeypatch.setattr(shared.allocator, "keep_heap", lambda: calls.append(1) or True)
    conf = importlib.import_module("api.gunicorn_conf")
    conf.post_fork(None, None)
    assert calls == [1]


def test_tabserve_worker_starts_with_few_malloc_arenas(worker):
    """glibc reads MALLOC_ARENA_MAX as a process starts: `tabserve worker` sets it (one arena
    per core, at least 2) for Celery and its pool processes, unless the environment has it."""
    import os

    import psutil

    from shared.allocator import worker_arenas

    expected = worker_arenas(os.cpu_count() or 1)
    procs = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
    assert len(procs) >= 2  # Celery's main process and its pool process
    for proc in procs:
        assert proc.environ().get("MALLOC_ARENA_MAX") == expected, proc.cmdline()
