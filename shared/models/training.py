"""Training the demo model and training on a user's file (importing: shared/models/importing.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn import metrics
from sklearn.model_selection import train_test_split

from shared.errors import ValidationError
from shared.models.manifest import Manifest
from shared.models.reference import feature_reference, prediction_reference
from shared.models.schema import Schema, infer_schema
from shared.models.store import ModelStore
from shared.models.versions import library_versions

logger = logging.getLogger(__name__)

Task = Literal["classification", "regression"]
DEMO_NAME = "breast-cancer"


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet training/sample file into a DataFrame."""
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"{path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path)


def now() -> str:
    """The time a version is created at, as an ISO string (UTC, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def infer_task(target: pd.Series) -> Task:
    """Classification for text, boolean or few-valued integer targets; else regression."""
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    if pd.api.types.is_integer_dtype(target) and target.nunique() <= 20:
        return "classification"
    return "regression"


def train_demo(store: ModelStore, algorithm: str = "xgboost",
               promote: bool | None = None) -> Manifest:
    """Train the demo classifier on scikit-learn's bundled breast-cancer data (`promote`:
    see ModelStore.save)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    frame = pd.DataFrame(data.data, columns=list(data.feature_names))
    target = pd.Series(data.target, name="diagnosis")
    x_train, x_test, y_train, y_test = train_test_split(
        frame, target, test_size=0.2, random_state=0, stratify=target
    )
    model = _estimator(algorithm, "classification", Schema(features=[]))
    # Fitted on a NumPy matrix so the online path can feed rows without a DataFrame.
    model.fit(x_train.to_numpy(), y_train.to_numpy())
    schema = infer_schema(frame)
    return register(
        store, model, DEMO_NAME, "classification", schema, frame, x_test, y_test,
        input_kind="numpy", algorithm=algorithm, source="sklearn.datasets.load_breast_cancer",
        target_name="diagnosis", promote=promote,
    )


def train_from_file(
    store: ModelStore,
    path: Path,
    target: str,
    name: str | None = None,
    task: Task | None = None,
    algorithm: str = "hist-gradient-boosting",
    promote: bool | None = None,
) -> Manifest:
    """Train a model on a user's CSV/Parquet file with numeric and categorical columns."""
    frame = read_table(path)
    if target not in frame.columns:
        raise ValidationError(f"target column {target!r} not in {path} (columns: "
                              f"{', '.join(map(str, frame.columns))})")
    y = frame.pop(target)
    if y.isna().any():
        raise ValidationError(f"target column {target!r} has missing values")
    task = task or infer_task(y)
    if task == "classification":
        _check_classes(y, target)
    schema = infer_schema(frame, allow_unknown=True)
    frame = coerce_frame(frame, schema)
    stratify = y if task == "classification" and y.value_counts().min() >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(
        frame, y, test_size=0.2, random_state=0, stratify=stratify
    )
    model = _estimator(algorithm, task, schema)
    model.fit(x_train, y_train)
    return register(
        store, model, name or Path(path).stem, task, schema, frame, x_test, y_test,
        input_kind="dataframe", algorithm=algorithm, source=str(path), target_name=target,
        promote=promote,
    )


def _check_classes(y: pd.Series, target: str) -> None:
    # scikit-learn refuses a continuous target for a classifier with "Unknown label type".
    if pd.api.types.is_float_dtype(y) and not (y == y.round()).all():
        raise ValidationError(f"target column {target!r} is continuous ({y.nunique()} "
                              "distinct values): use --task regression")


