"""Importing a model the user already has: a pickle or joblib file, an XGBoost JSON/UBJSON file,
or an MLflow model directory (schema from its signature, statistics from a sample)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ValidationError
from shared.models import mlflowdir
from shared.models.manifest import Manifest
from shared.models.modelfiles import read_model_file
from shared.models.schema import Schema, infer_schema
from shared.models.store import ModelStore
from shared.models.training import Task, coerce_frame, now, read_table, register
from shared.models.versions import library_versions


def import_model(
    store: ModelStore, model_path: Path, name: str, sample: Path | None,
    target: str | None = None, promote: bool | None = None,
) -> Manifest:
    """Register a model the user already has (XGBoost JSON/UBJSON, a pickle read with the
    allow-list, or an MLflow sklearn/xgboost directory), with schema from the MLflow signature
    when there is one and statistics from a sample file."""
    model_path = Path(model_path)
    declared = None
    if model_path.is_dir():
        imported = mlflowdir.read_mlflow_dir(model_path)
        model, declared = imported.model, imported.schema
    else:
        model = read_model_file(model_path)
    if not hasattr(model, "predict"):
        raise ValidationError(f"{model_path}: the object has no predict method")
    if sample is None:
        if declared is None:
            raise ValidationError(f"{model_path}: no column signature in its MLmodel; give "
                                  "--sample FILE for the model's input columns")
        strings = [f.name for f in declared.features if f.type == "category"]
        if strings:
            # Values a model never saw make its encoder raise at predict time: take them
            # from a sample, as for any other import.
            raise ValidationError(f"{model_path}: its signature has string columns "
                                  f"({', '.join(strings)}); give --sample FILE for their values")
        return _register_declared(store, model, name, declared, model_path, promote)
    frame = read_table(sample)
    y = frame.pop(target) if target and target in frame.columns else None
    if target and y is None:
        raise ValidationError(f"target column {target!r} not in {sample}")
    names = getattr(model, "feature_names_in_", None)
    wanted = declared.names if declared is not None else names
    if wanted is not None:
        missing = [str(n) for n in wanted if n not in frame.columns]
        if missing:
            raise ValidationError(f"sample lacks the model's features: {', '.join(missing)}")
        frame = frame[list(wanted)]
    schema = infer_schema(frame)
    if declared is not None:
        schema = _declared_with_sample(declared, schema)
    frame = coerce_frame(frame, schema)
    needs_frame = names is not None or not schema.all_numeric
    return register(
        store, model, name, task_of(model), schema, frame, frame if y is not None else None, y,
        input_kind="dataframe" if needs_frame else "numpy",
        algorithm=type(model).__name__, source=str(model_path), target_name=target,
        promote=promote,
    )


def task_of(model: Any) -> Task:
    return "classification" if hasattr(model, "classes_") else "regression"


def _declared_with_sample(declared: Schema, inferred: Schema) -> Schema:
    """The signature's types, with the sample's categories and ranges."""
    seen = {f.name: f for f in inferred.features}
    features = []
    for spec in declared.features:
        got = seen[spec.name]
        if (spec.type == "category") != (got.type == "category"):
            raise ValidationError(f"sample column {spec.name!r} is {got.type} but the model's "
                                  f"signature says {spec.type}")
        if spec.type == "category":
            spec = spec.model_copy(update={"categories": got.categories, "allow_unknown": False})
        elif spec.is_numeric and got.is_numeric and spec.type != "boolean":
            spec = spec.model_copy(update={"min": got.min, "max": got.max})
        features.append(spec)
    return Schema(features=features)


def _register_declared(store: ModelStore, model: Any, name: str, schema: Schema,
                       model_path: Path, promote: bool | None) -> Manifest:
    """Register with the signature's schema alone: no sample, so no reference statistics."""
    needs_frame = (getattr(model, "feature_names_in_", None) is not None
                   or not schema.all_numeric)
    classes = getattr(model, "classes_", None)
    fields = dict(
        name=name, created_at=now(), task=task_of(model), features=schema.features,
        target=None, classes=np.asarray(classes).tolist() if classes is not None else None,
        input_kind="dataframe" if needs_frame else "numpy", label_from_proba=False,
        algorithm=type(model).__name__, source=str(model_path),
        library_versions=library_versions(), metrics={}, reference={},
    )
    return store.save(model, fields, promote=promote)
