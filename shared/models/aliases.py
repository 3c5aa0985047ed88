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
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.errors import ValidationError

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
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
