"""Row counts of CSV byte ranges (how a split job's parts number their rows) agree with the
rows pyarrow reads from the same bytes: empty lines, CRLF, a last line without its end."""

from __future__ import annotations

import io
import random

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from shared.jobs import csvblocks
from shared.jobs.csvblocks import count_csv_rows

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
    monkeypatch.setattr(csvblocks, "COUNT_BLOCK_BYTES", block_bytes)
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
