"""A Parquet output written as segments, so that a resumed attempt keeps what a dead one wrote.

A Parquet file cannot be read before its footer is written, nor appended to. So an attempt
that records checkpoints writes its Parquet output as segment files (shared.jobs.paths
`segment`), each a complete Parquet file closed, through the store's writer, at a chunk's
end once it holds TABSERVE_SEGMENT_BYTES: a checkpoint is recorded then (not at the chunks
between), naming the closed segments, and a later attempt adopts them and writes its own
after them. When the range is done, the segments are joined into the
output by their bytes (shared.jobs.parquetjoin: one row group per chunk, as a single writer
makes); segments whose schemas differ are decoded and written again instead.
"""

from __future__ import annotations

import functools
import logging
from contextlib import ExitStack
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shared.jobs import paths
from shared.jobs.parquetjoin import CannotJoinError, join_files
from shared.storage import Storage

logger = logging.getLogger(__name__)

COMPRESSION = "snappy"


class SegmentedOutput:
    """Writes tables as OutputWriter does, into segment files cut by `cut()`; `close()`
    joins every segment (the adopted ones first) into the output's key."""

    def __init__(self, storage: Storage, key: str, adopted: list[str] | None = None,
                 rows: int = 0) -> None:
        self.storage, self.key = storage, key
        self.segments = list(adopted or [])  # closed, in order
        self.rows = rows
        self._schema: pa.Schema | None = None
        self._file: ExitStack | None = None
        self._fh: Any = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        """Append rows to the open segment (opened on the first write after a cut)."""
        if self._schema is None:
            self._schema = table.schema
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        if self._writer is None:
            self._file = ExitStack()
            self._fh = self._file.enter_context(self.storage.writer(self._next_key()))
            self._writer = pq.ParquetWriter(self._fh, self._schema, compression=COMPRESSION)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def _next_key(self) -> str:
        return paths.segment(self.key, len(self.segments))

    @property
    def open_bytes(self) -> int | None:
        """The bytes in the open segment so far; None when no segment is open."""
        return None if self._fh is None else int(self._fh.tell())

    def cut_past(self, min_bytes: int) -> list[str] | None:
        """At a chunk's end: close the open segment once it holds min_bytes, and return the
        closed segments' keys; None while it stays open (no checkpoint at this chunk)."""
        if self._fh is None or self._fh.tell() < min_bytes:
            return None
        return self.cut()

    def cut(self) -> list[str]:
        """Close the open segment (complete in the store once this returns); the closed
        segments' keys, in order."""
        if self._writer is not None and self._file is not None:
            key = self._next_key()
            self._writer.close()
            self._writer = None
            self._file.close()  # the store's writer: synced and renamed, or uploaded
            self._file = self._fh = None
            self.segments.append(key)
        return list(self.segments)

    def close(self) -> None:
        """Close the last segment and join them all into the output's key."""
        self.cut()
        join_parquet(self.storage, self.segments, self.key)

    def __enter__(self) -> SegmentedOutput:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._file is not None:  # a failed range: the open segment is discarded
            if self._writer is not None:
                try:  # (else its __del__ writes a footer into the discarded file)
                    self._writer.close()
                except Exception:
                    pass
            self._file.__exit__(kind, exc, tb)
            self._file = self._fh = self._writer = None


def join_parquet(storage: Storage, sources: list[str], target: str) -> None:
    """Join Parquet files of the store into target, in order: by their bytes when their
    schemas match, else decoded and written again (cast to the first file's schema)."""
    try:
        with storage.writer(target) as out:
            join_files([functools.partial(storage.open, key) for key in sources], out)
        return
    except CannotJoinError as exc:
        logger.warning("%s: joining %d Parquet files by decoding them: %s", target,
                       len(sources), exc)
    with storage.writer(target) as out:
        writer: Any = None
        for key in sources:
            with storage.open(key) as fh:
                source = pq.ParquetFile(fh)
                for i in range(source.num_row_groups):
                    table = source.read_row_group(i)
                    if writer is None:
                        writer = pq.ParquetWriter(out, table.schema, compression=COMPRESSION)
                    elif table.schema != writer.schema:
                        table = table.cast(writer.schema)
                    writer.write_table(table)
        if writer is not None:
            writer.close()


def delete_segments(storage: Storage, segments: list[str]) -> None:
    """Remove joined segments (once the output they make is the job's or part's)."""
    for key in segments:
        storage.delete(key)
