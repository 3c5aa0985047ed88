"""glibc's allocator: an API worker's heap kept for upload pieces, a job worker's arenas few.

An upload arrives in pieces of up to 1 MiB (api/upload.py; gunicorn's reader buffers as much),
each a fresh bytes object freed a moment later. With glibc's defaults such a block is either
mapped and unmapped each time or taken from the top of the heap, which glibc hands back to the
kernel as soon as 2 MiB are free there: either way every piece lands on new pages, and the
kernel zeroes and maps them again. A 556 MiB upload cost an API worker 100,000-200,000 page
faults and 0.6-0.9 s of system time; with the heap's top kept, 1,000-10,000 faults and 0.3 s
(the upload took 0.7-0.9 s instead of 1.1-1.6 s; bench in the commit).

A job worker's pyarrow buffers are allocated with malloc too (shared.jobs.pipeline.
configure_arrow), so that its resident memory follows its chunks; there the heap is left to
glibc (kept, it raised a worker's page faults), but the threads that parse, score and write
share one arena per core (`worker_arenas`, MALLOC_ARENA_MAX, set by `tabserve worker` before
Python starts: mallopt once threads exist changed nothing measurable). With glibc's default
of 8 per core each thread's arena held on to its own freed blocks, and a worker's peak grew
from 367 MB after a 1M-row job to 427 MB after a second and 475 MB after a 5M-row one; with
2 arenas, 360, 359 and 418 MB (bench in the commit).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap (glibc's largest allowed is 32 MiB)...
MMAP_THRESHOLD = 4 << 20
# ...and up to this much free memory stays at the heap's top instead of going back.
TRIM_THRESHOLD = 32 << 20


def _mallopt() -> Any:
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt


def worker_arenas(cores: int) -> str:
    """MALLOC_ARENA_MAX for a job worker whose stages use `cores` threads at once."""
    return str(max(cores, 2))


def keep_heap(mmap_threshold: int = MMAP_THRESHOLD,
              trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Serve blocks below mmap_threshold from the heap and keep up to trim_threshold free
    bytes at its top; False where the C library has no mallopt (musl, macOS)."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    # Both at once: setting either one turns off glibc's own adjustment of the other.
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(M_TRIM_THRESHOLD, trim_threshold))
