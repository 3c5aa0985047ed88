"""CSV text in blocks: the header, line-aligned byte blocks parsed by pyarrow's
multithreaded reader, and row counts of byte ranges (for jobs split into parts)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from shared.errors import BadRequestError, ValidationError

SNIFF_BYTES = 64 * 1024
MAX_LINE_BYTES = 8 * 1024 * 1024
# Counted a block at a time: 256 KiB keeps the block and its masks in L2 (583 MB of CSV in
# ~0.20 s here; 4 MiB blocks and an index of every line end took ~0.29 s)
COUNT_BLOCK_BYTES = 256 << 10
SCAN_BLOCK_BYTES = 8 << 20
# 1 MiB parse blocks: enough units for every core (measured faster than 4 or 16 MiB); a
# block holding a longer row is parsed as one unit.
PARSE_BLOCK_BYTES = 1 << 20
NULL_VALUES = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"]


@dataclass(frozen=True)
class CsvDialect:
    """How a CSV file is written: its delimiter, its text encoding (ASCII-compatible, so line
    ends and quotes are the same bytes whatever it is), the longest row allowed, and the
    decimal mark of its numbers."""

    delimiter: str = ","
    encoding: str = "utf-8"
    max_line_bytes: int = MAX_LINE_BYTES
    decimal: str = "."


PLAIN = CsvDialect()


def read_header(fh: IO[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> bytes:
    """The first line of a CSV file, line end included."""
    fh.seek(0)
    line = fh.readline(max_line_bytes)
    if not line.strip():
        raise BadRequestError("the CSV file has no header line")
    if not line.endswith(b"\n") and len(line) >= max_line_bytes:
        raise BadRequestError(f"the CSV header line is longer than the limit of "
                              f"{max_line_bytes} bytes")
    if line.count(b'"') % 2:
        raise BadRequestError("the CSV header line has an unclosed quote (a line break inside "
                              "a quoted column name?): column names must fit on one line")
    return line if line.endswith(b"\n") else line + b"\n"


def header_columns(header: bytes, dialect: CsvDialect = PLAIN) -> list[str]:
    """Column names of a CSV header line, parsed as pyarrow parses them."""
    text = to_utf8(header, dialect.encoding, 0)
    try:
        table = pacsv.read_csv(
            io.BytesIO(text),
            read_options=pacsv.ReadOptions(autogenerate_column_names=True,
                                           block_size=max(len(text) + 1, 1 << 20)),
            parse_options=pacsv.ParseOptions(delimiter=dialect.delimiter))
    except pa.ArrowException as exc:
        raise BadRequestError(f"the CSV header cannot be parsed: {exc}") from None
    names = [str(v[0].as_py()) if len(v) else "" for v in table.columns]
    return names


def to_utf8(data: bytes | memoryview, encoding: str, offset: int) -> bytes | memoryview:
    """CSV bytes as UTF-8 (what pyarrow reads); a byte the encoding lacks is a clear error."""
    if encoding == "utf-8":
        return data
    try:
        return bytes(data).decode(encoding).encode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"byte {offset + exc.start} of the file is not {encoding} text"
                              ) from None


def record_cut(buf: bytes | bytearray, end: int) -> tuple[int, bool]:
    """Where the last whole record in buf[:end] ends (0: none), and whether a line end
    before it falls inside a quoted value. buf must start at a record's start.

    A line end ends a record when an even number of quotes comes before it: RFC 4180
    doubles a quote inside a quoted value, so the count is odd exactly inside one.
    Blocks without a quote (one memchr) take the plain cut.
    """
    if buf.find(b'"', 0, end) < 0:
        return buf.rfind(b"\n", 0, end) + 1, False
    arr = np.frombuffer(buf, dtype=np.uint8, count=end)
    lines = np.flatnonzero(arr == 10)
    inside = np.searchsorted(np.flatnonzero(arr == 34), lines) & 1
    ends = lines[inside == 0]
    if not len(ends):
        return 0, False
    return int(ends[-1]) + 1, bool(inside[:np.searchsorted(lines, ends[-1])].any())


def count_csv_rows(fh: IO[bytes], start: int, end: int) -> int:
    """Rows in CSV bytes [start, end) as pyarrow counts them: records, less empty ones.
    start must be a record's start.

    NumPy finds the line ends (passes that release the GIL, so a part counting its range in
    a thread barely slows its own scoring); a line end right after another ends an empty
    line, as does one after "\n\r" (looked for only in blocks that hold a carriage return).
    In blocks that hold a quote, line ends inside quoted values are left out.
    """
    fh.seek(start)
    rows = odd = 0
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
        if buf.find(b'"', 2, n + 2) >= 0 or odd:
            counted, odd = _count_quoted(arr, ends, odd)
            rows += counted
        elif buf.find(b"\r", 0, n + 2) < 0:  # line feeds only: reused buffers, in cache
            empty = np.count_nonzero(np.logical_and(ends[2:], ends[1:-1], out=after_end[:n]))
            rows += int(np.count_nonzero(ends[2:])) - int(empty)
        else:
            rows += _count_lines(arr, np.flatnonzero(ends[2:]) + 2)
        buf[:2] = buf[n:n + 2]
        remaining -= n
    last = bytes(buf[:2])
    if (last[-1:] != b"\n" or odd) and last.strip():
        rows += 1  # a last line without a line end
    return rows


def _count_lines(arr: np.ndarray, at: np.ndarray) -> int:
    """Records ending at the line ends `at`, less the empty ones."""
    before = arr[at - 1]
    empty = np.count_nonzero((before == 10) | ((before == 13) & (arr[at - 2] == 10)))
    return len(at) - int(empty)


def _count_quoted(arr: np.ndarray, ends: np.ndarray, odd: int) -> tuple[int, int]:
    """_count_lines over the line ends outside quoted values; the quote parity after."""
    at = np.flatnonzero(ends[2:]) + 2
    quotes = np.flatnonzero(arr[2:] == 34) + 2
    inside = (np.searchsorted(quotes, at) + odd) & 1
    return _count_lines(arr, at[inside == 0]), (odd + len(quotes)) & 1


def record_cuts(fh: IO[bytes], start: int, size: int, step: int) -> list[int]:
    """Record starts about step bytes apart, from start (a record's start) to size: each
    cut is the first record end at or after step bytes past the one before.

    One pass over the file, since only the quotes before a line end tell whether it ends a
    record; a block without a quote costs a memchr.
    """
    cuts, odd, pos = [start], 0, start
    target = start + step
    fh.seek(start)
    while target < size:
        block = fh.read(SCAN_BLOCK_BYTES)
        if not block:
            break
        if block.find(b'"') < 0:  # parity unchanged; line ends are record ends if even
            while not odd and target < size and (
                    i := block.find(b"\n", max(target - pos, 0))) >= 0:
                cuts.append(pos + i + 1)
                target = cuts[-1] + step
        else:
            arr = np.frombuffer(block, dtype=np.uint8)
            lines = np.flatnonzero(arr == 10)
            quotes = np.flatnonzero(arr == 34)
            ends = lines[((np.searchsorted(quotes, lines) + odd) & 1) == 0] + 1 + pos
            odd = (odd + len(quotes)) & 1
            while target < size and (at := np.searchsorted(ends, target)) < len(ends):
                cuts.append(int(ends[at]))
                target = cuts[-1] + step
        pos += len(block)
    return [c for c in cuts if c < size] + [size]


def csv_block_bytes(fh: IO[bytes], chunk_rows: int) -> int:
    """Bytes per CSV block so that a block holds about chunk_rows rows."""
    fh.seek(0)
    fh.readline(MAX_LINE_BYTES)
    sample = fh.read(SNIFF_BYTES)
    lines = max(sample.count(b"\n"), 1)
    per_row = max(len(sample) / lines, 1.0)
    return max(int(per_row * chunk_rows), 64 * 1024)


class Block(NamedTuple):
    """CSV bytes that end at a record's end: the offset reached in the file, and whether a
    line end in them falls inside a quoted value (pyarrow must then look for quotes)."""

    data: memoryview
    offset: int
    multiline: bool

    @property
    def start(self) -> int:
        return self.offset - len(self.data)


def read_blocks(fh: IO[bytes], block_bytes: int, limit: int | None = None,
                max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[Block]:
    """Blocks of about block_bytes (up to `limit` bytes in all), each ending at a record's
    end (a line end outside quoted values); fh must be at a record's start.

    Each block is read straight into a fresh buffer (readinto), with the partial record left
    over from the previous block copied in front: one copy of the file's bytes in all.
    """
    carry = b""
    offset = fh.tell()
    left = limit
    while True:
        # a record longer than a block: read as much again as is carried, not block by block
        want = max(block_bytes, len(carry))
        want = want if left is None else min(want, left)
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
                yield Block(view[:end], offset, b'"' in carry)
            return
        cut, multiline = record_cut(buf, end)
        if cut == 0:
            if end > max_line_bytes:
                raise ValidationError(
                    f"the CSV row starting at byte {offset - end} is longer than the limit of "
                    f"{max_line_bytes} bytes, or a quote in it is never closed")
            carry = bytes(view[:end])
            continue
        carry = bytes(view[cut:end])
        if cut > 1024 or bytes(view[:cut]).strip():
            block = Block(view[:cut], offset - len(carry), multiline)
            del buf, view  # only the yielded block keeps the buffer alive
            yield block
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
                        columns: list[str], decimal: str = ".") -> pacsv.ConvertOptions:
    """Parse features into their Arrow types and every other kept column as text."""
    types = {n: column_types.get(n, pa.string()) for n in columns}
    return pacsv.ConvertOptions(column_types=types, include_columns=columns,
                                null_values=NULL_VALUES, strings_can_be_null=True,
                                quoted_strings_can_be_null=False, decimal_point=decimal)


@dataclass(frozen=True)
class CsvLayout:
    """What every block of one file is parsed with: the header's names, the feature types,
    the columns kept, and the file's dialect."""

    names: list[str]
    column_types: dict[str, pa.DataType]
    columns: list[str]
    dialect: CsvDialect = PLAIN


class BadRow(NamedTuple):
    """A row pyarrow could not split into the header's columns: its place in its block."""

    offset: int
    reason: str


def parse_csv_block(block: Block, layout: CsvLayout,
                    start_row: int) -> tuple[pa.Table, list[BadRow]]:
    """Parse one block, setting aside rows with the wrong number of columns; on a value that
    does not convert, re-parse as text to locate it."""
    parser = _BlockParser(block, layout)
    try:
        table = parser.read(layout.column_types)
    except pa.ArrowInvalid as exc:
        if "conversion error" not in str(exc).lower():
            raise ValidationError(f"CSV parse error after row {start_row}: "
                                  f"{_short(exc)}") from None
        # Some value is not of its column's type: read as text, let validation name the rows.
        table = _decimal_points(parser.read({}), layout)
    return table, parser.bad_rows()


def _decimal_points(table: pa.Table, layout: CsvLayout) -> pa.Table:
    """Numbers read as text with decimal points, as validation reads them."""
    if layout.dialect.decimal == ".":
        return table
    for name, dtype in layout.column_types.items():
        if pa.types.is_floating(dtype) and name in table.column_names:
            column = pc.replace_substring(table.column(name), layout.dialect.decimal, ".")
            table = table.set_column(table.column_names.index(name), name, column)
    return table


class _BlockParser:
    """pyarrow's multithreaded reader over one block, noting the rows it could not split."""

    def __init__(self, block: Block, layout: CsvLayout) -> None:
        self.block, self.layout = block, layout
        self.data = pa.py_buffer(to_utf8(block.data, layout.dialect.encoding, block.start))
        self.types = layout.column_types
        self.invalid: list[pacsv.InvalidRow] = []

    def read(self, types: dict[str, pa.DataType], threads: bool = True) -> pa.Table:
        self.types = types
        size = PARSE_BLOCK_BYTES
        if self.layout.dialect.max_line_bytes < size:  # pyarrow would not see a long row
            _check_row_lengths(self.block, self.layout.dialect.max_line_bytes)
        while True:
            self.invalid.clear()
            try:
                return pacsv.read_csv(
                    pa.BufferReader(self.data),
                    read_options=pacsv.ReadOptions(column_names=self.layout.names,
                                                   use_threads=threads, block_size=size),
                    parse_options=pacsv.ParseOptions(
                        delimiter=self.layout.dialect.delimiter,
                        newlines_in_values=self.block.multiline,
                        invalid_row_handler=self._note),
                    convert_options=csv_convert_options(self.layout.names, types,
                                                        self.layout.columns,
                                                        self.layout.dialect.decimal))
            except pa.ArrowInvalid as exc:
                if "straddling" not in str(exc) or size > self.data.size:
                    raise
                _check_row_lengths(self.block, self.layout.dialect.max_line_bytes)
                size = self.data.size + 1

    def _note(self, row: pacsv.InvalidRow) -> str:
        self.invalid.append(row)
        return "skip"

    def bad_rows(self) -> list[BadRow]:
        if any(r.number is None for r in self.invalid):
            self.read(self.types, threads=False)  # only one thread numbers the rows
        return [BadRow(r.number - 1, f"expected {r.expected_columns} columns, got "
                                     f"{r.actual_columns}") for r in self.invalid]


def _check_row_lengths(block: Block, limit: int) -> None:
    """Refuse a block holding a row longer than the limit (as read_blocks refuses a row that
    does not fit in a block)."""
    arr = np.frombuffer(block.data, dtype=np.uint8)
    lines = np.flatnonzero(arr == 10)
    ends = lines[(np.searchsorted(np.flatnonzero(arr == 34), lines) & 1) == 0] + 1
    starts = np.concatenate([[0], ends[:-1]])
    longest = int(np.argmax(ends - starts)) if len(ends) else 0
    if len(ends) and ends[longest] - starts[longest] > limit:
        raise ValidationError(
            f"the CSV row starting at byte {block.start + int(starts[longest])} is longer "
            f"than the limit of {limit} bytes")


def _short(exc: Exception) -> str:
    return str(exc).split("\n")[0][:300]
