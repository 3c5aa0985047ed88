"""Reading batch input files: format checks at submit, bounded-memory chunks at scoring time.

CSV is read in byte blocks cut at record ends (line ends outside quoted values), each parsed
by pyarrow's reader on one thread, several blocks at once; Parquet in record batches. Memory
is bounded by the block size whatever the file's size, and every chunk knows its first row
number. A CSV file's delimiter is found at submit (or given), and its encoding
given (UTF-8 by default, a BOM skipped).
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import IO, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.errors import (
    BadRequestError,
    InputRowError,
    PayloadTooLargeError,
    TabserveError,
    ValidationError,
)
from shared.jobs.csvblocks import (
    PLAIN,
    SNIFF_BYTES,
    BadRow,
    Block,
    CsvDialect,
    CsvLayout,
    RowTooLongError,
    csv_block_bytes,
    header_columns,
    parse_csv_block,
    read_blocks,
    read_header,
)
from shared.jobs.csvrecords import record_cut, record_cuts
from shared.models.schema import FeatureSpec, Schema

InputFormat = Literal["csv", "parquet"]
DELIMITERS = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "pipes"}
# A chunk's text is read whole: a file whose rows look long (a long first row) still gets
# blocks of a bounded size.
MAX_BLOCK_BYTES = 64 << 20
DECIMAL_COMMA = r"^\s*[-+]?[0-9]*,[0-9]+\s*$"


@dataclass
class Chunk:
    """A slice of the input: its first row's number, the rows, bytes consumed so far, and
    the rows that could not be read (not in `table`; numbered from start_row)."""

    start_row: int
    table: pa.Table
    bytes_done: int
    bad_rows: list[BadRow] = field(default_factory=list)

    @property
    def span(self) -> int:
        """The rows of the file the chunk covers, unreadable ones included."""
        return self.table.num_rows + len(self.bad_rows)


@dataclass
class InputInfo:
    """What a submit-time check learned of an input file."""

    format: InputFormat
    columns: list[str]
    rows_total: int | None
    size_bytes: int
    dialect: CsvDialect = PLAIN


@dataclass(frozen=True)
class InputLimits:
    """What a job's input may hold (settings): rows, columns, and for Parquet the bytes its
    row groups say they hold uncompressed and the size of its footer (None: no limit)."""

    max_rows: int | None = None
    max_columns: int | None = None
    max_row_group_bytes: int | None = None
    max_metadata_bytes: int | None = None


NO_LIMITS = InputLimits()


def column_limit(max_columns: int, features: int) -> int:
    """The most columns an input may have: the setting, or for a model with many features 4
    per feature and 100 more."""
    return max(max_columns, 4 * features + 100)


def check_csv_file(fh: IO[bytes], dialect: CsvDialect, max_columns: int | None) -> None:
    """The submit-time checks of a CSV file's start again, where a worker opens it (see
    check_parquet_file): text, not binary, and a header's columns (its delimiters counted on
    the raw line, before anything parses it) within the limit."""
    _check_text(fh, dialect.encoding)
    if max_columns is None:
        return
    columns = read_header(fh, dialect.max_line_bytes).count(dialect.delimiter.encode()) + 1
    fh.seek(0)
    if columns > max_columns:
        raise ValidationError(f"the CSV header has {columns} columns, over the limit of "
                              f"{max_columns} (TABSERVE_MAX_INPUT_COLUMNS)")


def arrow_type(spec: FeatureSpec) -> pa.DataType:
    """The Arrow type a feature column is parsed into."""
    if spec.type == "category":
        return pa.string()
    if spec.type == "boolean":
        return pa.bool_()
    return pa.float64()


def inspect_input(fh: IO[bytes], size: int, fmt: InputFormat, schema: Schema,
                  id_column: str | None = None, dialect: CsvDialect = PLAIN,
                  sniff: bool = True, limits: InputLimits = NO_LIMITS) -> InputInfo:
    """Check an input (an open, seekable file) before it is queued: readable, within the
    limits, has the columns. A CSV file's delimiter is sniffed from its header unless `sniff`
    is False."""
    if size == 0:
        raise BadRequestError("the uploaded file is empty")
    wanted = set(schema.names) | ({id_column} if id_column else set())
    if fmt == "parquet":
        _check_footer_size(fh, size, limits.max_metadata_bytes)
        info = _inspect_parquet(fh, size, schema, limits)
    else:
        info = _inspect_csv(fh, size, dialect, wanted if sniff else None)
    _check_columns(info.columns, schema, id_column, _delimiter_hint(info))
    if fmt == "csv":
        _check_decimal_marks(fh, info, [f.name for f in schema.features
                                        if f.type in ("number", "integer")])
    return info


def _check_footer_size(fh: IO[bytes], size: int, limit: int | None) -> None:
    """413 for a Parquet footer (its metadata) over the limit, read from the file's last 8
    bytes (footer length, then PAR1) before anything parses the footer."""
    if limit is None or size < 12:
        return  # too short for Parquet: the reader says so
    fh.seek(size - 8)
    tail = fh.read(8)
    fh.seek(0)
    footer = int.from_bytes(tail[:4], "little")
    if tail[4:] == b"PAR1" and footer > limit:
        raise PayloadTooLargeError(
            f"the Parquet file's metadata is {footer} bytes, over the limit of {limit} "
            "(TABSERVE_MAX_PARQUET_METADATA_BYTES)")


def _check_parquet_limits(meta: pq.FileMetaData, limits: InputLimits) -> None:
    """413 for a Parquet file with more rows or columns than a job may have, or a row group
    that says it holds more bytes uncompressed than the budget, before a row is read."""
    if limits.max_rows is not None and meta.num_rows > limits.max_rows:
        raise PayloadTooLargeError(
            f"the Parquet file has {meta.num_rows} rows, over the limit of {limits.max_rows} "
            "rows per job (TABSERVE_MAX_JOB_ROWS): split it into several jobs")
    if limits.max_columns is not None and meta.num_columns > limits.max_columns:
        raise PayloadTooLargeError(
            f"the Parquet file has {meta.num_columns} columns, over the limit of "
            f"{limits.max_columns} (TABSERVE_MAX_INPUT_COLUMNS)")
    budget = limits.max_row_group_bytes
    for index in range(meta.num_row_groups if budget is not None else 0):
        group = meta.row_group(index)
        declared = max(group.total_byte_size, sum(
            group.column(c).total_uncompressed_size for c in range(group.num_columns)))
        if declared > budget:  # type: ignore[operator]
            raise PayloadTooLargeError(
                f"row group {index} of the Parquet file holds {declared} bytes uncompressed, "
                f"over the budget of {budget} (TABSERVE_MAX_PARQUET_ROW_GROUP_BYTES): write "
                "it with smaller row groups")


def _inspect_parquet(fh: IO[bytes], size: int, schema: Schema,
                     limits: InputLimits = NO_LIMITS) -> InputInfo:
    try:
        meta = pq.ParquetFile(fh)
    except (pa.ArrowException, OSError) as exc:
        raise BadRequestError(f"the uploaded file is not a readable Parquet file: {exc}") from None
    _check_parquet_limits(meta.metadata, limits)
    arrow_schema = meta.schema_arrow
    rows = meta.metadata.num_rows
    if rows == 0:
        raise BadRequestError("the Parquet file has no rows")
    wrong = []
    for spec in schema.features:
        if spec.name in arrow_schema.names and not _compatible(
                arrow_schema.field(spec.name).type, spec):
            wrong.append({"field": spec.name, "message":
                          f"has type {arrow_schema.field(spec.name).type}, "
                          f"the model needs {spec.type}"})
    if wrong:
        raise ValidationError(
            "Parquet columns have the wrong types: " + ", ".join(d["field"] for d in wrong),
            details=wrong)
    return InputInfo("parquet", list(arrow_schema.names), rows, size)


def check_parquet_file(fh: IO[bytes], limits: InputLimits) -> None:
    """The submit-time limits again, where a worker opens a Parquet input: a file at an
    input_url may have been replaced since it was checked, or the limits lowered."""
    size = fh.seek(0, io.SEEK_END)
    _check_footer_size(fh, size, limits.max_metadata_bytes)
    try:
        meta = pq.ParquetFile(fh).metadata
    except (pa.ArrowException, OSError) as exc:
        raise BadRequestError(f"the input is not a readable Parquet file: {exc}") from None
    finally:
        fh.seek(0)
    _check_parquet_limits(meta, limits)


def _compatible(dtype: pa.DataType, spec: FeatureSpec) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    if spec.type == "category":
        return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
    if spec.type == "boolean":
        return pa.types.is_boolean(dtype)
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_null(dtype)


def _inspect_csv(fh: IO[bytes], size: int, dialect: CsvDialect,
                 wanted: set[str] | None) -> InputInfo:
    _check_text(fh, dialect.encoding)
    header = read_header(fh, dialect.max_line_bytes)
    if wanted is not None:
        dialect = _sniff_delimiter(header, dialect, wanted)
    columns = header_columns(header, dialect)
    fh.seek(len(header))
    if not fh.read(SNIFF_BYTES).strip():
        raise BadRequestError("the CSV file has a header but no data rows")
    return InputInfo("csv", columns, None, size, dialect)


def _check_text(fh: IO[bytes], encoding: str) -> None:
    """400 unless the file's first bytes are text in the encoding (not UTF-16, not binary:
    a gzip file named .csv)."""
    fh.seek(0)
    head = fh.read(SNIFF_BYTES)
    fh.seek(0)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise BadRequestError("the uploaded file is UTF-16 text (Excel's \"Unicode text\"): "
                              "save it as CSV UTF-8")
    if b"\x00" in head:
        raise BadRequestError("the uploaded file is binary, not CSV text")
    _check_encoding(head, encoding)


def _check_encoding(head: bytes, encoding: str) -> None:
    try:
        head.decode(encoding)
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the sniff boundary
            name = "UTF-8" if encoding == "utf-8" else encoding
            hint = (": if Excel or another Windows program saved it, send encoding=cp1252"
                    if encoding == "utf-8" else "")
            raise BadRequestError(
                f"the uploaded file is not {name} CSV text (bad byte at offset {exc.start})"
                f"{hint}") from None


def _sniff_delimiter(header: bytes, dialect: CsvDialect, wanted: set[str]) -> CsvDialect:
    """The delimiter under which the header holds the most wanted columns (commas unless
    another holds more)."""
    best, found = dialect, -1
    for delimiter in DELIMITERS:
        candidate = replace(dialect, delimiter=delimiter)
        try:
            held = len(wanted.intersection(header_columns(header, candidate)))
        except BadRequestError:
            continue
        if held > found:
            best, found = candidate, held
        if found == len(wanted):
            break
    return best


def _check_decimal_marks(fh: IO[bytes], info: InputInfo, numeric: list[str]) -> None:
    """Refuse numbers written with a decimal comma unless the decimal option says so: every
    row would fail."""
    if info.dialect.decimal != "." or not numeric:
        return
    start = len(read_header(fh, info.dialect.max_line_bytes))
    head = fh.read(SNIFF_BYTES)
    cut, multiline = record_cut(head, len(head)) if len(head) == SNIFF_BYTES else (
        len(head), b'"' in head)
    layout = CsvLayout(info.columns, {}, numeric, info.dialect)
    try:
        table, _ = parse_csv_block(Block(memoryview(head)[:cut], start + cut, multiline),
                                   layout, 0)
    except (TabserveError, pa.ArrowException):
        return  # the rows are checked one by one when the job runs
    for name in numeric:
        hits = pc.fill_null(pc.match_substring_regex(table.column(name), DECIMAL_COMMA), False)
        if pc.any(hits).as_py():
            value = table.column(name).filter(hits)[0].as_py()
            raise ValidationError(
                f"column {name!r} holds {value!r}, a number with a decimal comma: send "
                "decimal=, to read such numbers (or write the file with decimal points)",
                details=[{"field": name, "message": "decimal comma"}])


def _delimiter_hint(info: InputInfo) -> str:
    if info.format != "csv" or len(info.columns) > 1:
        return ""
    return (f" (the header is one column when split at {DELIMITERS[info.dialect.delimiter]}: "
            "if the file uses another delimiter, send the delimiter option)")


def _check_columns(columns: list[str], schema: Schema, id_column: str | None,
                   hint: str = "") -> None:
    seen: set[str] = set()
    dupes = sorted({c for c in columns if c in seen or seen.add(c)})  # type: ignore[func-returns-value]
    if dupes:
        raise ValidationError(f"duplicate column names: {', '.join(dupes)}",
                              details=[{"field": c, "message": "duplicate column"} for c in dupes])
    missing = [n for n in schema.names if n not in seen]
    if missing:
        raise ValidationError(
            f"the file lacks {len(missing)} feature column(s) the model needs: "
            + ", ".join(missing) + hint,
            details=[{"field": n, "message": "missing column"} for n in missing])
    if id_column is not None and id_column not in seen:
        raise ValidationError(f"id_column {id_column!r} is not a column of the file{hint}",
                              details=[{"field": id_column, "message": "missing column"}])


@dataclass(frozen=True)
class Part:
    """A slice of a file that one worker scores: CSV bytes [start, end), or Parquet row
    groups [start, end); first_row is the number of the slice's first row."""

    index: int
    start: int
    end: int
    first_row: int = 0
    skip: int = 0  # Parquet: rows of the first row group already done (a resumed range)


