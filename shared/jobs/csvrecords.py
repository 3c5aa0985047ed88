"""Where CSV records end: line ends outside quoted values, found with NumPy over bytes.

Blocks, parts and row counts are cut at record ends. A block without a quote costs a memchr.
In one with quotes, a line end ends a record when an even number of quotes comes before it:
RFC 4180 (what pandas, Python's csv module and Excel write) doubles a quote inside a quoted
value, so the count is odd exactly inside one. A quote that is not where RFC 4180 puts one
(`12" pipe`: pyarrow reads it as text) makes the count meaningless; such bytes are read
quote by quote as pyarrow reads them, and a file holding one is not split into parts.
"""

from __future__ import annotations

from typing import IO

import numpy as np

QUOTE, LF, CR = 34, 10, 13
# Counted a block at a time: 256 KiB keeps the block and its masks in L2 (583 MB of CSV in
# ~0.20 s here; 4 MiB blocks and an index of every line end took ~0.29 s)
COUNT_BLOCK_BYTES = 256 << 10
SCAN_BLOCK_BYTES = 8 << 20


def record_cut(buf: bytes | bytearray, end: int, delimiter: str = ",") -> tuple[int, bool]:
    """Where the last whole record in buf[:end] ends (0: none), and whether a line end
    before it falls inside a quoted value. buf must start at a record's start."""
    if buf.find(b'"', 0, end) < 0:
        return buf.rfind(b"\n", 0, end) + 1, False
    lines, inside = line_ends(np.frombuffer(buf, dtype=np.uint8, count=end), delimiter)
    ends = lines[~inside]
    if not len(ends):
        return 0, False
    return int(ends[-1]) + 1, bool(inside[:np.searchsorted(lines, ends[-1])].any())


def line_ends(arr: np.ndarray, delimiter: str) -> tuple[np.ndarray, np.ndarray]:
    """The line ends in arr (which starts at a record's start), and which of them fall
    inside quoted values."""
    lines = np.flatnonzero(arr == LF)
    quotes = np.flatnonzero(arr == QUOTE)
    if is_rfc_quoting(arr, quotes, 0, ord(delimiter)):
        return lines, (np.searchsorted(quotes, lines) & 1).astype(bool)
    return lines, _inside_as_pyarrow(arr, quotes.tolist(), lines, ord(delimiter))


def is_rfc_quoting(arr: np.ndarray, quotes: np.ndarray, odd: int, delimiter: int) -> bool:
    """Whether each quote in arr opens a quoted value (after a delimiter or a line end),
    closes one (before either), or is one of a doubled pair, with `odd` quotes before arr.
    A quote at arr's edges passes: arr[0] follows a record end, and the byte after arr is
    not known."""
    if not len(quotes):
        return True
    opening = ((np.arange(len(quotes)) + odd) & 1) == 0
    prev = arr[np.maximum(quotes - 1, 0)].copy()
    prev[quotes == 0] = LF
    after = arr[np.minimum(quotes + 1, len(arr) - 1)].copy()
    after[quotes == len(arr) - 1] = QUOTE
    near = np.where(opening, prev, after)
    return bool(np.all((near == delimiter) | (near == LF) | (near == CR) | (near == QUOTE)))


def _inside_as_pyarrow(arr: np.ndarray, quotes: list[int], lines: np.ndarray,
                       delimiter: int) -> np.ndarray:
    """Which line ends fall inside quoted values as pyarrow reads them: a quote opens a value
    only at a field's start, and a doubled quote inside one is text. One step per quote."""
    opens: list[int] = []
    closes: list[int] = []
    k = 0
    while k < len(quotes):
        q = quotes[k]
        if len(opens) == len(closes):
            if q == 0 or int(arr[q - 1]) in (delimiter, LF, CR):
                opens.append(q)
        elif k + 1 < len(quotes) and quotes[k + 1] == q + 1:
            k += 1  # a doubled quote: text
        else:
            closes.append(q)
        k += 1
    if len(opens) > len(closes):
        closes.append(len(arr))
    if not opens:
        return np.zeros(len(lines), dtype=bool)
    at = np.searchsorted(np.asarray(opens), lines) - 1
    return (at >= 0) & (lines < np.asarray(closes)[np.maximum(at, 0)])


def count_csv_rows(fh: IO[bytes], start: int, end: int) -> int:
    """Rows in CSV bytes [start, end) as pyarrow counts them: records, less empty ones.
    start must be a record's start, and the file RFC 4180-quoted (see record_cuts).

    NumPy finds the line ends (passes that release the GIL, so a part counting its range in
    a thread barely slows its own scoring); a line end right after another ends an empty
    line, as does one after "\\n\\r" (looked for only in blocks that hold a carriage return).
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
        n = read_into(fh, memoryview(buf)[2:2 + min(len(buf) - 2, remaining)])
        if n == 0:
            break
        arr = np.frombuffer(buf, dtype=np.uint8, count=n + 2)
        ends = np.equal(arr, LF, out=is_end[:n + 2])
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
    empty = np.count_nonzero((before == LF) | ((before == CR) & (arr[at - 2] == LF)))
    return len(at) - int(empty)


def _count_quoted(arr: np.ndarray, ends: np.ndarray, odd: int) -> tuple[int, int]:
    """_count_lines over the line ends outside quoted values; the quote parity after."""
    at = np.flatnonzero(ends[2:]) + 2
    quotes = np.flatnonzero(arr[2:] == QUOTE) + 2
    inside = (np.searchsorted(quotes, at) + odd) & 1
    return _count_lines(arr, at[inside == 0]), (odd + len(quotes)) & 1


def record_cuts(fh: IO[bytes], start: int, size: int, step: int,
                delimiter: str = ",") -> list[int]:
    """Record starts about step bytes apart, from start (a record's start) to size: each
    cut is the first record end at or after step bytes past the one before. Only [start,
    size] when a quote before the last cut is not where RFC 4180 puts one.

    One pass over the file, since only the quotes before a line end tell whether it ends a
    record.
    """
    cuts, odd, pos, before = [start], 0, start, b"\n"
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
            ends, odd, rfc = _scan_quoted(fh, before + block, odd, delimiter)
            if not rfc:
                return [start, size]
            ends += pos - 1
            while target < size and (at := np.searchsorted(ends, target)) < len(ends):
                cuts.append(int(ends[at]))
                target = cuts[-1] + step
        pos += len(block)
        before = block[-1:]
    return [c for c in cuts if c < size] + [size]


def _scan_quoted(fh: IO[bytes], window: bytes, odd: int,
                 delimiter: str) -> tuple[np.ndarray, int, bool]:
    """Record ends (offsets after them, in window) of a block that holds quotes, window[0]
    being the byte before it; the quote parity after it; whether its quotes are RFC 4180's
    (the byte after the block is peeked at for that)."""
    peek = fh.read(1)
    if peek:
        fh.seek(-1, 1)
    arr = np.frombuffer(window + (peek or b"\n"), dtype=np.uint8)
    quotes = np.flatnonzero(arr[1:-1] == QUOTE) + 1
    rfc = is_rfc_quoting(arr, quotes, odd, ord(delimiter))
    lines = np.flatnonzero(arr[1:-1] == LF) + 1
    ends = lines[((np.searchsorted(quotes, lines) + odd) & 1) == 0] + 1
    return ends, (odd + len(quotes)) & 1, rfc


def read_into(fh: IO[bytes], view: memoryview) -> int:
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
