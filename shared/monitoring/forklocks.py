"""prometheus_client's locks, new in a forked child.

prometheus_client guards its multiprocess values with one plain lock, and the registry and
each labelled metric's children with one each. A process that forks while another of its
threads holds one of them (a Celery worker's heartbeat or reaper recording a metric while the
pool starts or replaces a process; a gunicorn master's) gives the child that lock held by a
thread the child does not have, and the child hangs at its first metric. Seen on 2026-12-03:
a pool process stuck for good in `MmapedValue.__init__` while it warmed its model, its worker
having taken a job it never started (the reaper sent it again after 5 minutes, to the same
worker).

Right after a fork, in the child (os.register_at_fork, shared.monitoring.metrics), every one
of those locks is replaced by a new one. What they guard is whole in the child: the values
start over in the child's own files at their first use (prometheus_client sees the new pid
and reopens them), and the dictionaries change in single steps under the GIL.
"""

from __future__ import annotations

import threading
from types import CellType
from typing import Any

from prometheus_client import values

_LOCK = type(threading.Lock())


def values_lock_cells() -> list[CellType]:
    """The closure cells holding the multiprocess values' lock (one, shared by every
    method of prometheus_client's MmapedValue); none outside multiprocess mode."""
    cells: list[CellType] = []
    for fn in vars(values.ValueClass).values():
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                held = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(held, _LOCK) and all(cell is not c for c in cells):
                cells.append(cell)
    return cells


def renew_locks(registry: Any) -> int:
    """Give the values, the registry and each labelled metric registered in it new locks,
    as a forked child's first step; how many were replaced."""
    renewed = 0
    for cell in values_lock_cells():
        cell.cell_contents = threading.Lock()
        renewed += 1
    for owner in [registry, *getattr(registry, "_collector_to_names", {})]:
        if isinstance(getattr(owner, "_lock", None), _LOCK):
            owner._lock = threading.Lock()
            renewed += 1
    return renewed