def whole_range(fh: IO[bytes], fmt: InputFormat) -> Part:
    """The whole file as one range (CSV: its bytes; Parquet: its row groups)."""
    if fmt == "parquet":
        return Part(0, 0, pq.ParquetFile(fh).metadata.num_row_groups)
    return Part(0, 0, fh.seek(0, io.SEEK_END))


def resumed_range(fh: IO[bytes], fmt: InputFormat, part: Part, rows_done: int,
                  position: int) -> Part:
    """What is left of a range after its first rows_done rows, which end at byte `position`
    (CSV); a Parquet range restarts at the row group holding its next row, skipping the rows
    of that group already done."""
    if fmt != "parquet":
        return replace(part, start=position, first_row=part.first_row + rows_done)
    meta = pq.ParquetFile(fh).metadata
    group, left = part.start, rows_done
    while group < part.end and left >= meta.row_group(group).num_rows:
        left -= meta.row_group(group).num_rows
        group += 1
    return Part(part.index, group, part.end, part.first_row + rows_done, left)


def plan_parts(fh: IO[bytes], fmt: InputFormat, part_rows: int,
               dialect: CsvDialect = PLAIN) -> list[Part]:
    """Cut a file into parts of about part_rows rows (one part when it is small, or a CSV
    file that quotes otherwise than RFC 4180)."""
    if fmt == "parquet":
        meta = pq.ParquetFile(fh).metadata
        parts: list[Part] = []
        first = rows = group = 0
        for g in range(meta.num_row_groups):
            rows += meta.row_group(g).num_rows
            if rows >= part_rows or g == meta.num_row_groups - 1:
                parts.append(Part(len(parts), group, g + 1, first))
                first, rows, group = first + rows, 0, g + 1
        return parts
    header = read_header(fh)
    size = fh.seek(0, io.SEEK_END)
    part_bytes = max(csv_block_bytes(fh, part_rows), 1 << 20)
    cuts = record_cuts(fh, len(header), size, part_bytes, dialect.delimiter)
    return [Part(i, a, b) for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))]


