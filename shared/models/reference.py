"""Reference statistics of training data: per-feature bins and frequencies, for drift."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from shared.models.schema import Schema

N_BINS = 10


def numeric_reference(values: np.ndarray, bins: int = N_BINS) -> dict[str, Any]:
    """Quantile bin edges (inner edges only) and the share of values in each bin."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"kind": "numeric", "edges": [], "frequencies": [1.0], "null_fraction": 1.0}
    quantiles = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(quantiles)
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=edges.size + 1)
    return {
        "kind": "numeric",
        "edges": edges.tolist(),
        "frequencies": (counts / finite.size).tolist(),
        "null_fraction": float(1 - finite.size / max(values.size, 1)),
    }


def categorical_reference(values: pd.Series) -> dict[str, Any]:
    """Category shares, most frequent first."""
    counts = values.dropna().astype(str).value_counts(normalize=True)
    return {
        "kind": "categorical",
        "categories": [str(c) for c in counts.index],
        "frequencies": [float(f) for f in counts.to_numpy()],
        "null_fraction": float(values.isna().mean()) if len(values) else 0.0,
    }


def feature_reference(frame: pd.DataFrame, schema: Schema) -> dict[str, dict[str, Any]]:
    """Reference statistics for every feature of the schema."""
    out = {}
    for spec in schema.features:
        column = frame[spec.name]
        if spec.is_numeric:
            out[spec.name] = numeric_reference(column.to_numpy(dtype=np.float64, na_value=np.nan))
        else:
            out[spec.name] = categorical_reference(column)
    return out


def prediction_reference(predictions: np.ndarray, classes: list[Any] | None) -> dict[str, Any]:
    """Distribution of the model's predictions on the reference data."""
    if classes is None:
        return numeric_reference(np.asarray(predictions, dtype=np.float64))
    labels = pd.Series(np.asarray(predictions)).astype(str)
    shares = labels.value_counts(normalize=True)
    return {
        "kind": "categorical",
        "categories": [str(c) for c in classes],
        "frequencies": [float(shares.get(str(c), 0.0)) for c in classes],
        "null_fraction": 0.0,
    }
