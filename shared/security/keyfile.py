"""`tabserve keys`: create, list and revoke the named keys of a keys file."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from shared.errors import ConfigError
from shared.security.keystore import (
    KeyRecord,
    check_name,
    hash_key,
    new_token,
    read_key_file,
    record_of,
    write_key_file,
)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two `tabserve keys` commands at once must not lose each other's change.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def create_key(path: Path, name: str, role: str) -> str:
    """Add a key; returns the token (the only time it is seen: the file keeps its hash)."""
    check_name(name)
    with _locked(path):
        records = read_key_file(path)
        if any(r.name == name for r in records):
            raise ConfigError(f"there is already a key named {name!r}: revoke it first")
        token = new_token()
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        records.append(record_of(name, role, hash_key(token), stamp))
        write_key_file(path, records)
    return token


def list_keys(path: Path) -> list[KeyRecord]:
    return read_key_file(path)


def revoke_key(path: Path, name: str) -> None:
    """Remove a key; servers refuse it from their next request."""
    with _locked(path):
        records = read_key_file(path)
        kept = [r for r in records if r.name != name]
        if len(kept) == len(records):
            raise ConfigError(f"there is no key named {name!r}")
        write_key_file(path, kept)