def iter_chunks(fh: IO[bytes], fmt: InputFormat, column_types: dict[str, pa.DataType],
                columns: list[str], chunk_rows: int, part: Part | None = None,
                dialect: CsvDialect = PLAIN, parsers: int = 1) -> Iterator[Chunk]:
    """Yield the rows of an open, seekable file (or of one part of it) in order, chunk_rows
    at a time (about, for CSV, whose blocks are parsed `parsers` at once)."""
    if fmt == "parquet":
        yield from _parquet_chunks(fh, column_types, columns, chunk_rows, part)
    else:
        yield from _csv_chunks(fh, CsvLayout([], column_types, columns, dialect), chunk_rows,
                               part, parsers)


def _parquet_chunks(fh: IO[bytes], column_types: dict[str, pa.DataType], columns: list[str],
                    chunk_rows: int, part: Part | None) -> Iterator[Chunk]:
    size = fh.seek(0, io.SEEK_END)
    # No pre-buffering: it holds whole row groups' bytes (measured: 510 MB against 230 MB
    # peak for a 1M-row file in 100k-row groups).
    pf = pq.ParquetFile(fh, pre_buffer=False, buffer_size=1 << 20)
    total = max(pf.metadata.num_rows, 1)
    start = part.first_row if part else 0
    groups = list(range(part.start, part.end)) if part else None
    skip = part.skip if part else 0
    batches = pf.iter_batches(batch_size=chunk_rows, columns=columns, use_threads=True,
                              row_groups=groups)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            if getattr(exc, "errno", None):  # the store's own I/O fault, not the file's
                raise
            raise InputRowError(f"row {start}: the Parquet file cannot be read from here "
                                f"(corrupt or truncated): {str(exc)[:200]}", start) from None
        if batch is None:
            return
        if skip:  # rows a resumed range has done already
            if batch.num_rows <= skip:
                skip -= batch.num_rows
                continue
            batch, skip = batch.slice(skip), 0
        table = pa.Table.from_batches([batch])
        table = table.cast(pa.schema([
            pa.field(n, column_types.get(n, table.schema.field(n).type)) for n in table.column_names
        ]))
        start += table.num_rows
        yield Chunk(start - table.num_rows, table, int(size * start / total))


