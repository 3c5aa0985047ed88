"""Row counts of CSV byte ranges (how a split job's parts number their rows) agree with the
rows pyarrow reads from the same bytes: empty lines, CRLF, a last line without its end,
quoted line breaks; blocks and parts are cut at record ends; bad rows keep their numbers."""

from __future__ import annotations

import io
import random

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from shared.errors import ValidationError
from shared.jobs import csvrecords, inputs
from shared.jobs.csvblocks import CsvDialect
from shared.jobs.csvrecords import count_csv_rows, record_cut, record_cuts
from shared.jobs.inputs import iter_chunks

PIECES = [b"1,2\n", b"\n", b"\r\n", b"3,4\r\n", b"5,6\n", b"\n\n", b"7,8\r\n\r\n"]


def _pyarrow_rows(data: bytes) -> int:
    if not data.strip():
        return 0
    table = pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(
        column_names=["a", "b"]), convert_options=pacsv.ConvertOptions(
        column_types={"a": pa.string(), "b": pa.string()}))
    return table.num_rows


@pytest.mark.parametrize("pieces", [PIECES, [p for p in PIECES if b"\r" not in p]])
@pytest.mark.parametrize("block_bytes", [1, 2, 3, 5, 64, 4 << 20])
def test_count_matches_pyarrow_for_every_line_start_range(monkeypatch, block_bytes, pieces):
    monkeypatch.setattr(csvrecords, "COUNT_BLOCK_BYTES", block_bytes)
    rng = random.Random(block_bytes)
    for _ in range(150):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        if rng.random() < 0.3:
            body += b"9,9"  # a last line without its line end
        data = b"a,b\n" + body
        starts = [4] + [i + 1 for i, c in enumerate(data) if c == 10 and i + 1 > 4]
        cuts = sorted(set(starts + [len(data)]))
        start, end = sorted(rng.sample(cuts, 2)) if len(cuts) > 1 else (4, len(data))
        got = count_csv_rows(io.BytesIO(data), start, end)
        assert got == _pyarrow_rows(data[start:end]), (data, start, end)


def test_parts_add_up_to_the_file():
    data = b"a,b\n" + b"".join(PIECES * 50) + b"\n"
    lines = [i + 1 for i, c in enumerate(data) if c == 10]
    cuts = [4, lines[20], lines[77], lines[130], len(data)]
    pairs = zip(cuts, cuts[1:], strict=False)
    total = sum(count_csv_rows(io.BytesIO(data), a, b) for a, b in pairs)
    assert total == _pyarrow_rows(data[4:])


# Quoted values may hold line breaks, doubled quotes and delimiters: a line end inside one
# is no record's end, for counting, cutting blocks and cutting parts alike.
QUOTED = PIECES + [b'"x\ny",2\n', b'"a""\n\n""b",3\r\n', b'"\r\n",4\n', b'5,""\n', b'"",""\n']


def _records(data: bytes) -> int:
    """Rows pyarrow reads, quoted line breaks allowed."""
    if not data.strip():
        return 0
    return pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(
        column_names=["a", "b"]), parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={"a": pa.string(),
                                                           "b": pa.string()})).num_rows


def _record_starts(data: bytes, start: int) -> list[int]:
    starts, inside = [start], False
    for i in range(start, len(data)):
        inside ^= data[i] == 34
        if data[i] == 10 and not inside:
            starts.append(i + 1)
    return starts


@pytest.mark.parametrize("block_bytes", [1, 2, 3, 7, 4 << 20])
def test_quoted_count_matches_pyarrow_for_every_record_range(monkeypatch, block_bytes):
    monkeypatch.setattr(csvrecords, "COUNT_BLOCK_BYTES", block_bytes)
    rng = random.Random(block_bytes)
    for _ in range(150):
        data = b"a,b\n" + b"".join(rng.choice(QUOTED) for _ in range(rng.randint(0, 25)))
        cuts = sorted(set(_record_starts(data, 4) + [len(data)]))
        start, end = sorted(rng.sample(cuts, 2)) if len(cuts) > 1 else (4, len(data))
        assert count_csv_rows(io.BytesIO(data), start, end) == _records(data[start:end]), (
            data, start, end)


