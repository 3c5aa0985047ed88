"""CSV text in blocks: the header, line-aligned byte blocks parsed by pyarrow's
multithreaded reader, and row counts of byte ranges (for jobs split into parts)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from shared.errors import BadRequestError, ValidationError

SNIFF_BYTES = 64 * 1024
MAX_LINE_BYTES = 8 * 1024 * 1024
# Counted a block at a time: 256 KiB keeps the block and its masks in L2 (583 MB of CSV in
# ~0.20 s here; 4 MiB blocks and an index of every line end took ~0.29 s)
COUNT_BLOCK_BYTES = 256 << 10
NULL_VALUES = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"]


def read_header(fh: IO[bytes]) -> bytes:
    """The first line of a CSV file, line end included."""
    fh.seek(0)
    line = fh.readline(MAX_LINE_BYTES)
    if not line.strip():
        raise BadRequestError("the CSV file has no header line")
    if not line.endswith(b"\n") and len(line) >= MAX_LINE_BYTES:
        raise BadRequestError("the CSV header line is too long")
    return line if line.endswith(b"\n") else line + b"\n"


def header_columns(header: bytes) -> list[str]:
    """Column names of a CSV header line, parsed as pyarrow parses them."""
    try:
        table = pacsv.read_csv(io.BytesIO(header), read_options=pacsv.ReadOptions(
            autogenerate_column_names=True))
    except pa.ArrowException as exc:
        raise BadRequestError(f"the CSV header cannot be parsed: {exc}") from None
    names = [str(v[0].as_py()) if len(v) else "" for v in table.columns]
    return names


def count_csv_rows(fh: IO[bytes], start: int, end: int) -> int:
    """Rows in CSV bytes [start, end) as pyarrow counts them: lines, less empty ones.

    NumPy finds the line ends (passes that release the GIL, so a part counting its range in
    a thread barely slows its own scoring); a line end right after another ends an empty
    line, as does one after "\n\r" (looked for only in blocks that hold a carriage return).
    """
    fh.seek(start)
    rows = 0
    # buf[:2] holds the two bytes before each block: those before `start` end a line.
    buf = bytearray(2 + min(COUNT_BLOCK_BYTES, max(end - start, 1)))
    buf[:2] = b"x\n"
    is_end, after_end = np.empty(len(buf), dtype=bool), np.empty(len(buf), dtype=bool)
    remaining = end - start
    while remaining > 0:
        n = _read_into(fh, memoryview(buf)[2:2 + min(len(buf) - 2, remaining)])
        if n == 0:
            break
        arr = np.frombuffer(buf, dtype=np.uint8, count=n + 2)
        ends = np.equal(arr, 10, out=is_end[:n + 2])
        if buf.find(b"\r", 0, n + 2) < 0:  # line feeds only: reused buffers, in cache
            empty = np.count_nonzero(np.logical_and(ends[2:], ends[1:-1], out=after_end[:n]))
        else:
            at = np.flatnonzero(ends[2:]) + 2
            before = arr[at - 1]
            empty = np.count_nonzero((before == 10) | ((before == 13) & (arr[at - 2] == 10)))
        rows += int(np.count_nonzero(ends[2:])) - int(empty)
        buf[:2] = buf[n:n + 2]
        remaining -= n
    last = bytes(buf[:2])
    if last[-1:] != b"\n" and last.strip():
        rows += 1  # a last line without a line end
    return rows


def csv_block_bytes(fh: IO[bytes], chunk_rows: int) -> int:
    """Bytes per CSV block so that a block holds about chunk_rows rows."""
    fh.seek(0)
    fh.readline(MAX_LINE_BYTES)
    sample = fh.read(SNIFF_BYTES)
    lines = max(sample.count(b"\n"), 1)
    per_row = max(len(sample) / lines, 1.0)
    return max(int(per_row * chunk_rows), 64 * 1024)


def read_blocks(fh: IO[bytes], block_bytes: int,
                limit: int | None = None) -> Iterator[tuple[memoryview, int]]:
    """Blocks of about block_bytes (up to `limit` bytes in all), each ending at a line end;
    with the offset reached.

    Each block is read straight into a fresh buffer (readinto), with the partial line left
    over from the previous block copied in front: one copy of the file's bytes in all.
    """
    carry = b""
    offset = fh.tell()
    left = limit
    while True:
        want = block_bytes if left is None else min(block_bytes, left)
        buf = bytearray(len(carry) + want)
        buf[: len(carry)] = carry
        view = memoryview(buf)
        got = _read_into(fh, view[len(carry):]) if want else 0
        if left is not None:
            left -= got
        end = len(carry) + got
        offset += got
        if got == 0:
            if carry.strip():
                yield view[:end], offset
            return
        cut = buf.rfind(b"\n", 0, end) + 1
        if cut == 0:
            if end > MAX_LINE_BYTES:
                raise ValidationError(f"a CSV line near byte {offset} is longer than "
                                      f"{MAX_LINE_BYTES} bytes")
            carry = bytes(view[:end])
            continue
        carry = bytes(view[cut:end])
        if cut > 1024 or bytes(view[:cut]).strip():
            block = view[:cut]
            del buf, view  # only the yielded block keeps the buffer alive
            yield block, offset - len(carry)
            del block


def _read_into(fh: IO[bytes], view: memoryview) -> int:
    """Fill view from fh as far as the file allows."""
    total = 0
    readinto = getattr(fh, "readinto", None)
    while total < len(view):
        if readinto is not None:
            n = readinto(view[total:])
        else:
            data = fh.read(len(view) - total)
            n = len(data)
            view[total:total + n] = data
        if not n:
            break
        total += n
    return total


def csv_convert_options(names: list[str], column_types: dict[str, pa.DataType],
                        columns: list[str]) -> pacsv.ConvertOptions:
    """Parse features into their Arrow types and every other kept column as text."""
    types = {n: column_types.get(n, pa.string()) for n in columns}
    return pacsv.ConvertOptions(column_types=types, include_columns=columns,
                                null_values=NULL_VALUES, strings_can_be_null=True,
                                quoted_strings_can_be_null=False)


def parse_csv_block(block: bytes | memoryview, names: list[str],
                    column_types: dict[str, pa.DataType], columns: list[str],
                    start_row: int) -> pa.Table:
    """Parse one block; on a value that does not convert, re-parse as text to locate it."""
    # 1 MiB parse blocks: enough units for every core (measured faster than 4 or 16 MiB).
    read = pacsv.ReadOptions(column_names=names, use_threads=True, block_size=1 << 20)
    try:
        return pacsv.read_csv(pa.BufferReader(pa.py_buffer(block)), read_options=read,
                              convert_options=csv_convert_options(names, column_types, columns))
    except pa.ArrowInvalid as exc:
        if "conversion error" not in str(exc).lower():
            raise ValidationError(f"CSV parse error after row {start_row}: "
                                  f"{_short(exc)}") from None
    # Some value is not of its column's type: read as text, let validation name the rows.
    return pacsv.read_csv(pa.BufferReader(pa.py_buffer(block)), read_options=read,
                          convert_options=csv_convert_options(names, {}, columns))


def _short(exc: Exception) -> str:
    return str(exc).split("\n")[0][:300]