def _csv_chunks(fh: IO[bytes], layout: CsvLayout, chunk_rows: int,
                part: Part | None, parsers: int = 1) -> Iterator[Chunk]:
    dialect = layout.dialect
    header = read_header(fh, dialect.max_line_bytes)
    layout = replace(layout, names=header_columns(header, dialect))
    block_bytes = min(csv_block_bytes(fh, chunk_rows), MAX_BLOCK_BYTES)
    start = part.first_row if part else 0
    fh.seek(part.start if part else len(header))
    limit = part.end - part.start if part else None
    blocks = _parsed_ahead(read_blocks(fh, block_bytes, limit, dialect), layout, parsers)
    with closing(blocks):  # a row's error raised here stops the parses ahead at once
        while True:
            try:
                item = next(blocks, None)
            except RowTooLongError as exc:  # the blocks before it are parsed: its row is
                raise exc.at_row(start) from None  # `start`
            if item is None:
                return
            block, parsed = item
            if parsed is None:  # not parsed ahead, or that failed: in order, rows numbered
                parsed = parse_csv_block(block, layout, start)
            table, bad = parsed
            chunk = Chunk(start, table, block.offset, bad)
            del block, parsed, item  # the text is parsed: let its buffer go before the
            start += chunk.span  # chunk is consumed
            yield chunk


