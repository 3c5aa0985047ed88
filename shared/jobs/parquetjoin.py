"""Parquet files of one schema joined into one file without decoding a value.

A Parquet file is `PAR1`, its row groups' pages, a footer (a Thrift compact FileMetaData),
the footer's length and `PAR1`. Files written with the same schema are joined by copying
each one's pages after the first's and writing one footer that lists every row group, with
the offsets of each file's pages moved by where they land. Only the footer is parsed; the
pages are copied as bytes. Files whose schemas differ (or a footer this reader does not
know) raise `CannotJoinError`; the caller decodes instead (shared.jobs.segments).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import IO

MAGIC = b"PAR1"
COPY_BYTES = 8 << 20

# Thrift compact types
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = \
    range(1, 13)
# Absolute file offsets, by struct and field id (parquet.thrift): RowGroup.file_offset;
# ColumnChunk.file_offset, offset_index_offset, column_index_offset; ColumnMetaData's
# data_page_offset, index_page_offset, dictionary_page_offset, bloom_filter_offset.
_OFFSETS = {"RowGroup": {5}, "ColumnChunk": {2, 4, 6}, "ColumnMetaData": {9, 10, 11, 14}}
# Structs holding offsets, by parent and field id (lists: their element's struct).
_CHILDREN = {("RowGroup", 1): "ColumnChunk", ("ColumnChunk", 3): "ColumnMetaData"}
_FILE_NUM_ROWS, _FILE_ROW_GROUPS, _ROW_GROUP_ORDINAL = 3, 4, 7


class CannotJoinError(ValueError):
    """The files cannot be joined by their bytes (schemas differ, or an unknown footer)."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self) -> int:
        shift = value = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def field(self, last: int) -> tuple[int, int]:
        """(field id, type) of the next field; type 0 at the struct's end."""
        head = self.byte()
        kind, delta = head & 0x0F, head >> 4
        if kind == 0:
            return 0, 0
        return (last + delta if delta else self.zigzag()), kind

    def list_head(self) -> tuple[int, int]:
        head = self.byte()
        size = head >> 4
        return (self.varint() if size == 15 else size), head & 0x0F

    def skip(self, kind: int) -> None:
        if kind in (_TRUE, _FALSE):
            return
        if kind == _BYTE:
            self.pos += 1
        elif kind in (_I16, _I32, _I64):
            self.varint()
        elif kind == _DOUBLE:
            self.pos += 8
        elif kind == _BINARY:
            length = self.varint()  # read before pos is: varint() moves it
            self.pos += length
        elif kind in (_LIST, _SET):
            size, elem = self.list_head()
            for _ in range(size):
                self.skip(_BYTE if elem in (_TRUE, _FALSE) else elem)
        elif kind == _MAP:
            size = self.varint()
            if size:
                types = self.byte()
                for _ in range(size):
                    self.skip(types >> 4)
                    self.skip(types & 0x0F)
        elif kind == _STRUCT:
            last = 0
            while True:
                last, kind = self.field(last)
                if kind == 0:
                    return
                self.skip(kind)
        else:
            raise CannotJoinError(f"unknown Thrift type {kind} in a Parquet footer")


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


def _list_head(size: int, elem: int) -> bytes:
    return bytes([(size << 4) | elem]) if size < 15 else bytes([0xF0 | elem]) + _varint(size)


def _struct(r: _Reader, name: str, edit: Callable[[str, int, int], int | None]) -> bytes:
    """Copy the struct at the reader, with the integer fields `edit` gives a value for
    (by struct name, field id, old value) replaced; nested known structs are edited too."""
    out, last = bytearray(), 0
    while True:
        start = r.pos
        last, kind = r.field(last)
        if kind == 0:
            out.append(0)
            return bytes(out)
        out += r.data[start:r.pos]
        child = _CHILDREN.get((name, last))
        if kind in (_I16, _I32, _I64):
            value = r.zigzag()
            new = edit(name, last, value)
            out += _zigzag(value if new is None else new)
        elif kind == _STRUCT and child:
            out += _struct(r, child, edit)
        elif kind == _LIST and child:
            size, elem = r.list_head()
            out += _list_head(size, elem)
            for _ in range(size):
                out += _struct(r, child, edit)
        else:
            begin = r.pos
            r.skip(kind)
            out += r.data[begin:r.pos]


