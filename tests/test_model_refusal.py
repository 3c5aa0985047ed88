"""A model that raises on rows the schema let through (a city column with more categories
than a schema lists, so any city passes it, and an encoder that refuses cities it never
saw): /predict answers a 422 naming the model's reason, and a job skips exactly
those rows (on_error=skip) or fails once, naming the first (on_error=fail). Real gunicorn,
Celery worker and redis-server, on the module's own artifacts, Redis database and queue."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from shared.models.importing import import_model
from shared.models.schema import MAX_CATEGORIES
from shared.models.store import ModelStore
from tests.jobclient import read_result, submit, wait_job
from tests.servers import ApiServer, WorkerProcess, tabserve_env

NAME = "regions"


CITIES = [f"city{i}" for i in range(MAX_CATEGORIES + 1)]


def _frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame({"key": np.arange(rows), "age": rng.integers(20, 70, rows),
                         "region": np.resize(CITIES, rows)})


@pytest.fixture(scope="module")
def stack(base_settings, redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("refusal")
    train = _frame(len(CITIES))
    y = (train["age"] > 40).astype(int)
    model = make_pipeline(make_column_transformer((OneHotEncoder(), ["region"]),
                                                  remainder="passthrough"),
                          LogisticRegression()).fit(train[["age", "region"]], y)
    (root / "model.pkl").write_bytes(pickle.dumps(model))
    train[["age", "region"]].to_csv(root / "sample.csv", index=False)
    import_model(ModelStore(root / "artifacts"), root / "model.pkl", NAME, root / "sample.csv")
    settings = base_settings.with_overrides(
        artifacts_dir=root / "artifacts", data_dir=str(root / "data"), chunk_rows=64,
        default_model=NAME,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/14", queue_name="refusal")
    env = tabserve_env(settings.as_env())
    api = ApiServer(env, root, workers=1)
    worker = WorkerProcess(env, root, "refusal", 1)
    yield api, model
    worker.stop()
    api.stop()


def test_predict_answers_422_with_the_models_reason(stack):
    api, model = stack
    good = requests.post(f"{api.url}/predict", json={"features": {"age": 50, "region": "city1"}},
                         timeout=10)
    assert good.status_code == 200
    assert good.json()["prediction"] == model.predict(
        pd.DataFrame({"age": [50], "region": ["city1"]}))[0]
    bad = requests.post(f"{api.url}/predict", json={"instances": [
        {"age": 50, "region": "city1"}, {"age": 30, "region": "west"}]}, timeout=10)
    assert bad.status_code == 422, bad.text
    error = bad.json()["error"]
    assert error["code"] == "model_rejected_input"
    assert "ValueError" in error["message"] and "west" in error["message"]
    assert [d["row"] for d in error["details"]] == [1]  # which row, of the two
    assert "Traceback" not in bad.text
    # MLflow's protocol answers the same refusal in its own error shape.
    mlflow = requests.post(f"{api.url}/invocations", json={
        "dataframe_records": [{"age": 30, "region": "west"}]}, timeout=10)
    assert mlflow.status_code == 422 and mlflow.json()["error_code"] == "BAD_REQUEST"
    assert "west" in mlflow.json()["message"]
    assert requests.get(f"{api.url}/readyz", timeout=10).status_code == 200  # alive after


def _rows_csv() -> tuple[bytes, list[int]]:
    frame = _frame(500)
    west = [3, 130, 131, 499]  # across chunks of 64, two side by side, the last row
    frame.loc[west, "region"] = "west"
    out = io.BytesIO()
    frame.to_csv(out, index=False)
    return out.getvalue(), west


def test_a_job_skips_exactly_the_rows_the_model_refuses(stack):
    api, model = stack
    data, west = _rows_csv()
    job = submit(api.url, data, "csv", id_column="key", on_error="skip").json()
    done = wait_job(api.url, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["rows_failed"] == len(west)
    result, _ = read_result(api.url, job["id"])
    frame = pd.read_csv(io.BytesIO(data))
    kept = frame[~frame["key"].isin(west)]
    assert result["key"].tolist() == kept["key"].tolist()
    assert result["prediction"].tolist() == model.predict(kept[["age", "region"]]).tolist()
    errors = requests.get(f"{api.url}/jobs/{job['id']}/errors", timeout=10)
    assert errors.status_code == 200
    lines = errors.text.strip().splitlines()
    assert len(lines) == 1 + len(west) and all("west" in line for line in lines[1:])


def test_a_job_fails_once_on_a_refused_row_with_on_error_fail(stack):
    api, _ = stack
    data, west = _rows_csv()
    job = submit(api.url, data, "csv", id_column="key").json()
    done = wait_job(api.url, job["id"])
    assert done["status"] == "failed", done
    assert done["attempts"] == 1  # a deterministic input error: not retried
    assert f"row {west[0]}" in done["error"]["message"]
    assert "the model refused this row" in done["error"]["message"]


def test_a_job_whose_rows_the_model_mostly_refuses_fails_with_the_first(stack):
    api, _ = stack
    frame = _frame(300)
    frame.loc[10:, "region"] = "west"  # 290 rows, over several chunks
    out = io.BytesIO()
    frame.to_csv(out, index=False)
    job = submit(api.url, out.getvalue(), "csv", id_column="key", on_error="skip").json()
    done = wait_job(api.url, job["id"])
    assert done["status"] == "failed" and done["attempts"] == 1, done
    assert "the model refused 100 rows, the last at row 109" in done["error"]["message"]
