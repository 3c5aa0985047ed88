"""Validating and scoring one chunk of a batch job, vectorised: no per-row Python."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shared.jobs.inputs import arrow_type
from shared.models.loading import LoadedModel, Prediction
from shared.models.schema import FeatureSpec

_TRUE = {"1", "true", "True", "TRUE"}
_FALSE = {"0", "false", "False", "FALSE"}


@dataclass
class RowError:
    """One bad value: row number (0-based, in the file), column ("" for a row that could
    not be read at all) and reason."""

    row: int
    column: str
    reason: str


@dataclass
class CheckedChunk:
    """A chunk after validation: the good rows, their row numbers, and the errors.

    Numeric features stay NumPy arrays (what the model takes); `table` holds the other
    columns (categories, ids, passed-through input) as Arrow.
    """

    table: pa.Table
    rows: np.ndarray
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def subset(self, keep: np.ndarray) -> CheckedChunk:
        """The rows where `keep` (a boolean mask over this chunk's rows) is true."""
        return CheckedChunk(self.table.filter(pa.array(keep)), self.rows[keep],
                            {k: v[keep] for k, v in self.numeric.items()}, self.errors)

    def column(self, name: str) -> Any:
        """A kept column as Arrow, numeric features included."""
        if name in self.numeric:
            return pa.array(self.numeric[name], type=pa.float64())
        return self.table.column(name)


def _to_float(column: pa.ChunkedArray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """Floats (NaN for null) and a mask of values that are present but not numbers."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = column.to_pandas(types_mapper=None).astype(object)
        if spec.type == "boolean":
            mapped = text.map(lambda v: 1.0 if v in _TRUE else 0.0 if v in _FALSE else np.nan)
            values = mapped.to_numpy(dtype=np.float64)
        else:
            values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        present = text.notna().to_numpy()
        return values, present & np.isnan(values)
    if pa.types.is_boolean(column.type):
        column = pc.cast(column, pa.float64())
    values = column.to_numpy() if column.null_count == 0 else pc.fill_null(
        pc.cast(column, pa.float64()), np.nan).to_numpy()
    values = np.asarray(values, dtype=np.float64)
    return values, np.zeros(len(values), dtype=bool)


def _row_numbers(n: int, start_row: int, unread: Sequence[tuple[int, str]]) -> np.ndarray:
    """The file row numbers of a table's n rows, the chunk's unreadable rows left out."""
    numbers = np.arange(start_row, start_row + n + len(unread), dtype=np.int64)
    if unread:
        numbers = np.delete(numbers, [offset for offset, _ in unread])
    return numbers


def check_chunk(table: pa.Table, start_row: int, features: list[FeatureSpec],
                unread: Sequence[tuple[int, str]] = ()) -> CheckedChunk:
    """Validate every feature column; return the good rows typed, and each bad value.
    `unread` are the chunk's rows that could not be read (offset from start_row, reason):
    not in the table, each reported as an error."""
    n = table.num_rows
    bad = np.zeros(n, dtype=bool)
    errors = [RowError(start_row + offset, "", reason) for offset, reason in unread]
    typed: dict[str, Any] = {}
    numbers = _row_numbers(n, start_row, unread)

    def flag(mask: np.ndarray, name: str, reason: str) -> None:
        for i in np.flatnonzero(mask):
            errors.append(RowError(int(numbers[i]), name, reason))
        bad[mask] = True

    for spec in features:
        column = table.column(spec.name)
        if spec.is_numeric:
            values, not_number = _to_float(column, spec)
            flag(not_number, spec.name, f"not a {spec.type}")
            null = np.isnan(values) & ~not_number
            if not spec.nullable:
                flag(null, spec.name, "missing value")
            flag(np.isinf(values), spec.name, "not a finite number")
            if spec.type == "integer":
                finite = np.isfinite(values)
                flag(finite & (np.mod(values, 1, where=finite, out=np.zeros(n)) != 0),
                     spec.name, "not an integer")
            typed[spec.name] = values
        else:
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                column = pc.cast(column, pa.string())
            null = column.is_null().to_numpy(zero_copy_only=False)
            if not spec.nullable:
                flag(null, spec.name, "missing value")
            if not spec.allow_unknown:
                known = pc.is_in(column, value_set=pa.array(spec.categories or [],
                                                             type=pa.string()))
                flag(~known.to_numpy(zero_copy_only=False) & ~null, spec.name,
                     "unknown category")
            typed[spec.name] = pc.cast(column, arrow_type(spec))
    errors.sort(key=lambda e: e.row)
    keep = ~bad
    everything = bool(keep.all())
    rows = numbers
    numeric = {}
    others = {}
    for name in table.column_names:
        value = typed.get(name)
        if isinstance(value, np.ndarray):
            numeric[name] = value if everything else value[keep]
        else:
            others[name] = value if value is not None else table.column(name)
    clean = pa.table(others) if others else pa.table({"_": pa.nulls(n)}).drop(["_"])
    if not everything:
        clean = clean.filter(pa.array(keep))
        rows = rows[keep]
    return CheckedChunk(clean, rows, numeric, errors)


def model_input(checked: CheckedChunk, features: list[FeatureSpec], as_frame: bool) -> Any:
    """The model's input for validated rows: a float matrix, or a DataFrame like /predict's."""
    if not as_frame:
        # Column-major, as pandas lays out a DataFrame: BLAS-based models (linear ones)
        # then sum in the same order as on a DataFrame, to the last bit.
        X = np.empty((checked.num_rows, len(features)), dtype=np.float64, order="F")
        for j, spec in enumerate(features):
            X[:, j] = checked.numeric[spec.name]
        return X
    data = {}
    for spec in features:
        if spec.is_numeric:
            data[spec.name] = checked.numeric[spec.name]
        else:
            column = checked.table.column(spec.name)
            data[spec.name] = pd.Series(column.to_numpy(zero_copy_only=False), dtype=object)
    return pd.DataFrame(data)


def rows_the_model_refuses(loaded: LoadedModel, checked: CheckedChunk,
                           limit: int) -> list[RowError]:
    """The first rows of a chunk, up to `limit`, on which the model raises, each a row
    error with the model's reason."""
    X = model_input(checked, loaded.manifest.features, loaded.validator.as_frame)
    return [RowError(int(checked.rows[i]), "", f"the model refused this row: {reason}")
            for i, reason in loaded.refused_rows(X, limit)]


def score_chunk(loaded: LoadedModel, checked: CheckedChunk) -> tuple[Any, Prediction]:
    """The model's input for a chunk's validated rows, and its predictions."""
    X = model_input(checked, loaded.manifest.features, loaded.validator.as_frame)
    if checked.num_rows:
        return X, loaded.predict(X)
    dtype = loaded.classes.dtype if loaded.classes is not None else np.float64
    proba = np.empty((0, len(loaded.classes))) if loaded.has_proba and \
        loaded.classes is not None else None
    return X, Prediction(np.empty(0, dtype=dtype), proba)


def output_table(loaded: LoadedModel, checked: CheckedChunk, result: Prediction,
                 id_column: str | None, input_columns: list[str] | None,
                 id_prefix: str) -> pa.Table:
    """Lay out a chunk's output columns: id or row, prediction id, prediction, probabilities."""
    columns: dict[str, Any] = {}
    rows = pa.array(checked.rows, type=pa.int64())
    if id_column:
        columns[id_column] = checked.column(id_column)
    else:
        columns["row"] = rows
    columns["prediction_id"] = pc.binary_join_element_wise(
        id_prefix, pc.cast(rows, pa.string()), "")
    columns["prediction"] = pa.array(result.labels)
    if result.probabilities is not None and loaded.classes is not None:
        for j, cls in enumerate(loaded.classes.tolist()):
            columns[f"probability_{cls}"] = pa.array(result.probabilities[:, j],
                                                     type=pa.float64())
    if input_columns:
        for name in input_columns:
            if name != id_column and name not in columns:
                columns[name] = checked.column(name)
    return pa.table(columns)