@pytest.mark.parametrize("scan_bytes", [1, 5, 64, 8 << 20])
def test_record_cuts_fall_on_record_starts_and_add_up(monkeypatch, scan_bytes):
    monkeypatch.setattr(csvrecords, "SCAN_BLOCK_BYTES", scan_bytes)
    rng = random.Random(scan_bytes)
    for _ in range(60):
        data = b"a,b\n" + b"".join(rng.choice(QUOTED) for _ in range(rng.randint(1, 60)))
        cuts = record_cuts(io.BytesIO(data), 4, len(data), rng.randint(1, 40))
        assert cuts[0] == 4 and cuts[-1] == len(data) and cuts == sorted(set(cuts))
        assert set(cuts) <= set(_record_starts(data, 4) + [len(data)])
        counted = sum(count_csv_rows(io.BytesIO(data), a, b) for a, b in zip(cuts, cuts[1:],
                                                                            strict=False))
        assert counted == _records(data[4:])


def test_record_cut_ignores_line_ends_inside_quotes():
    assert record_cut(b"1,2\n3,4", 7) == (4, False)
    assert record_cut(b'1,"a\nb"\n3,"x\n', 13) == (8, True)
    assert record_cut(b'"a\nb', 4) == (0, False)
    assert record_cut(b'1,"a""b"\n2', 10) == (9, False)


def _types() -> dict[str, pa.DataType]:
    return {"a": pa.float64(), "b": pa.float64()}


# Blocks parsed one after another, and several at once (a job's reader: each block's rows
# numbered only once the rows before it are counted).
PARSERS = pytest.mark.parametrize("parsers", [1, 3])


@PARSERS
@pytest.mark.parametrize("block_bytes", [1, 16, 1 << 20])
def test_blocks_keep_quoted_rows_whole_and_number_bad_rows(monkeypatch, block_bytes, parsers):
    monkeypatch.setattr(inputs, "csv_block_bytes", lambda fh, rows: block_bytes)
    rows = [b'1,"x\ny",2\n', b"3\n", b'4,"q""\n",5\n', b"\n", b"6,7,8,9\n", b"10,,11\r\n"] * 40
    data = b"a,note,b\n" + b"".join(rows)
    chunks = list(iter_chunks(io.BytesIO(data), "csv", _types(), ["a", "note", "b"], 10,
                              parsers=parsers))
    values, bad = [], []
    for chunk in chunks:
        values += chunk.table.column("a").to_pylist()
        bad += [(chunk.start_row + r.offset, r.reason) for r in chunk.bad_rows]
    assert values == [1.0, 4.0, 10.0] * 40
    assert bad[:2] == [(1, "expected 3 columns, got 1"), (3, "expected 3 columns, got 4")]
    assert [row for row, _ in bad] == [r for i in range(40) for r in (5 * i + 1, 5 * i + 3)]
    assert sum(c.span for c in chunks) == 200


@PARSERS
@pytest.mark.parametrize("block_bytes", [64, 1 << 20])
def test_rows_longer_than_the_limit_are_refused_whatever_the_block(monkeypatch, block_bytes,
                                                                   parsers):
    monkeypatch.setattr(inputs, "csv_block_bytes", lambda fh, rows: block_bytes)
    data = b"a,note,b\n1,x,2\n" + b'3,"' + b"y\n" * 600 + b'",4\n5,z,6\n'
    columns = ["a", "note", "b"]
    with pytest.raises(ValidationError, match="row 1: the CSV row starting at byte 15 is "
                                              "longer than the limit of 1000 bytes"):
        list(iter_chunks(io.BytesIO(data), "csv", _types(), columns, 1,
                         dialect=CsvDialect(max_line_bytes=1000), parsers=parsers))
    chunks = list(iter_chunks(io.BytesIO(data), "csv", _types(), columns, 1,
                              dialect=CsvDialect(max_line_bytes=1300), parsers=parsers))
    assert [v for c in chunks for v in c.table.column("a").to_pylist()] == [1.0, 3.0, 5.0]
    assert chunks[-1].table.column("note").to_pylist()[-1] == "z"


# Quotes where RFC 4180 puts none: pyarrow reads them as text (a quote opens a value only at
# a field's start), and so must the block cutter.
STRAY = [b'1,12" pipe\n', b'x"y,2\n', b'"ab"c,3\n', b'"a\nb"x,4\n', b'5,"""\n"""\n', b'a""b,6\n']


def _pyarrow_rows_of(data: bytes) -> list[tuple]:
    table = pacsv.read_csv(io.BytesIO(data), parse_options=pacsv.ParseOptions(
        newlines_in_values=True), convert_options=pacsv.ConvertOptions(
        column_types={"a": pa.string(), "b": pa.string()}))
    return list(zip(table.column("a").to_pylist(), table.column("b").to_pylist(), strict=True))


