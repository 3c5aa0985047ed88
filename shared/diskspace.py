"""Disk space: what is free where jobs' files go, a reserve kept free, a full disk as a 507.

A full disk shows as OSError ENOSPC (or EDQUOT, a quota), raised by whatever wrote: a staged
upload, a job's output, an fsync. Its message names the file, so clients get this module's
words instead, which name none.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from shared.errors import InsufficientStorageError

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether exc, or an exception it was raised from, is a full disk or quota."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def storage_full(what: str) -> InsufficientStorageError:
    """The 507 for a write that found the disk full (`what`: what was being written)."""
    return InsufficientStorageError(
        f"the server ran out of disk space while storing {what}; nothing was kept. Try "
        "again later, or ask the operator to free space in the data directory")


def disk_usage(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(free bytes for unprivileged writers, size in bytes) of the filesystem holding path
    (or its nearest existing parent); None when there is none."""
    here = Path(path)
    for candidate in (here, *here.parents):
        try:
            st = os.statvfs(candidate)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    return None


def check_free_space(dirs: Iterable[str | os.PathLike[str]], reserve: int,
                     incoming: int = 0) -> None:
    """507 unless each directory keeps `reserve` bytes free after `incoming` more."""
    for directory in dirs:
        usage = disk_usage(directory)
        if usage is None or usage[0] - incoming >= reserve:
            continue
        size = f"an upload of {incoming} bytes" if incoming else "an upload"
        raise InsufficientStorageError(
            f"the server is short of disk space: {size} would leave less than the "
            f"{reserve} bytes it keeps free (TABSERVE_MIN_FREE_BYTES). Try again later, or "
            "ask the operator to free space in the data directory",
            details=[{"field": "file", "message": "not enough disk space on the server"}])