Parsed = tuple[pa.Table, list[BadRow]]


def _parsed_ahead(blocks: Iterator[Block], layout: CsvLayout,
                  parsers: int) -> Generator[tuple[Block, Parsed | None], None, None]:
    """The blocks in order, each with its parse: `parsers` of them parsed at once in a pool
    (pyarrow releases the GIL), each on one thread; with one parser, none (the caller parses
    each in turn). A block parsed ahead does not know the number of its first row, as the
    rows before it are still being counted: where its parse fails, it comes with None, so
    that the caller parses it again in order and raises the error with the row's number."""
    if parsers <= 1:
        for block in blocks:
            yield block, None
        return
    pool = ThreadPoolExecutor(parsers, thread_name_prefix="csv-parse")
    ahead: deque[tuple[Block, Future[Parsed | None]]] = deque()
    too_long: RowTooLongError | None = None
    try:
        try:
            for block in blocks:
                ahead.append((block, pool.submit(_parse_ahead, block, layout)))
                del block
                if len(ahead) >= parsers:
                    block, parsing = ahead.popleft()
                    yield block, parsing.result()
        except RowTooLongError as exc:  # read_blocks': raised after the blocks before it
            too_long = exc
        while ahead:
            block, parsing = ahead.popleft()
            yield block, parsing.result()
        if too_long is not None:
            raise too_long
    finally:  # also when the consumer stops early: no parse left running
        pool.shutdown(wait=True, cancel_futures=True)


def _parse_ahead(block: Block, layout: CsvLayout) -> Parsed | None:
    try:
        return parse_csv_block(block, layout, 0)
    except Exception:  # raised again, with its row's number, when parsed in order
        return None