@PARSERS
@pytest.mark.parametrize("block_bytes", [1, 9, 64, 1 << 20])
def test_blocks_read_what_pyarrow_reads_whole(monkeypatch, block_bytes, parsers):
    monkeypatch.setattr(inputs, "csv_block_bytes", lambda fh, rows: block_bytes)
    rng = random.Random(block_bytes)
    pieces = [p for p in QUOTED if p.strip()] + STRAY
    for _ in range(80):
        data = b"a,b\n" + b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
        got = []
        for chunk in iter_chunks(io.BytesIO(data), "csv", {}, ["a", "b"], 1, parsers=parsers):
            assert not chunk.bad_rows, data
            got += zip(chunk.table.column("a").to_pylist(), chunk.table.column("b").to_pylist(),
                       strict=True)
        assert got == _pyarrow_rows_of(data), data


def test_stray_quotes_keep_a_file_in_one_part():
    data = b"a,b\n" + b"1,2\n" * 50 + b'1,12" pipe\n' + b"3,4\n" * 50
    assert record_cuts(io.BytesIO(data), 4, len(data), 20) == [4, len(data)]
    rfc = b"a,b\n" + b'1,"2\n"\n' * 100
    assert len(record_cuts(io.BytesIO(rfc), 4, len(rfc), 20)) > 10
    assert record_cut(b'1,12" pipe\n2,x\n3', 16) == (15, False)


@PARSERS
def test_text_in_another_encoding_past_the_sniffed_head_is_a_clear_error(parsers):
    data = b"a,b\n" + b"1,x\n" * 10 + "café,2\n".encode("cp1252")
    with pytest.raises(ValidationError, match="not utf-8 text there .send the encoding"):
        list(iter_chunks(io.BytesIO(data), "csv", {"b": pa.float64()}, ["a", "b"], 100,
                         parsers=parsers))
    chunks = list(iter_chunks(io.BytesIO(data), "csv", {"b": pa.float64()}, ["a", "b"], 100,
                              dialect=CsvDialect(encoding="cp1252"), parsers=parsers))
    assert chunks[0].table.column("a").to_pylist()[-1] == "café"


@PARSERS
def test_a_parse_error_in_a_later_block_names_its_rows(monkeypatch, parsers):
    """A block parsed ahead fails without knowing its first row: parsed again in order,
    its error names the same row as when blocks are parsed one by one."""
    monkeypatch.setattr(inputs, "csv_block_bytes", lambda fh, rows: 40)
    data = b"a,b\n" + b"1,2\n" * 95 + b"3,\xff\n" + b"4,5\n" * 50
    got = []
    with pytest.raises(ValidationError, match=r"CSV parse error after row (\d+): .*not utf-8"
                       ) as caught:
        for chunk in iter_chunks(io.BytesIO(data), "csv", {"a": pa.float64()}, ["a", "b"], 10,
                                 parsers=parsers):
            got += chunk.table.column("a").to_pylist()
    assert got == [1.0] * len(got) and 80 <= len(got) <= 95
    assert f"after row {len(got)}:" in str(caught.value)


def test_a_line_break_in_a_quoted_column_name_is_refused():
    from shared.errors import BadRequestError
    from shared.jobs.csvblocks import read_header

    with pytest.raises(BadRequestError, match="unclosed quote"):
        read_header(io.BytesIO(b'a,"b\nc"\n1,2\n'))
    assert read_header(io.BytesIO(b'a,"b,""c"""\n1,2\n')) == b'a,"b,""c"""\n'


def test_a_reader_stopped_early_leaves_no_parse_running(monkeypatch):
    import threading

    def parsing() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("csv-parse")}

    monkeypatch.setattr(inputs, "csv_block_bytes", lambda fh, rows: 64)
    data = b"a,b\n" + b"1,2\n" * 1000
    before = parsing()
    chunks = iter_chunks(io.BytesIO(data), "csv", _types(), ["a", "b"], 10, parsers=2)
    assert next(chunks).start_row == 0
    assert parsing() - before
    chunks.close()  # a job stopped (cancelled) after its first chunk
    assert not parsing() - before
    # and a job failing on a row's error, raised by the reader itself
    bad = b"a,b\n" + b"1,2\n" * 200 + b"3,\xff\n" + b"1,2\n" * 200
    with pytest.raises(ValidationError):
        list(iter_chunks(io.BytesIO(bad), "csv", {"a": pa.float64()}, ["a", "b"], 10,
                         parsers=2))
    assert not parsing() - before
