"""`tabserve train --data` and `tabserve import` produce models that /predict serves."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import requests
from sklearn.linear_model import LogisticRegression

from tests.servers import ROOT, tabserve_env


def tabserve(args, settings):
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT,
                          env=tabserve_env(settings.as_env()), capture_output=True, text=True,
                          timeout=180)


def _loans(n=400, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    region = rng.choice(["north", "south", "east"], size=n)
    income = rng.normal(50, 15, size=n).round(1)
    age = rng.integers(18, 80, size=n)
    score = income / 10 + (region == "north") * 2 + rng.normal(0, 1, size=n)
    return pd.DataFrame({"region": region, "income": income, "age": age,
                         "approved": np.where(score > 6, "yes", "no")})


def test_train_on_csv_with_a_categorical_column_is_served(api_server, base_settings, tmp_path):
    path = tmp_path / "loans.csv"
    _loans().to_csv(path, index=False)
    result = tabserve(["train", "--data", str(path), "--target", "approved", "--name", "loans"],
                      base_settings)
    assert result.returncode == 0, result.stderr
    assert "trained loans:1" in result.stdout

    row = {"region": "north", "income": 61.5, "age": 40}
    r = requests.post(api_server.url + "/predict", params={"model": "loans"},
                      json={"features": row}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["prediction"] in ("yes", "no")
    assert set(r.json()["probabilities"]) == {"no", "yes"}
    bad = requests.post(api_server.url + "/predict", params={"model": "loans"},
                        json={"features": {**row, "region": 7}}, timeout=30)
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "region"
    manifest = requests.get(api_server.url + "/models/loans", timeout=10).json()["versions"][0]
    types = {f["name"]: f["type"] for f in manifest["features"]}
    assert types == {"region": "category", "income": "number", "age": "integer"}


def test_import_a_pickled_model_is_served(api_server, base_settings, tmp_path, demo_data):
    names, X = demo_data
    frame = pd.DataFrame(X[:, :5], columns=names[:5])
    y = (X[:, 0] > 14).astype(int)
    model = LogisticRegression(max_iter=1000).fit(frame, y)
    model_path, sample_path = tmp_path / "mine.pkl", tmp_path / "sample.parquet"
    model_path.write_bytes(pickle.dumps(model))
    frame.assign(label=y).to_parquet(sample_path)
    result = tabserve(["import", str(model_path), "--name", "mine", "--sample", str(sample_path),
                       "--target", "label"], base_settings)
    assert result.returncode == 0, result.stderr

    rows = frame.iloc[:50]
    r = requests.post(api_server.url + "/predict", params={"model": "mine:1"},
                      json={"instances": rows.to_dict(orient="records")}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == model.predict(rows).tolist()
    got = [[p["0"], p["1"]] for p in r.json()["probabilities"]]
    assert got == model.predict_proba(rows).tolist()


def test_cli_errors_are_one_line(base_settings, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n")
    result = tabserve(["train", "--data", str(path), "--target", "zzz"], base_settings)
    assert result.returncode == 2
    assert result.stderr.startswith("error: target column 'zzz' not in")