class _Footer:
    """One file's footer, split into its fields; its row groups kept as their bytes."""

    def __init__(self, data: bytes) -> None:
        r, last = _Reader(data), 0
        self.fields: list[tuple[int, int, bytes]] = []  # id, type, raw value (not groups)
        self.row_groups: list[bytes] = []
        self.num_rows = 0
        while True:
            last, kind = r.field(last)
            if kind == 0:
                break
            if last == _FILE_ROW_GROUPS and kind == _LIST:
                size, _ = r.list_head()
                for _ in range(size):
                    start = r.pos
                    r.skip(_STRUCT)
                    self.row_groups.append(data[start:r.pos])
                self.fields.append((last, kind, b""))
                continue
            start = r.pos
            if last == _FILE_NUM_ROWS:
                self.num_rows = r.zigzag()
            else:
                r.skip(kind)
            self.fields.append((last, kind, data[start:r.pos]))

    def same_schema(self, other: _Footer) -> bool:
        """Schema, key-value metadata (the Arrow schema), column orders: the same bytes."""
        def kept(f: _Footer) -> list[tuple[int, int, bytes]]:
            return [x for x in f.fields if x[0] in (1, 2, 5, 7)]
        return kept(self) == kept(other)

    def encode(self, num_rows: int, row_groups: list[bytes]) -> bytes:
        out, last = bytearray(), 0
        for fid, kind, raw in self.fields:
            delta = fid - last
            out += bytes([(delta << 4) | kind]) if 0 < delta <= 15 else \
                bytes([kind]) + _zigzag(fid)
            last = fid
            if fid == _FILE_NUM_ROWS:
                out += _zigzag(num_rows)
            elif fid == _FILE_ROW_GROUPS:
                out += _list_head(len(row_groups), _STRUCT) + b"".join(row_groups)
            else:
                out += raw
        out.append(0)
        return bytes(out)


def _moved(row_group: bytes, shift: int, ordinal: int) -> bytes:
    def edit(name: str, fid: int, value: int) -> int | None:
        if name == "RowGroup" and fid == _ROW_GROUP_ORDINAL:
            return ordinal
        # 0 is no offset (the file's magic is there): an unset or deprecated field.
        return value + shift if value and fid in _OFFSETS.get(name, ()) else None
    return _struct(_Reader(row_group), "RowGroup", edit)


def read_footer(fh: IO[bytes]) -> tuple[bytes, int]:
    """A Parquet file's footer bytes and where its pages end (the footer's offset)."""
    size = fh.seek(0, 2)
    if size < 12:
        raise CannotJoinError("not a Parquet file: too short")
    fh.seek(size - 8)
    tail = fh.read(8)
    length = struct.unpack("<I", tail[:4])[0]
    if tail[4:] != MAGIC or length > size - 12:
        raise CannotJoinError("not a Parquet file (or an encrypted footer)")
    fh.seek(size - 8 - length)
    return fh.read(length), size - 8 - length


def join_files(sources: Iterable[Callable[[], IO[bytes]]], out: IO[bytes]) -> int:
    """Write the Parquet files that `sources` open, in order, into `out` as one file;
    returns its row count. Raises CannotJoinError before writing if the files cannot be
    joined by their bytes."""
    opened = list(sources)
    footers, ends = [], []
    for open_source in opened:
        with open_source() as fh:
            data, end = read_footer(fh)
        footers.append(_Footer(data))
        ends.append(end)
    if not footers or any(not f.same_schema(footers[0]) for f in footers[1:]):
        raise CannotJoinError("the files' schemas differ")
    if sum(len(f.row_groups) for f in footers) > 32767:  # RowGroup.ordinal is an i16
        raise CannotJoinError("too many row groups")
    out.write(MAGIC)
    position = len(MAGIC)
    groups: list[bytes] = []
    for open_source, footer, end in zip(opened, footers, ends, strict=True):
        shift = position - len(MAGIC)
        groups += [_moved(g, shift, len(groups) + i) for i, g in enumerate(footer.row_groups)]
        with open_source() as fh:
            fh.seek(len(MAGIC))
            left = end - len(MAGIC)
            while left > 0:
                piece = fh.read(min(COPY_BYTES, left))
                if not piece:
                    raise CannotJoinError("a Parquet file changed while it was joined")
                out.write(piece)
                left -= len(piece)
        position += end - len(MAGIC)
    rows = sum(f.num_rows for f in footers)
    joined = footers[0].encode(rows, groups)
    out.write(joined + struct.pack("<I", len(joined)) + MAGIC)
    return rows
