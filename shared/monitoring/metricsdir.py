"""The metrics directory's life: made (or emptied) before a server starts, removed at its exit.

prometheus_client picks multiprocess mode from PROMETHEUS_MULTIPROC_DIR when it is imported,
so `tabserve api` and `tabserve worker` call `prepare` before they exec gunicorn or Celery.
A directory made here holds a marker file with the pid that made it; exec keeps the pid, so
the gunicorn master or the Celery main process, and no child of theirs, removes it at exit.
A directory the deployment gives is emptied of a previous run's files and never removed.

A server killed outright leaves its directory behind: the next `prepare` (any tabserve server
starting on the machine) removes directories whose maker is no longer running. Inside a live
directory, every process that ever ran has its files (`counter_<pid>.db`, ...); `sweep_dead`
folds those of dead processes into one file per kind (`counter_archive.db`), so totals are
kept while the files do not pile up, and drops their live gauges, which died with them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
MARKER = "created-by-tabserve.pid"  # not *.db: prometheus_client reads only those
PREFIX = "tabserve-metrics-"
LOCK = "sweep.lock"  # held shared while the files are read, exclusive while folded
ARCHIVE = "archive"  # the "pid" of the files that hold dead processes' values


def prepare(env: MutableMapping[str, str], role: str) -> Path:
    """Set env[ENV] to a fresh directory owned by this pid, or empty the one already given."""
    given = env.get(ENV)
    if given:
        return clean(given)
    remove_dead_dirs()
    directory = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{role}-"))
    (directory / MARKER).write_text(f"{os.getpid()} {_pid_namespace()}\n")
    env[ENV] = str(directory)
    return directory


def _pid_namespace() -> str:
    """This process's PID namespace ("pid:[4026531836]"), "" where /proc does not say."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _maker(directory: Path) -> tuple[int, str | None]:
    """The pid that made a directory and its PID namespace (None: a marker without one)."""
    fields = (directory / MARKER).read_text().split()
    return int(fields[0]), (fields[1] if len(fields) > 1 else None)


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
        owner, namespace = _maker(path)
    except (OSError, ValueError, IndexError):
        return False
    if owner != os.getpid() or namespace not in (None, _pid_namespace()):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_dead_dirs(parent: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the directories tabserve made (here, or in the temp dir) whose maker died.
    Only a maker in this PID namespace can be seen to have died: a server in a container
    sharing this temp dir (or in a PID namespace of a test) has pids this one cannot see."""
    removed = []
    here = _pid_namespace()
    for directory in Path(parent or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            owner, namespace = _maker(directory)
        except (OSError, ValueError, IndexError):
            continue  # not made by tabserve, or not yet marked
        if namespace is not None and namespace != here:
            continue  # its maker's pid means nothing here
        if not _alive(owner):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


@contextmanager
def locked(directory: str | os.PathLike[str], exclusive: bool = False) -> Iterator[None]:
    """Hold the directory's sweep lock: shared to read the files, exclusive to fold them."""
    with open(Path(directory) / LOCK, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sweep_dead(directory: str | os.PathLike[str] | None = None) -> int:
    """Fold the metric files of processes that died into the archive files; returns how
    many files went."""
    raw = directory or os.environ.get(ENV)
    if not raw or not Path(raw).is_dir():
        return 0
    path = Path(raw)
    dead: dict[str, list[Path]] = {}
    for file in path.glob("*.db"):
        kind, _, pid = file.stem.rpartition("_")
        if pid.isdigit() and not _alive(int(pid)):
            dead.setdefault(kind, []).append(file)
    if not dead:
        return 0
    with locked(path, exclusive=True):
        for kind, files in dead.items():
            _fold(path, kind, files)
    return sum(map(len, dead.values()))


def _fold(path: Path, kind: str, files: list[Path]) -> None:
    from prometheus_client.mmap_dict import MmapedDict

    mode = kind.split("_", 1)[1] if kind.startswith("gauge_") else "sum"
    if mode not in ("sum", "max", "min", "mostrecent"):  # live* and all: per process
        for file in files:
            file.unlink(missing_ok=True)
        return
    archive = path / f"{kind}_{ARCHIVE}.db"
    merged: dict[str, tuple[float, float]] = {}
    for file in [archive, *files] if archive.exists() else files:
        for key, value, stamp, _ in MmapedDict.read_all_values_from_file(str(file)):
            merged[key] = _combine(mode, merged.get(key), (value, stamp))
    partial = path / f"{kind}_{ARCHIVE}.db.new"  # not *.db: unread until renamed
    partial.unlink(missing_ok=True)
    out = MmapedDict(str(partial))
    try:
        for key, (value, stamp) in merged.items():
            out.write_value(key, value, stamp)
    finally:
        out.close()
    os.replace(partial, archive)
    for file in files:
        file.unlink(missing_ok=True)


def _combine(mode: str, old: tuple[float, float] | None,
             new: tuple[float, float]) -> tuple[float, float]:
    if old is None:
        return new
    if mode == "sum":  # counters, histogram buckets and sums, sum gauges
        return old[0] + new[0], max(old[1], new[1])
    if mode == "max":
        return max(old, new)
    if mode == "min":
        return min(old, new)
    return max(old, new, key=lambda vs: vs[1])  # mostrecent: the later timestamp
