"""`tabserve import` of a joblib file (scikit-learn's documented way to save a model), plain
and compressed, read through joblib's own unpickler with the allow-list: served with the
original's predictions; a joblib file hiding a callable, even inside an object array, is
refused in one line."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tests.inprocess import run_cli
from tests.test_cli import _one_error_line
from tests.test_mlflowdir import _loans, _served, client  # noqa: F401 - the app fixture


@pytest.mark.parametrize("compress", [0, 3], ids=["plain", "zlib"])
def test_a_joblib_file_is_imported_and_served_as_the_original(client, private_settings,  # noqa: F811
                                                              tmp_path, compress):
    frame, y = _loans()
    labels = np.where(y == 1, "approve", "decline").astype(object)  # an object array inside
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, labels)
    path, sample = tmp_path / "model.joblib", tmp_path / "sample.csv"
    joblib.dump(model, path, compress=compress)
    frame.to_csv(sample, index=False)
    name = f"joblib-{compress}"
    result = run_cli(["import", str(path), "--name", name, "--sample", str(sample)],
                      private_settings)
    assert result.returncode == 0, result.stderr
    rows = frame.iloc[:40]
    body = _served(client, f"{name}:1", rows)
    assert body["predictions"] == model.predict(rows).tolist()


class _Hostile:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("payload", ["object", "object-array"])
def test_a_joblib_file_hiding_a_callable_is_refused(private_settings, tmp_path, payload):
    hostile = _Hostile() if payload == "object" else np.array([_Hostile()], dtype=object)
    path, sample = tmp_path / "model.joblib", tmp_path / "sample.csv"
    joblib.dump({"weights": np.arange(3.0), "x": hostile}, path)
    _loans()[0].to_csv(sample, index=False)
    result = run_cli(["import", str(path), "--name", "hostile", "--sample", str(sample)],
                      private_settings)
    line = _one_error_line(result)
    assert "refusing to unpickle builtins.print" in line and "this ran" not in result.stdout
