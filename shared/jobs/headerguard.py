"""A CSV upload's header line checked as its bytes arrive, before the rest of the file is
read: a header with more columns than any model accepts, or longer than a row may be, is
refused at once (a 100,000-column header used to be staged, parsed and only then refused,
seconds of API CPU for a request that costs its client nothing)."""

from __future__ import annotations

from functools import lru_cache
from typing import IO, Any

from shared.errors import BadRequestError, TabserveError, ValidationError
from shared.jobs.inputs import column_limit
from shared.models.store import ModelStore

DELIMITER_BYTES = (b",", b";", b"\t", b"|")


@lru_cache(maxsize=4096)
def _feature_count(store: ModelStore, name: str, version: int) -> int:
    return len(store.manifest(name, version).features)  # a version's manifest never changes


def widest_limit(store: ModelStore, max_columns: int) -> int:
    """The column limit of the widest model in the store: no model accepts a wider input,
    whichever one the request names (the form field naming it may come after the file)."""
    widest = 0
    for name, versions in store.list_models().items():
        for version in versions:
            try:
                widest = max(widest, _feature_count(store, name, version))
            except TabserveError:  # an unreadable manifest: that model serves nothing
                continue
    return column_limit(max_columns, widest)


class HeaderGuard:
    """A staging file's writer that counts the header line's delimiters as it goes by and
    raises (422, or 400 for a header longer than a row may be) as soon as the line is over
    the limit, before another byte is read. The count is that of the most frequent
    delimiter, an upper bound whatever the dialect (as shared.jobs.submit's exact check)."""

    def __init__(self, fh: IO[bytes], max_columns: int, max_line_bytes: int) -> None:
        self._fh = fh
        self.max_columns = max_columns
        self.max_line_bytes = max_line_bytes
        self._counts = dict.fromkeys(DELIMITER_BYTES, 0)
        self._seen = 0
        self._done = False

    def write(self, data: bytes) -> int:
        if not self._done:
            self._watch(data)
        return self._fh.write(data)

    def _watch(self, data: bytes) -> None:
        end = data.find(b"\n")
        line = data if end < 0 else memoryview(data)[:end].tobytes()
        for delimiter in DELIMITER_BYTES:  # bytes.count: C, a few µs per 64 KiB piece
            self._counts[delimiter] += line.count(delimiter)
        self._seen += len(line)
        columns = max(self._counts.values()) + 1
        if columns > self.max_columns:
            raise ValidationError(
                f"the CSV header has at least {columns} columns; no model accepts more than "
                f"{self.max_columns} (TABSERVE_MAX_INPUT_COLUMNS)",
                details=[{"field": "header",
                          "message": f"at least {columns} columns, at most {self.max_columns}"}])
        if end < 0 and self._seen >= self.max_line_bytes:
            raise BadRequestError(f"the CSV header line is longer than the limit of "
                                  f"{self.max_line_bytes} bytes")
        self._done = end >= 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> HeaderGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()
