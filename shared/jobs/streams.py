"""Byte-stream files (a CSV or JSON lines output, the errors file) written in segments on a
store that cannot append, so that a resumed attempt keeps what a dead one wrote.

An object in S3 exists only once it is complete, and cannot be appended to; a checkpoint
needs bytes a later attempt can read. So an attempt that records checkpoints on such a store
writes these files as segment objects (shared.jobs.paths `segment`): the bytes go into the
open segment, which is closed, a complete object, at a chunk's end (shared.jobs.run decides
when), and the checkpoint names the closed ones; the next attempt adopts them and writes its
own after them. The segments are one stream cut in pieces: a CSV header is in the first
segment only (a resumed attempt writes none), and `join_bytes` lays them end to end (by
copies inside the store when it can: Storage.join_copies).
"""

from __future__ import annotations

import codecs
import logging
from contextlib import ExitStack
from types import TracebackType
from typing import IO, Any, cast

from shared.jobs import paths
from shared.jobs.outputs import OutputFormat, OutputWriter
from shared.storage import PIECE_BYTES, Storage

logger = logging.getLogger(__name__)


class SegmentedStream:
    """A binary file for writing whose bytes go into segment objects of `key`, each opened on
    the first write after a cut; `join()` lays every segment (the adopted ones first) into
    `key`."""

    def __init__(self, storage: Storage, key: str, adopted: list[str] | None = None) -> None:
        self.storage, self.key = storage, key
        self.segments = list(adopted or [])  # closed, in order
        self.written = 0  # by this attempt
        self._file: ExitStack | None = None
        self._fh: Any = None
        self._open = 0  # bytes in the open segment

    closed = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        """Append bytes to the open segment (opened now if none is)."""
        size = len(data)
        if not size:
            return 0
        if self._fh is None:
            self._file = ExitStack()
            self._fh = self._file.enter_context(self.storage.writer(
                paths.segment(self.key, len(self.segments))))
        self._fh.write(data)
        self._open += size
        self.written += size
        return size

    def flush(self) -> None:
        pass  # a segment is made durable by cut()

    def tell(self) -> int:
        return self.written

    def text(self) -> IO[str]:
        """The stream as a UTF-8 text file (for the errors file's csv writer)."""
        return cast(IO[str], codecs.getwriter("utf-8")(cast(IO[bytes], self)))

    @property
    def open_bytes(self) -> int | None:
        """The bytes in the open segment; None when no segment is open."""
        return None if self._fh is None else self._open

    def cut(self) -> list[str]:
        """Close the open segment (a complete object once this returns); the closed
        segments' keys, in order."""
        if self._file is not None:
            self.segments.append(paths.segment(self.key, len(self.segments)))
            self._file.close()  # the store's writer: synced and renamed, or uploaded
            self._file = self._fh = None
            self._open = 0
        return list(self.segments)

    def join(self) -> None:
        """Close the last segment and lay them all, in order, into the key."""
        self.cut()
        join_bytes(self.storage, self.segments, self.key)

    def __enter__(self) -> SegmentedStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._file is not None:  # a failed range: the open segment is discarded
            self._file.__exit__(kind, exc, tb)
            self._file = self._fh = None


class StreamOutput(OutputWriter):
    """A CSV or JSON lines output written into a SegmentedStream (its header, if any, only
    when no adopted segment holds one); `close()` joins the segments into the output."""

    def __init__(self, stream: SegmentedStream, fmt: OutputFormat, header: bool,
                 rows: int = 0) -> None:
        super().__init__(cast(IO[bytes], stream), fmt, header)
        self.stream, self.rows = stream, rows

    @property
    def open_bytes(self) -> int | None:
        return self.stream.open_bytes

    @property
    def segments(self) -> list[str]:
        return self.stream.segments

    def cut(self) -> list[str]:
        return self.stream.cut()

    def close(self) -> None:
        super().close()
        self.stream.join()


def join_bytes(storage: Storage, sources: list[str], target: str,
               drop_headers: bool = False) -> None:
    """Lay files of the store end to end into target: copied inside the store where it can
    (S3, files of at least 5 MiB but the last), else streamed piece by piece (never a whole
    file in memory); with drop_headers, each file after the first begins with a header line
    (a CSV file's), which is left out."""
    if not drop_headers and storage.join_copies(sources, target):
        return
    with storage.writer(target) as out:
        for i, key in enumerate(sources):
            with storage.open(key) as fh:
                if drop_headers and i > 0:
                    fh.readline()
                while piece := fh.read(PIECE_BYTES):
                    out.write(piece)
