"""The metrics directory's life: made (or emptied) before a server starts, removed at its exit.

prometheus_client picks multiprocess mode from PROMETHEUS_MULTIPROC_DIR when it is imported,
so `tabserve api` and `tabserve worker` call `prepare` before they exec gunicorn or Celery.
A directory made here holds a marker file with the pid that made it; exec keeps the pid, so
the gunicorn master or the Celery main process, and no child of theirs, removes it at exit.
A directory the deployment gives is emptied of a previous run's files and never removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
MARKER = "created-by-tabserve.pid"  # not *.db: prometheus_client reads only those


def prepare(env: MutableMapping[str, str], role: str) -> Path:
    """Set env[ENV] to a fresh directory owned by this pid, or empty the one already given."""
    given = env.get(ENV)
    if given:
        return clean(given)
    directory = Path(tempfile.mkdtemp(prefix=f"tabserve-metrics-{role}-"))
    (directory / MARKER).write_text(f"{os.getpid()}\n")
    env[ENV] = str(directory)
    return directory


def clean(directory: str | os.PathLike[str]) -> Path:
    """Create the directory if needed and delete a previous run's metric files."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return path


def remove_if_owned(directory: str | os.PathLike[str] | None = None) -> bool:
    """Remove the directory when this process made it (see the module docstring)."""
    raw = directory or os.environ.get(ENV)
    if not raw:
        return False
    path = Path(raw)
    try:
        owner = int((path / MARKER).read_text().strip())
    except (OSError, ValueError):
        return False
    if owner != os.getpid():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True
