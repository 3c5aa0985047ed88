"""Where uploads, outputs and error files live: one interface over the data directory.

Keys look like `jobs/<id>/input.csv`. Writes go to a temporary name and are moved into
place only when complete, so a reader never sees a half-written file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class LocalStorage:
    """Storage on a local or shared filesystem (TABSERVE_DATA_DIR)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The local path of a key (the scoring code reads files by path)."""
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad storage key {key!r}")
        return self.root / key

    @contextmanager
    def writer(self, key: str, mode: str = "wb") -> Iterator[IO]:
        """Open key for writing; it appears under its name only if the block succeeds."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
        try:
            with open(tmp, mode) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def open(self, key: str) -> IO[bytes]:
        """Open key for reading."""
        return open(self.path(key), "rb")

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under a prefix (a job's directory)."""
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def list_prefixes(self, prefix: str) -> list[str]:
        """Immediate sub-prefixes (job directories) under prefix."""
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return [f"{prefix.rstrip('/')}/{p.name}" for p in base.iterdir() if p.is_dir()]

    def staging_file(self) -> tuple[Path, IO[bytes]]:
        """A temporary file on the same filesystem, for streaming an upload into."""
        staging = self.root / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        path = staging / f"{uuid.uuid4().hex}.part"
        return path, open(path, "wb")

    def adopt(self, path: Path, key: str) -> None:
        """Move a staged file into place under key."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, final)
