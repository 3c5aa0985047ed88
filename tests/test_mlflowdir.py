"""`tabserve import DIR` of an MLflow model directory (sklearn and xgboost flavours), laid out
as MLflow writes it, served in process with the original estimator's predictions; and each
unreadable directory refused with one line naming the file."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tests.inprocess import inprocess_app, run_cli
from tests.test_cli import _one_error_line

# The MLmodel of `mlflow.sklearn.save_model(model, path, signature=infer_signature(X, y))`
# (MLflow 2.x), with the keys MLflow writes; "signature" is dropped for the unsigned cases.
SKLEARN_MLMODEL = {
    "artifact_path": "model",
    "flavors": {
        "python_function": {
            "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
            "loader_module": "mlflow.sklearn",
            "model_path": "model.pkl",
            "predict_fn": "predict",
            "python_version": "3.12.3",
        },
        "sklearn": {
            "code": None,
            "pickled_model": "model.pkl",
            "serialization_format": "cloudpickle",
            "sklearn_version": "1.5.2",
        },
    },
    "mlflow_version": "2.17.2",
    "model_size_bytes": 1234,
    "model_uuid": "4f0b7a7a2b1c4a1f9d7e0c5d3b2a1f00",
    "run_id": None,
    "utc_time_created": "2026-12-01 10:00:00.000000",
}
XGBOOST_FLAVOR = {
    "python_function": {
        "data": "model.xgb", "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
        "loader_module": "mlflow.xgboost", "python_version": "3.12.3",
    },
    "xgboost": {
        "code": None, "data": "model.xgb", "model_class": "xgboost.sklearn.XGBClassifier",
        "model_format": "xgb", "xgb_version": "2.1.1",
    },
}


def _signature(frame: pd.DataFrame) -> dict[str, str | None]:
    types = {"float64": "double", "int64": "long", "object": "string", "str": "string",
             "bool": "boolean"}
    inputs = [{"type": types[str(frame[c].dtype)], "name": c, "required": True} for c in frame]
    outputs = [{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]
    return {"inputs": json.dumps(inputs), "outputs": json.dumps(outputs), "params": None}


def _write_dir(directory: Path, mlmodel: dict, files: dict[str, bytes]) -> Path:
    directory.mkdir()
    (directory / "MLmodel").write_text(yaml.safe_dump(mlmodel, sort_keys=False))
    (directory / "python_env.yaml").write_text("python: 3.12.3\n")
    for name, payload in files.items():
        (directory / name).write_bytes(payload)
    return directory


def _loans(n: int = 300) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"income": rng.normal(50, 15, n).round(2),
                          "age": rng.integers(18, 80, n),
                          "debt": rng.normal(10, 4, n).round(2)})
    return frame, (frame["income"] / 10 - frame["debt"] / 4 > 2.5).astype(int).to_numpy()


@pytest.fixture(scope="module")
def client(private_settings):
    app = inprocess_app(private_settings)
    yield app.test_client()
    app.extensions["tabserve"].predictions.flush()


def _served(client, ref: str, rows: pd.DataFrame) -> dict:
    r = client.post("/predict", query_string={"model": ref},
                    json={"instances": rows.to_dict(orient="records")})
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


def _sklearn_dir(tmp_path: Path, frame: pd.DataFrame, model, signed: bool) -> Path:
    mlmodel = dict(SKLEARN_MLMODEL, **({"signature": _signature(frame)} if signed else {}))
    # cloudpickle pickles an object importable by name (every scikit-learn class) exactly as
    # pickle does, so a plain pickle is what MLflow's cloudpickle format holds for these.
    return _write_dir(tmp_path / "mlflow-model", mlmodel, {"model.pkl": pickle.dumps(model)})


def test_an_mlflow_sklearn_directory_with_a_signature_needs_no_sample(
        client, private_settings, tmp_path):
    frame, y = _loans()
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, y)
    directory = _sklearn_dir(tmp_path, frame, model, signed=True)
    result = run_cli(["import", str(directory), "--name", "mlf-signed"], private_settings)
    assert result.returncode == 0, result.stderr
    assert "imported mlf-signed:1 (Pipeline, 3 features)" in result.stdout

    rows = frame.iloc[:40]
    body = _served(client, "mlf-signed:1", rows)
    assert body["predictions"] == model.predict(rows).tolist()
    got = [[p["0"], p["1"]] for p in body["probabilities"]]
    np.testing.assert_allclose(got, model.predict_proba(rows), rtol=1e-12)
    manifest = client.get("/models/mlf-signed").get_json()["versions"][0]
    assert {f["name"]: f["type"] for f in manifest["features"]} == {
        "income": "number", "age": "integer", "debt": "number"}
    bad = client.post("/predict", query_string={"model": "mlf-signed:1"},
                      json={"features": {"income": "lots", "age": 3, "debt": 1.0}})
    assert bad.status_code == 422


def test_an_mlflow_sklearn_directory_without_a_signature_takes_the_sample(
        client, private_settings, tmp_path):
    frame, y = _loans()
    frame["region"] = np.where(frame["age"] > 40, "north", "south")
    model = LogisticRegression(max_iter=1000).fit(frame[["income", "age", "debt"]], y)
    directory = _sklearn_dir(tmp_path, frame, model, signed=False)
    result = run_cli(["import", str(directory), "--name", "mlf-plain"], private_settings)
    assert "no column signature in its MLmodel; give --sample" in _one_error_line(result)

    frame.to_csv(tmp_path / "sample.csv", index=False)
    result = run_cli(["import", str(directory), "--name", "mlf-plain",
                       "--sample", str(tmp_path / "sample.csv")], private_settings)
    assert result.returncode == 0, result.stderr
    rows = frame[["income", "age", "debt"]].iloc[:40]
    assert _served(client, "mlf-plain:1", rows)["predictions"] == model.predict(rows).tolist()


def test_an_mlflow_signature_with_a_string_column_takes_categories_from_the_sample(
        client, private_settings, tmp_path):
    frame, _ = _loans()
    frame["region"] = np.where(frame["age"] > 40, "north", "south")
    y = frame["income"].to_numpy() * 2 + (frame["region"] == "north") * 5
    model = make_pipeline(make_column_transformer((OneHotEncoder(), ["region"]),
                                                  remainder="passthrough"), Ridge()).fit(frame, y)
    directory = _sklearn_dir(tmp_path, frame, model, signed=True)
    frame.to_parquet(tmp_path / "sample.parquet")
    result = run_cli(["import", str(directory), "--name", "mlf-region",
                       "--sample", str(tmp_path / "sample.parquet")], private_settings)
    assert result.returncode == 0, result.stderr
    rows = frame.iloc[:30]
    np.testing.assert_allclose(_served(client, "mlf-region:1", rows)["predictions"],
                               model.predict(rows), rtol=1e-12)
    region = [f for f in client.get("/models/mlf-region").get_json()["versions"][0]["features"]
              if f["name"] == "region"][0]
    assert region["type"] == "category" and region["categories"] == ["north", "south"]
    bad = client.post("/predict", query_string={"model": "mlf-region:1"},
                      json={"features": {**rows.iloc[0].to_dict(), "region": "west"}})
    assert bad.status_code == 422


# MLflow saves as model.xgb; XGBoost warns that it picks UBJSON for that suffix.
@pytest.mark.filterwarnings("ignore:.*Saving model in the UBJSON format")
def test_an_mlflow_xgboost_directory_is_loaded_by_xgboost(client, private_settings, tmp_path):
    import xgboost

    frame, y = _loans()
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(frame, y)
    directory = tmp_path / "xgb-model"
    directory.mkdir()
    model.save_model(directory / "model.xgb")
    mlmodel = dict(SKLEARN_MLMODEL, flavors=XGBOOST_FLAVOR, signature=_signature(frame))
    (directory / "MLmodel").write_text(yaml.safe_dump(mlmodel, sort_keys=False))
    result = run_cli(["import", str(directory), "--name", "mlf-xgb"], private_settings)
    assert result.returncode == 0, result.stderr
    assert "XGBClassifier" in result.stdout
    rows = frame.iloc[:40]
    body = _served(client, "mlf-xgb:1", rows)
    assert body["predictions"] == model.predict(rows).tolist()
    got = [[p["0"], p["1"]] for p in body["probabilities"]]
    np.testing.assert_allclose(got, model.predict_proba(rows), rtol=1e-6)


def _bad_dirs(tmp_path: Path) -> list[tuple[Path, str]]:
    frame, y = _loans(50)
    model = pickle.dumps(LogisticRegression().fit(frame, y))
    signed = dict(SKLEARN_MLMODEL, signature=_signature(frame))
    empty = tmp_path / "empty"
    empty.mkdir()
    out = [(empty, f"{empty}: a directory without an MLmodel file")]
    d = _write_dir(tmp_path / "pyfunc", dict(signed, flavors={"python_function": {
        "loader_module": "mlflow.pyfunc.model"}}), {})
    out.append((d, f"{d / 'MLmodel'}: flavours python_function; tabserve imports the sklearn"))
    d = _write_dir(tmp_path / "nopkl", signed, {})
    out.append((d, f"{d / 'model.pkl'}: no such file (named by {d / 'MLmodel'}"))
    d = _write_dir(tmp_path / "badsig", dict(signed, signature={"inputs": "[{oops"}),
                   {"model.pkl": model})
    out.append((d, f"{d / 'MLmodel'}: signature inputs are not a JSON list of column specs"))
    d = _write_dir(tmp_path / "binary", dict(signed, signature={"inputs": json.dumps(
        [{"type": "binary", "name": "photo"}])}), {"model.pkl": model})
    out.append((d, f"{d / 'MLmodel'}: signature input 'photo' has type 'binary'"))
    d = _write_dir(tmp_path / "notyaml", {}, {"model.pkl": model})
    (d / "MLmodel").write_text("flavors: [unclosed\n")
    out.append((d, f"{d / 'MLmodel'}: not YAML"))
    escape = dict(SKLEARN_MLMODEL, flavors={"sklearn": {"pickled_model": "../model.pkl"}})
    d = _write_dir(tmp_path / "escape", escape, {})
    out.append((d, "is outside the model directory"))
    d = _write_dir(tmp_path / "skops", dict(signed, flavors={"sklearn": {
        "pickled_model": "model.skops", "serialization_format": "skops"}}), {})
    out.append((d, "sklearn serialization_format 'skops'; tabserve reads pickle or cloudpickle"))
    d = _write_dir(tmp_path / "evil", signed, {"model.pkl": b"cos\nsystem\n(S'true'\ntR."})
    out.append((d, f"{d / 'model.pkl'}: refusing to unpickle os.system"))
    return out


def test_each_unreadable_mlflow_directory_is_one_line_naming_the_file(private_settings, tmp_path):
    (tmp_path / "model.pkl").write_bytes(b"not inside")
    for directory, expected in _bad_dirs(tmp_path):
        result = run_cli(["import", str(directory), "--name", "bad"], private_settings)
        assert expected in _one_error_line(result), (directory.name, result.stderr)


def test_a_string_column_needs_a_sample_for_its_values(private_settings, tmp_path):
    frame, y = _loans()
    frame["region"] = np.where(frame["age"] > 40, "north", "south")
    model = make_pipeline(make_column_transformer((OneHotEncoder(), ["region"]),
                                                  remainder="passthrough"),
                          LogisticRegression(max_iter=1000)).fit(frame, y)
    directory = _sklearn_dir(tmp_path, frame, model, signed=True)
    result = run_cli(["import", str(directory), "--name", "mlf-anyregion"], private_settings)
    assert (f"{directory}: its signature has string columns (region); give --sample FILE"
            in _one_error_line(result))


def test_a_sample_that_contradicts_the_signature_is_one_line(private_settings, tmp_path):
    frame, y = _loans()
    directory = _sklearn_dir(tmp_path, frame, LogisticRegression().fit(frame, y), signed=True)
    frame.assign(age=np.where(frame["age"] > 40, "old", "young")).to_csv(tmp_path / "s.csv",
                                                                         index=False)
    result = run_cli(["import", str(directory), "--name", "mlf-contra",
                       "--sample", str(tmp_path / "s.csv")], private_settings)
    assert ("sample column 'age' is category but the model's signature says integer"
            in _one_error_line(result))


def test_a_tensor_signature_names_no_columns_so_the_sample_is_needed(private_settings, tmp_path):
    frame, y = _loans()
    tensor = json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 3]}}])
    mlmodel = dict(SKLEARN_MLMODEL, signature={"inputs": tensor, "outputs": None})
    directory = _write_dir(tmp_path / "tensor", mlmodel,
                           {"model.pkl": pickle.dumps(LogisticRegression().fit(frame, y))})
    result = run_cli(["import", str(directory), "--name", "mlf-tensor"], private_settings)
    assert "no column signature in its MLmodel; give --sample" in _one_error_line(result)
