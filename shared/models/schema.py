"""The model's input schema: feature specs, inferred from training data or a sample."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

FeatureType = Literal["number", "integer", "category", "boolean"]
MAX_CATEGORIES = 1000


class FeatureSpec(BaseModel):
    """One input column: its name, type and what training data showed of it."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: FeatureType
    categories: list[str] | None = None
    allow_unknown: bool = False
    min: float | None = None
    max: float | None = None
    nullable: bool = False

    @property
    def is_numeric(self) -> bool:
        """True when the feature is carried as a float in a matrix."""
        return self.type != "category"


class Schema(BaseModel):
    """The ordered feature list a model takes."""

    model_config = ConfigDict(frozen=True)

    features: list[FeatureSpec]

    @property
    def names(self) -> list[str]:
        """Feature names in model order."""
        return [f.name for f in self.features]

    @property
    def all_numeric(self) -> bool:
        """True when every feature fits a float matrix."""
        return all(f.is_numeric for f in self.features)


def infer_feature(name: str, column: pd.Series, allow_unknown: bool = False) -> FeatureSpec:
    """Infer one feature's spec from a column of training or sample data."""
    nullable = bool(column.isna().any())
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return FeatureSpec(name=name, type="boolean", nullable=nullable)
    if pd.api.types.is_numeric_dtype(dtype):
        values = column.dropna().to_numpy(dtype=np.float64)
        is_int = pd.api.types.is_integer_dtype(dtype) or (
            values.size > 0 and bool(np.all(np.mod(values, 1) == 0)) and _declared_int(column)
        )
        lo = float(values.min()) if values.size else None
        hi = float(values.max()) if values.size else None
        return FeatureSpec(
            name=name, type="integer" if is_int else "number", min=lo, max=hi, nullable=nullable
        )
    categories = sorted({str(v) for v in column.dropna().unique()})
    if len(categories) > MAX_CATEGORIES:
        categories = categories[:MAX_CATEGORIES]
        allow_unknown = True
    return FeatureSpec(
        name=name,
        type="category",
        categories=categories,
        allow_unknown=allow_unknown,
        nullable=nullable,
    )


def _declared_int(column: pd.Series) -> bool:
    # A float column is only "integer" when pandas read it as int (nulls aside).
    return str(column.dtype).lower().startswith(("int", "uint"))


def infer_schema(frame: pd.DataFrame, allow_unknown: bool = False) -> Schema:
    """Infer the schema of every column of a DataFrame, in column order."""
    return Schema(
        features=[infer_feature(str(c), frame[c], allow_unknown) for c in frame.columns]
    )
