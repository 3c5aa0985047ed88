"""Save a pickled model as an MLflow model; run by bench/out/mlflow-venv's Python, not tabserve's.

    bench/out/mlflow-venv/bin/python bench/mlflow_save.py MODEL.pkl OUT_DIR

The flavor is the one MLflow users pick for the object: `mlflow.xgboost` for an XGBoost
estimator, `mlflow.sklearn` otherwise (pickle format); each with its default pyfunc predict,
which answers labels only.
"""

from __future__ import annotations

import pickle
import sys


def save(pickle_path: str, out_dir: str) -> str:
    """Unpickle the model and save it under out_dir; returns the call used."""
    with open(pickle_path, "rb") as fh:
        model = pickle.load(fh)  # the benchmark's own pickle
    if type(model).__module__.startswith("xgboost"):
        import mlflow.xgboost

        mlflow.xgboost.save_model(model, out_dir)
        return "mlflow.xgboost.save_model(model, path)"
    import mlflow.sklearn

    # pickle, the format tabserve stores (MLflow's default, skops, refuses tree internals)
    mlflow.sklearn.save_model(model, out_dir, serialization_format="pickle")
    return 'mlflow.sklearn.save_model(model, path, serialization_format="pickle")'


if __name__ == "__main__":
    print(save(sys.argv[1], sys.argv[2]))
