"""A model's aliases: names (`live`, `champion`, ...) for its versions, in one small file
beside the versions, `artifacts/<name>/_aliases.json`.

`live` is the alias an unpinned request for the model gets; promoting a version moves it, and
a rollback is a promote of the older version. Every change is appended to the file's history.
Writes are atomic (a temporary file renamed over the old one, under an advisory lock so two
writers do not lose each other's change); readers never see half a file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.cooperative import fsync
from shared.errors import ConflictError, ModelLoadError, ValidationError

logger = logging.getLogger(__name__)

ALIASES_FILE = "_aliases.json"  # "_": never a version directory
LIVE = "live"  # the alias unpinned requests follow
ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
HISTORY_KEEP = 100


def check_alias(alias: str) -> str:
    """The alias, or a 422 saying what an alias may be."""
    if not ALIAS_RE.fullmatch(alias):
        raise ValidationError(f"invalid alias {alias!r}: use a lowercase letter, then up to 31 "
                              "lowercase letters, digits, '_' or '-'")
    return alias


def read_aliases(model_dir: Path) -> dict[str, Any] | None:
    """The model's alias record ({"aliases": {alias: version}, "history": [...]}), or None
    when it has no file. OSError or ValueError when the file cannot be read."""
    try:
        data = json.loads((model_dir / ALIASES_FILE).read_text())
    except FileNotFoundError:
        return None
    aliases = data.get("aliases") if isinstance(data, dict) else None
    if not isinstance(aliases, dict):
        raise ValueError(f"{ALIASES_FILE} has no 'aliases' object")
    clean = {a: v for a, v in aliases.items()
             if isinstance(a, str) and ALIAS_RE.fullmatch(a) and type(v) is int and v > 0}
    history = data.get("history")
    return {"aliases": clean, "history": history if isinstance(history, list) else []}


def write_alias(model_dir: Path, alias: str, version: int | None,
                actor: str | None = None) -> int | None:
    """Point `alias` at `version` (None: remove it); the version it named before."""
    with _locked(model_dir):
        try:
            record = read_aliases(model_dir) or {"aliases": {}, "history": []}
        except ValueError:  # a damaged file is replaced by a good one
            record = {"aliases": {}, "history": []}
        previous = record["aliases"].get(alias)
        if version is None:
            record["aliases"].pop(alias, None)
        else:
            record["aliases"][alias] = version
        change = {"alias": alias, "version": version, "previous": previous,
                  "at": datetime.now(UTC).isoformat(timespec="seconds")}
        if actor:
            change["by"] = actor
        record["history"] = [*record["history"], change][-HISTORY_KEEP:]
        _replace(model_dir / ALIASES_FILE, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return previous


class AliasBook:
    """The aliases files of every model under one artifacts directory, each re-read at most
    every refresh_seconds: requests without a version come here."""

    def __init__(self, root: Path, refresh_seconds: float = 2.0) -> None:
        self.root = root
        self.refresh_seconds = refresh_seconds
        self._read: dict[str, tuple[dict[str, int], float]] = {}  # name -> (aliases, when)

    def get(self, name: str, fresh: bool = False) -> dict[str, int]:
        """The model's aliases ({} without a file); while the file cannot be read, the last
        good read, or a 503 if this process never had one."""
        cached = self._read.get(name)
        now = time.monotonic()
        if cached is not None and not fresh and now - cached[1] <= self.refresh_seconds:
            return cached[0]
        try:
            record = read_aliases(self.root / name)
        except (OSError, ValueError) as exc:
            logger.warning("model %s: aliases unreadable (%s)", name, _reason(exc))
            if cached is None:
                raise ModelLoadError(f"model {name}: its aliases file cannot be read: "
                                     f"{_reason(exc)}") from None
            self._read[name] = (cached[0], now)
            return cached[0]
        aliases = record["aliases"] if record else {}
        self._read[name] = (aliases, now)
        return aliases

    def history(self, name: str) -> list[dict[str, Any]]:
        """The model's alias changes, oldest first ([] when unreadable)."""
        try:
            record = read_aliases(self.root / name)
        except (OSError, ValueError):
            return []
        return record["history"] if record else []

    def write(self, name: str, alias: str, version: int | None,
              actor: str | None = None) -> int | None:
        """write_alias for one model; a 409 when the directory cannot be written."""
        try:
            previous = write_alias(self.root / name, alias, version, actor)
        except OSError as exc:
            raise ConflictError(f"model {name}: cannot write its aliases in the artifacts "
                                f"directory ({_reason(exc)}); run 'tabserve alias' or "
                                "'tabserve promote' where the directory is writable") from None
        self._read.pop(name, None)
        return previous


def _reason(exc: BaseException) -> str:
    # Without the path an OSError carries: answers must not show the server's directories.
    return (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else str(exc)


@contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    # An advisory lock on a file of its own: the aliases file itself is replaced by rename.
    fd = os.open(model_dir / ".aliases.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            fsync(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
