"""CSV text in blocks: the dialect, the header, byte blocks cut at record ends (see
shared.jobs.csvrecords), each parsed by pyarrow's reader on one thread (a reader runs several
blocks at once: shared.jobs.inputs), rows it cannot split set aside with their numbers."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from shared.errors import BadRequestError, InputRowError, ValidationError
from shared.jobs.csvrecords import line_ends, read_into, record_cut

SNIFF_BYTES = 64 * 1024
MAX_LINE_BYTES = 8 * 1024 * 1024
# pyarrow's own block size within a block: 1 MiB (measured faster than 4 or 16 MiB); a block
# holding a longer row is parsed as one unit.
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


class RowTooLongError(InputRowError):
    """A CSV row longer than the limit (TABSERVE_MAX_LINE_BYTES), by the byte it starts at;
    `row` is its number once the reader that counts rows knows it."""

    def __init__(self, offset: int, limit: int, row: int | None = None,
                 unclosed: bool = True) -> None:
        where = "" if row is None else f"row {row}: "
        quote = ", or a quote in it is never closed" if unclosed else ""
        super().__init__(f"{where}the CSV row starting at byte {offset} is longer than the "
                         f"limit of {limit} bytes (TABSERVE_MAX_LINE_BYTES){quote}", row)
        self.offset, self.limit, self.unclosed = offset, limit, unclosed

    def at_row(self, row: int) -> RowTooLongError:
        """The same error naming the row (0-based, as every job error numbers rows)."""
        return RowTooLongError(self.offset, self.limit, row, self.unclosed)


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
                dialect: CsvDialect = PLAIN) -> Iterator[Block]:
    """Blocks of about block_bytes (up to `limit` bytes in all), each ending at a record's
    end (a line end outside quoted values); fh must be at a record's start.

    Each block is read straight into a fresh buffer (readinto), with the partial record left
    over from the previous block copied in front: one copy of the file's bytes in all.
    """
    carry = b""
    offset = fh.tell()
    left, max_line_bytes, delimiter = limit, dialect.max_line_bytes, dialect.delimiter
    while True:
        # a record longer than a block: read as much again as is carried, not block by block
        # (the carry is at most max_line_bytes: a longer record is refused below)
        want = max(block_bytes, len(carry))
        want = want if left is None else min(want, left)
        buf = bytearray(len(carry) + want)
        buf[: len(carry)] = carry
        view = memoryview(buf)
        got = read_into(fh, view[len(carry):]) if want else 0
        if left is not None:
            left -= got
        end = len(carry) + got
        offset += got
        if got == 0:
            if carry.strip():
                yield Block(view[:end], offset, b'"' in carry)
            return
        cut, multiline = record_cut(buf, end, delimiter)
        if cut == 0:
            if end > max_line_bytes:
                raise RowTooLongError(offset - end, max_line_bytes)
            carry = bytes(view[:end])
            continue
        too_long = end - cut > max_line_bytes  # the record after the cut: refused, not kept
        carry = b"" if too_long else bytes(view[cut:end])
        if cut > 1024 or bytes(view[:cut]).strip():
            block = Block(view[:cut], offset - (end - cut), multiline)
            del buf, view  # only the yielded block keeps the buffer alive
            yield block  # first: the rows before the long one are numbered by their reader
            del block
        if too_long:
            raise RowTooLongError(offset - (end - cut), max_line_bytes)


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
        return _parse(parser, layout, start_row)
    except RowTooLongError as exc:
        raise exc.at_row(start_row + (exc.row or 0)) from None


def _parse(parser: _BlockParser, layout: CsvLayout,
           start_row: int) -> tuple[pa.Table, list[BadRow]]:
    try:
        try:
            table = parser.read(layout.column_types)
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc).lower():
                raise
            # A value is not of its column's type: read as text, let validation name the rows.
            table = _decimal_points(parser.read({}), layout)
    except pa.ArrowInvalid as exc:
        hint = (f": the file is not {layout.dialect.encoding} text there (send the "
                "encoding option)" if "invalid UTF8" in str(exc) else "")
        raise ValidationError(f"CSV parse error after row {start_row}: "
                              f"{_short(exc)}{hint}") from None
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
    """pyarrow's reader over one block, on the calling thread, noting the rows it could not
    split. One thread per block: pyarrow's multithreaded reader took 1.2-1.5x the CPU time
    for the same rows (bench/batch_budget.py), and a job's reader parses blocks side by side
    instead (shared.jobs.inputs)."""

    def __init__(self, block: Block, layout: CsvLayout) -> None:
        self.block, self.layout = block, layout
        self.data = pa.py_buffer(to_utf8(block.data, layout.dialect.encoding, block.start))
        self.invalid: list[pacsv.InvalidRow] = []

    def read(self, types: dict[str, pa.DataType]) -> pa.Table:
        size = PARSE_BLOCK_BYTES
        if self.layout.dialect.max_line_bytes < size:  # pyarrow would not see a long row
            _check_row_lengths(self.block, self.layout.dialect)
        while True:
            self.invalid.clear()
            try:
                return pacsv.read_csv(
                    pa.BufferReader(self.data),
                    read_options=pacsv.ReadOptions(column_names=self.layout.names,
                                                   use_threads=False, block_size=size),
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
                _check_row_lengths(self.block, self.layout.dialect)
                size = self.data.size + 1

    def _note(self, row: pacsv.InvalidRow) -> str:
        self.invalid.append(row)
        return "skip"

    def bad_rows(self) -> list[BadRow]:
        # read on one thread, pyarrow numbers every row it hands to the handler
        return [BadRow(r.number - 1, f"expected {r.expected_columns} columns, got "
                                     f"{r.actual_columns}") for r in self.invalid]


def _check_row_lengths(block: Block, dialect: CsvDialect) -> None:
    """Refuse a block holding a row longer than the limit (as read_blocks refuses a row that
    does not fit in a block)."""
    lines, inside = line_ends(np.frombuffer(block.data, dtype=np.uint8), dialect.delimiter)
    ends = lines[~inside] + 1
    starts = np.concatenate([[0], ends[:-1]])
    longest = int(np.argmax(ends - starts)) if len(ends) else 0
    if len(ends) and ends[longest] - starts[longest] > dialect.max_line_bytes:
        # `longest` records precede it in the block (a blank line counts as one here)
        raise RowTooLongError(block.start + int(starts[longest]), dialect.max_line_bytes,
                              longest, unclosed=False)


def _short(exc: Exception) -> str:
    return str(exc).split("\n")[0][:300]
