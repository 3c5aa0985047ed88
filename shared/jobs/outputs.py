"""Writing job outputs (CSV, Parquet, JSON lines) chunk by chunk, and the errors file."""

from __future__ import annotations

import csv
import re
from typing import IO, Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from shared.jobs.chunks import RowError

OutputFormat = Literal["csv", "parquet", "jsonl"]
CONTENT_TYPES = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "jsonl": "application/x-ndjson",
}
# A spreadsheet runs a cell as a formula when it starts with = + - @ (after any blanks or
# line breaks, which it trims), and some treat a leading tab or carriage return alike.
_FORMULA = r"^(?:[\t\r]|\s*[=+\-@])"


def defuse_name(name: str) -> str:
    """A column name as a CSV header may carry it: prefixed with a quote if a formula."""
    return "'" + name if re.match(_FORMULA, name) else name


def defuse_formulas(table: pa.Table) -> pa.Table:
    """Prefix text cells and column names that a spreadsheet would run as a formula with a
    quote."""
    names = [defuse_name(n) for n in table.column_names]
    if names != table.column_names:
        table = table.rename_columns(names)
    for i, f in enumerate(table.schema):
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            col = table.column(i)
            risky = pc.fill_null(pc.match_substring_regex(col, _FORMULA), False)
            if pc.any(risky).as_py():
                col = pc.if_else(risky, pc.binary_join_element_wise("'", col, ""), col)
                table = table.set_column(i, f, col)
    return table


class OutputWriter:
    """Appends tables to one output file; the schema is fixed by the first table."""

    def __init__(self, fh: IO[bytes], fmt: OutputFormat, header: bool = True) -> None:
        self.fh = fh
        self.fmt = fmt
        self.header = header  # False: CSV rows that continue another file
        self.rows = 0
        self._writer: pq.ParquetWriter | pacsv.CSVWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, table: pa.Table) -> None:
        """Append rows."""
        if self._schema is None:
            self._schema = table.schema
            if self.fmt == "parquet":
                self._writer = pq.ParquetWriter(self.fh, table.schema, compression="snappy")
            elif self.fmt == "csv":
                self._writer = pacsv.CSVWriter(
                    self.fh, defuse_formulas(table.slice(0, 0)).schema,
                    write_options=pacsv.WriteOptions(quoting_style="needed",
                                                     include_header=self.header))
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        self.rows += table.num_rows
        if self.fmt == "csv":
            self._writer.write_table(defuse_formulas(table))  # type: ignore[union-attr]
        elif self.fmt == "parquet":
            self._writer.write_table(table)  # type: ignore[union-attr]
        else:
            self._write_jsonl(table)

    def _write_jsonl(self, table: pa.Table) -> None:
        lines = [orjson.dumps(row) for row in table.to_pylist()]
        if lines:
            self.fh.write(b"\n".join(lines) + b"\n")

    def close(self) -> None:
        """Finish the file (Parquet footer); an output with no rows still gets its header."""
        if self._writer is not None:
            self._writer.close()


class ErrorsWriter:
    """The errors file of an on_error=skip job: row, field, message (as a job error says)."""

    def __init__(self, fh: IO[str], header: bool = True) -> None:
        self._csv = csv.writer(fh)
        if header:  # False: continuing a resumed attempt's file
            self._csv.writerow(["row", "field", "message"])
        self.count = 0

    def write(self, errors: list[RowError]) -> None:
        """Append row errors."""
        self._csv.writerows((e.row, e.column, e.reason) for e in errors)
        self.count += len(errors)