def coerce_frame(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """The dtypes the online and batch paths produce: float64 numerics, object categories."""
    out = {}
    for spec in schema.features:
        column = frame[spec.name]
        if spec.is_numeric:
            out[spec.name] = column.astype("float64")
        else:
            out[spec.name] = column.astype(object).where(column.notna(), None).map(
                lambda v: v if v is None else str(v)
            )
    return pd.DataFrame(out, index=frame.index)


def _estimator(algorithm: str, task: Task, schema: Schema) -> Any:
    if algorithm == "xgboost":
        import xgboost

        cls = xgboost.XGBClassifier if task == "classification" else xgboost.XGBRegressor
        return cls(n_estimators=100, max_depth=4, learning_rate=0.1, n_jobs=1, random_state=0)
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    classify = task == "classification"
    choices = {
        "hist-gradient-boosting": (HistGradientBoostingClassifier, HistGradientBoostingRegressor),
        "random-forest": (RandomForestClassifier, RandomForestRegressor),
        "logistic": (LogisticRegression, Ridge),
    }
    if algorithm not in choices:
        raise ValidationError(f"unknown algorithm {algorithm!r}; use xgboost or "
                              + ", ".join(choices))
    cls = choices[algorithm][0 if classify else 1]
    kwargs: dict[str, Any] = {"random_state": 0} if cls is not Ridge else {}
    if cls is LogisticRegression:
        kwargs["max_iter"] = 1000
    if cls in (RandomForestClassifier, RandomForestRegressor):
        kwargs["n_estimators"] = 100
    estimator = cls(**kwargs)
    categorical = [f.name for f in schema.features if not f.is_numeric]
    numeric = [f.name for f in schema.features if f.is_numeric]
    if not categorical and algorithm != "logistic":
        return estimator
    steps: list[tuple[str, Any]] = []
    if categorical:
        encode = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        steps.append(("encode", ColumnTransformer(
            [("cat", encode, categorical), ("num", "passthrough", numeric)]
        )))
    if algorithm == "logistic":
        steps.append(("scale", StandardScaler()))
    steps.append(("model", estimator))
    return Pipeline(steps)


def register(
    store: ModelStore, model: Any, name: str, task: Task, schema: Schema,
    reference_frame: pd.DataFrame, x_test: pd.DataFrame | None, y_test: pd.Series | None, *,
    input_kind: Literal["numpy", "dataframe"], algorithm: str, source: str,
    target_name: str | None, promote: bool | None = None,
) -> Manifest:
    """Save a fitted model as a new version, with its reference statistics and metrics."""
    as_input = (lambda f: f.to_numpy(dtype=np.float64)) if input_kind == "numpy" else (lambda f: f)
    ref_input = as_input(reference_frame)
    predictions = np.asarray(model.predict(ref_input))
    classes = getattr(model, "classes_", None)
    class_list = np.asarray(classes).tolist() if classes is not None else None
    label_from_proba = False
    if task == "classification" and hasattr(model, "predict_proba") and classes is not None:
        proba = np.asarray(model.predict_proba(ref_input))
        label_from_proba = bool(np.array_equal(np.asarray(classes)[proba.argmax(1)], predictions))
    scores = {}
    if x_test is not None and y_test is not None:
        scores = _holdout_metrics(model, task, as_input(x_test), y_test)
    reference = {
        "rows": len(reference_frame),
        "features": feature_reference(reference_frame, schema),
        "predictions": prediction_reference(predictions, class_list),
    }
    fields = dict(
        name=name, created_at=now(), task=task, features=schema.features,
        target=target_name, classes=class_list, input_kind=input_kind,
        label_from_proba=label_from_proba, algorithm=algorithm, source=source,
        library_versions=library_versions(), metrics=scores, reference=reference,
    )
    return store.save(model, fields, promote=promote)


def _holdout_metrics(model: Any, task: Task, x_test: Any, y_test: pd.Series) -> dict[str, float]:
    predicted = model.predict(x_test)
    if task == "regression":
        return {
            "mae": float(metrics.mean_absolute_error(y_test, predicted)),
            "rmse": float(np.sqrt(metrics.mean_squared_error(y_test, predicted))),
            "r2": float(metrics.r2_score(y_test, predicted)),
            "holdout_rows": float(len(y_test)),
        }
    scores = {"accuracy": float(metrics.accuracy_score(y_test, predicted)),
              "holdout_rows": float(len(y_test))}
    if hasattr(model, "predict_proba") and len(np.unique(y_test)) == 2:
        proba = model.predict_proba(x_test)[:, 1]
        scores["roc_auc"] = float(metrics.roc_auc_score(y_test, proba))
    return scores
