"""Reading a model file the user already has: XGBoost's own JSON/UBJSON (no pickle involved),
or a pickle read through the allow-list unpickler."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from shared.errors import ModelIntegrityError, ValidationError
from shared.models.unpickler import restricted_joblib_load

XGBOOST_FORMATS = (".json", ".ubj")


def read_model_file(model_path: Path) -> Any:
    """The model in a file: XGBoost's formats by suffix, anything else as a pickle."""
    # XGBoost's own formats need no pickle: preferred, nothing in them runs code.
    if model_path.suffix.lower() in XGBOOST_FORMATS:
        return load_xgboost(model_path)
    return unpickle_model(model_path)


def load_xgboost(model_path: Path) -> Any:
    """An XGBoost model file (JSON or UBJSON, whatever its suffix) loaded by XGBoost, as
    XGBClassifier or XGBRegressor according to its objective."""
    import xgboost

    try:
        booster = xgboost.Booster(model_file=str(model_path))
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        classify = objective.startswith(("binary:", "multi:"))
        model = (xgboost.XGBClassifier if classify else xgboost.XGBRegressor)()
        model.load_model(str(model_path))
    except (xgboost.core.XGBoostError, ValueError, KeyError) as exc:
        raise ValidationError(f"{model_path}: not an XGBoost model file "
                              f"({str(exc).splitlines()[0] if str(exc) else exc!r})") from None
    return model


def unpickle_model(model_path: Path) -> Any:
    """A pickled model (pickle.dump or joblib.dump, compressed or not), every global it
    names checked against the allow-list."""
    try:
        return restricted_joblib_load(str(model_path))  # a pickle, or joblib's (compressed)
    except ModelIntegrityError as exc:
        raise ValidationError(f"{model_path}: {exc.message}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            AttributeError, ImportError) as exc:
        raise ValidationError(f"{model_path}: not a pickled model ({type(exc).__name__}: "
                              f"{exc})") from None
