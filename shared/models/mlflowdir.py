"""Reading an MLflow model directory (sklearn or xgboost flavour) without MLflow installed.

MLflow writes a directory with an `MLmodel` YAML file: `flavors.sklearn.pickled_model` names
the estimator's pickle (`serialization_format` pickle or cloudpickle; cloudpickle writes a
plain pickle for objects importable by name, which every scikit-learn estimator is), and
`flavors.xgboost.data` names the booster saved by XGBoost itself (`model_format` xgb, json or
ubj). The optional `signature.inputs` is a JSON string of column specs
(`[{"type": "double", "name": "f1", "required": true}, ...]`), read here as the schema.
The pickle goes through the allow-list unpickler and the booster through XGBoost's loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared.errors import ValidationError
from shared.models.modelfiles import load_xgboost, unpickle_model
from shared.models.schema import FeatureSpec, FeatureType, Schema

MLMODEL_FILE = "MLmodel"
PICKLE_FORMATS = ("pickle", "cloudpickle")
# MLflow's column types (mlflow.types.DataType) tabserve has a feature type for.
COLUMN_TYPES: dict[str, FeatureType] = {
    "double": "number", "float": "number", "long": "integer", "integer": "integer",
    "boolean": "boolean", "string": "category",
}


@dataclass(frozen=True)
class MlflowModel:
    """The estimator of an MLflow directory, its flavour and its signature's schema (if any)."""

    model: Any
    flavor: str
    schema: Schema | None


def is_mlflow_dir(path: Path) -> bool:
    """Whether `path` is a directory holding an MLmodel file."""
    return path.is_dir() and (path / MLMODEL_FILE).is_file()


def read_mlflow_dir(directory: Path) -> MlflowModel:
    """The model of an MLflow sklearn- or xgboost-flavour directory, with its schema."""
    mlmodel = directory / MLMODEL_FILE
    if not mlmodel.is_file():
        raise ValidationError(f"{directory}: a directory without an MLmodel file (expected "
                              "an MLflow model directory, or give a model file)")
    spec = _read_mlmodel(mlmodel)
    flavors = spec.get("flavors")
    if not isinstance(flavors, dict):
        raise ValidationError(f"{mlmodel}: no 'flavors' mapping (expected an MLflow MLmodel)")
    if isinstance(flavors.get("sklearn"), dict):
        model, flavor = _load_sklearn(directory, mlmodel, flavors["sklearn"]), "sklearn"
    elif isinstance(flavors.get("xgboost"), dict):
        model, flavor = _load_xgboost_flavor(directory, mlmodel, flavors["xgboost"]), "xgboost"
    else:
        raise ValidationError(f"{mlmodel}: flavours {', '.join(map(str, flavors)) or 'none'}; "
                              "tabserve imports the sklearn or xgboost flavour")
    return MlflowModel(model, flavor, signature_schema(mlmodel, spec.get("signature")))


def _read_mlmodel(mlmodel: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(mlmodel.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{mlmodel}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise ValidationError(f"{mlmodel}: not a YAML mapping (expected an MLflow MLmodel)")
    return spec


def _member(directory: Path, mlmodel: Path, relative: Any, key: str) -> Path:
    if not isinstance(relative, str) or not relative:
        raise ValidationError(f"{mlmodel}: no {key} file named")
    path = (directory / relative).resolve()
    if not path.is_relative_to(directory.resolve()):
        raise ValidationError(f"{mlmodel}: {key} {relative!r} is outside the model directory")
    if not path.is_file():
        raise ValidationError(f"{directory / relative}: no such file (named by {mlmodel} "
                              f"as {key})")
    return path


def _load_sklearn(directory: Path, mlmodel: Path, flavor: dict[str, Any]) -> Any:
    fmt = flavor.get("serialization_format", "cloudpickle")
    if fmt not in PICKLE_FORMATS:
        raise ValidationError(f"{mlmodel}: sklearn serialization_format {fmt!r}; tabserve "
                              f"reads {' or '.join(PICKLE_FORMATS)}")
    path = _member(directory, mlmodel, flavor.get("pickled_model"), "sklearn pickled_model")
    return unpickle_model(path)


def _load_xgboost_flavor(directory: Path, mlmodel: Path, flavor: dict[str, Any]) -> Any:
    path = _member(directory, mlmodel, flavor.get("data"), "xgboost data")
    return load_xgboost(path)


def signature_schema(mlmodel: Path, signature: Any) -> Schema | None:
    """The schema of a column-based signature's inputs; None without one (or for a tensor
    signature, which names no columns)."""
    if not isinstance(signature, dict) or not signature.get("inputs"):
        return None
    try:
        inputs = json.loads(signature["inputs"])
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{mlmodel}: signature inputs are not a JSON list of column "
                              f"specs ({exc})") from None
    if not isinstance(inputs, list) or not all(isinstance(c, dict) for c in inputs):
        raise ValidationError(f"{mlmodel}: signature inputs are not a JSON list of column specs")
    if not inputs or any(c.get("type") == "tensor" or not c.get("name") for c in inputs):
        return None
    return Schema(features=[_feature(mlmodel, column) for column in inputs])


def _feature(mlmodel: Path, column: dict[str, Any]) -> FeatureSpec:
    name, kind = str(column["name"]), column.get("type")
    if kind not in COLUMN_TYPES:
        raise ValidationError(f"{mlmodel}: signature input {name!r} has type {kind!r}; tabserve "
                              f"takes {', '.join(COLUMN_TYPES)}")
    feature_type = COLUMN_TYPES[str(kind)]
    return FeatureSpec(name=name, type=feature_type, nullable=not column.get("required", True))
