"""Validate JSON rows against a schema straight into the model's input.

The hot path of /predict: one pass over each row, writing floats into a NumPy matrix in
schema order (or columns for a DataFrame when the model needs names or categories).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from shared.errors import ValidationError
from shared.models.schema import FeatureSpec, Schema

MAX_DETAILS = 100
_MISSING = object()


class _RowError(Exception):
    pass


def _number(spec: FeatureSpec) -> Callable[[Any], Any]:
    def convert(v: Any) -> float:
        t = type(v)
        if t is float:
            if not math.isfinite(v):
                raise _RowError(f"must be a finite number, got {v}")
            return v
        if t is int:
            return _int_to_float(v)
        raise _RowError(f"must be a number, got {_describe(v)}")

    return convert


def _integer(spec: FeatureSpec) -> Callable[[Any], Any]:
    def convert(v: Any) -> float:
        t = type(v)
        if t is int:
            return _int_to_float(v)
        if t is float:
            if not math.isfinite(v):
                raise _RowError(f"must be a finite integer, got {v}")
            if v.is_integer():
                return v
        raise _RowError(f"must be an integer, got {_describe(v)}")

    return convert


def _int_to_float(v: int) -> float:
    try:
        return float(v)
    except OverflowError:
        raise _RowError(f"must be a number, got an integer of {v.bit_length()} bits, "
                        "beyond any floating-point number") from None


def _boolean(spec: FeatureSpec) -> Callable[[Any], Any]:
    def convert(v: Any) -> float:
        if type(v) is bool:
            return 1.0 if v else 0.0
        raise _RowError(f"must be a boolean, got {_describe(v)}")

    return convert


def _category(spec: FeatureSpec) -> Callable[[Any], Any]:
    allowed = frozenset(spec.categories or ())
    shown = ", ".join(repr(c) for c in (spec.categories or [])[:10])

    def convert(v: Any) -> str:
        if type(v) is not str:
            raise _RowError(f"must be a string category, got {_describe(v)}")
        if v not in allowed and not spec.allow_unknown:
            raise _RowError(f"unknown category {v!r}; expected one of {shown}")
        return v

    return convert


_CONVERTERS = {"number": _number, "integer": _integer, "boolean": _boolean, "category": _category}


def _describe(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, str):
        text = v if len(v) <= 40 else v[:37] + "..."
        return f"string {text!r}"
    if isinstance(v, list | dict):
        return "an array" if isinstance(v, list) else "an object"
    return f"{type(v).__name__} {v!r}"


class RowValidator:
    """Compiled per schema once; turns JSON rows into model input or a 422 with details."""

    def __init__(self, schema: Schema, as_frame: bool) -> None:
        self.schema = schema
        self.as_frame = as_frame
        self.names = schema.names
        self.name_set = frozenset(self.names)
        self.specs = list(schema.features)
        self.converters = [_CONVERTERS[s.type](s) for s in self.specs]
        self.null_value = [np.nan if s.is_numeric else None for s in self.specs]
        # Numbers and integers only: well-formed rows go straight into the matrix in C.
        self._plain = (not as_frame and bool(self.specs)
                       and all(s.type in ("number", "integer") for s in self.specs))
        self._values = operator.itemgetter(*self.names) if self.names else None
        self._integer_columns = [j for j, s in enumerate(self.specs) if s.type == "integer"]

    def _plain_matrix(self, rows: Sequence[Any]) -> np.ndarray | None:
        """The matrix when every row is an object of exactly the features, each a finite
        JSON number (integral where the schema says integer); None sends the rows through
        the checks that name what is wrong."""
        names, values = self.name_set, self._values
        assert values is not None
        matrix = np.empty((len(rows), len(self.specs)), dtype=np.float64, order="F")
        try:
            for i, row in enumerate(rows):
                if type(row) is not dict or row.keys() != names:
                    return None
                got = values(row)
                if not {type(v) for v in (got if isinstance(got, tuple) else (got,))} <= {
                        float, int}:
                    return None
                matrix[i] = got  # ints convert as float(v) does: to the nearest double
        except (OverflowError, ValueError, TypeError):
            return None
        return self._checked(matrix)

    def _checked(self, matrix: np.ndarray) -> np.ndarray | None:
        """The matrix when every value is finite and integral where the schema says integer."""
        if not np.isfinite(matrix).all():
            return None
        for j in self._integer_columns:
            column = matrix[:, j]
            if not np.array_equal(column, np.floor(column)):
                return None
        return matrix

    def plain_values(self, values: Sequence[Any] | np.ndarray, n: int) -> np.ndarray | None:
        """The model's input from n rows of values in schema order, flat and row-major (a
        tensor's data): what validate() returns for the same rows as objects, when each value
        is a finite number (integral where the schema says integer). None sends the rows
        through validate(), which names what is wrong."""
        if not self._plain or len(values) != n * len(self.specs):
            return None
        if isinstance(values, np.ndarray):
            if values.dtype.kind not in "fiu":  # booleans are not numbers to validate()
                return None
        elif not {type(v) for v in values} <= {float, int}:
            return None
        matrix = np.empty((n, len(self.specs)), dtype=np.float64, order="F")
        try:  # ints convert as float(v) does: to the nearest double
            matrix[...] = np.asarray(values, dtype=np.float64).reshape(matrix.shape)
        except (OverflowError, ValueError, TypeError):
            return None
        return self._checked(matrix)

    def validate(self, rows: Sequence[Any], single: bool = False) -> np.ndarray | pd.DataFrame:
        """Validate rows (dicts) and return the model's input; raise ValidationError."""
        if self._plain:
            plain = self._plain_matrix(rows)
            if plain is not None:
                return plain
        n, width = len(rows), len(self.specs)
        columns: list[list[Any]] = [[None] * n for _ in range(width)] if self.as_frame else []
        # Column-major like a DataFrame's values (see shared.jobs.chunks.model_input).
        matrix = None if self.as_frame else np.empty((n, width), dtype=np.float64, order="F")
        details: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            where = None if single else i
            if not isinstance(row, dict):
                details.append(_detail(where, None, f"must be an object, got {_describe(row)}"))
                continue
            if len(row) != width or row.keys() != self.name_set:
                self._key_errors(row, where, details)
            for j, spec in enumerate(self.specs):
                v = row.get(spec.name, _MISSING)
                if v is _MISSING:
                    continue
                if v is None:
                    if not spec.nullable:
                        details.append(_detail(where, spec.name, "must not be null"))
                        continue
                    value = self.null_value[j]
                else:
                    try:
                        value = self.converters[j](v)
                    except _RowError as exc:
                        details.append(_detail(where, spec.name, str(exc)))
                        continue
                if matrix is not None:
                    matrix[i, j] = value
                else:
                    columns[j][i] = value
            if len(details) >= MAX_DETAILS:
                break
        if details:
            raise ValidationError(_summary(details), details=details[:MAX_DETAILS])
        if matrix is not None:
            return matrix
        return pd.DataFrame(
            {s.name: _column(col, s) for s, col in zip(self.specs, columns, strict=True)}
        )

    def _key_errors(self, row: dict[str, Any], where: int | None, details: list) -> None:
        for name in self.names:
            if name not in row:
                details.append(_detail(where, name, "missing feature"))
        for key in row:
            if key not in self.name_set:
                details.append(_detail(where, str(key), "unknown feature"))


def _column(values: list[Any], spec: FeatureSpec) -> Any:
    if spec.is_numeric:
        return np.asarray(values, dtype=np.float64)
    return pd.Series(values, dtype=object)


def _detail(row: int | None, field: str | None, message: str) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    if row is not None:
        detail["row"] = row
    if field is not None:
        detail["field"] = field
    detail["message"] = message
    return detail


def _summary(details: list[dict[str, Any]]) -> str:
    first = details[0]
    where = []
    if "row" in first:
        where.append(f"row {first['row']}")
    if "field" in first:
        where.append(f"feature {first['field']!r}")
    prefix = ", ".join(where)
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"invalid input: {prefix + ': ' if prefix else ''}{first['message']}{more}"
