"""API keys: named, each with a role, stored only as hashes, in a setting or a file.

A key is a random token of 256 bits, so SHA-256 of it is enough: a salted, slow hash defends
low-entropy passwords against guessing, and nothing can guess a 256-bit token. Presented
keys are compared with every stored hash in constant time. The file is re-read when it
changes (its mtime, size or inode), so keys are created and revoked without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import orjson

from shared.errors import ConfigError
from shared.security.roles import Principal, Role

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "tsk_"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class KeyRecord:
    """One key as stored: its name, role and the hex SHA-256 of the token."""

    name: str
    role: Role
    sha256: str
    created_at: str | None = None


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    """A new key: shown once, never stored."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise ConfigError(f"key name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def record_of(name: str, role: str, digest: str, created_at: str | None = None) -> KeyRecord:
    """A validated KeyRecord; ConfigError naming the key when a part is wrong."""
    check_name(name)
    if role not in Role.__members__.values():
        raise ConfigError(f"key {name!r}: role {role!r} is not one of "
                          f"{', '.join(r.value for r in Role)}")
    if not _HEX.match(digest):
        raise ConfigError(f"key {name!r}: the hash must be 64 lowercase hex digits (SHA-256)")
    return KeyRecord(name, Role(role), digest, created_at)


def parse_setting(value: str) -> list[KeyRecord]:
    """Keys from TABSERVE_API_KEYS: `name:role:sha256-hex`, comma-separated."""
    records = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        pieces = item.split(":")
        if len(pieces) != 3:
            raise ConfigError("TABSERVE_API_KEYS: each key is name:role:sha256-hex")
        records.append(record_of(*pieces))
    return records


def read_key_file(path: Path) -> list[KeyRecord]:
    """The keys in a keys file (none when it does not exist)."""
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the keys file {path}: {exc}") from None
    return [record_of(name, entry.get("role", ""), entry.get("sha256", ""),
                      entry.get("created_at"))
            for name, entry in raw.get("keys", {}).items()]


def write_key_file(path: Path, records: list[KeyRecord]) -> None:
    """Replace the keys file at once (readers see the old or the new one), owner-only."""
    body = {"keys": {r.name: {"role": r.role.value, "sha256": r.sha256,
                              "created_at": r.created_at} for r in records}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps(body, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


class KeyStore:
    """The keys a process accepts: the setting's and the file's, the file re-read when it
    changes."""

    def __init__(self, setting: str, path: Path | None) -> None:
        self._fixed = parse_setting(setting)
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._from_file: list[KeyRecord] = []

    def authenticate(self, token: str) -> Principal | None:
        """The key's principal, or None for a token that matches no key."""
        digest = hash_key(token)
        found = None
        for record in self._records():
            # Every record is compared, in constant time, whichever matches.
            if hmac.compare_digest(digest, record.sha256):
                found = record
        return None if found is None else Principal(found.name, found.role)

    def _records(self) -> list[KeyRecord]:
        if self._path is None:
            return self._fixed
        stamp = _stamp(self._path)
        if stamp != self._stamp:
            with self._lock:
                self._reload(stamp)
        return self._fixed + self._from_file

    def _reload(self, stamp: tuple[int, int, int] | None) -> None:
        assert self._path is not None
        try:
            self._from_file = read_key_file(self._path)
        except ConfigError as exc:
            # Fail closed: a broken file accepts no key from it, until it is fixed.
            logger.error("%s; its keys are refused", exc.message)
            self._from_file = []
        self._stamp = stamp


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
