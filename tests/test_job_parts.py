"""One job spread over several workers: parts scored anywhere, joined in input order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
import requests

from shared.jobs.store import JobStore
from tests.jobclient import file_bytes, read_result, submit, wait_job
from tests.servers import ApiServer, WorkerProcess, tabserve_env


@pytest.fixture(scope="module")
def split_stack(base_settings, redis_server, tmp_path_factory):
    """An API and two workers that cut jobs into parts of 20,000 rows."""
    tmp = tmp_path_factory.mktemp("parts")
    settings = base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/7", queue_name="parts",
        part_rows=20_000, chunk_rows=5_000, data_dir=str(tmp / "data"))
    env = tabserve_env(settings.as_env())
    api = ApiServer(env, tmp, workers=1)
    workers = [WorkerProcess(env, tmp, f"p{i}") for i in range(2)]
    yield api, workers, settings
    for proc in (*workers, api):
        proc.stop()


@pytest.fixture(scope="module")
def rows(demo_data) -> pd.DataFrame:
    names, X = demo_data
    n = 100_000
    frame = pd.DataFrame(np.tile(X, (n // len(X) + 1, 1))[:n], columns=names)
    frame.insert(0, "key", [f"k{i}" for i in range(n)])
    return frame


@pytest.mark.parametrize("in_fmt,out_fmt", [("csv", "csv"), ("parquet", "parquet"),
                                            ("csv", "jsonl")])
def test_split_job_has_every_row_once_in_order(split_stack, rows, in_fmt, out_fmt):
    api, workers, settings = split_stack
    job = submit(api.url, file_bytes(rows, in_fmt, row_group_size=10_000), in_fmt, id_column="key",
                 output_format=out_fmt).json()
    done = wait_job(api.url, job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert done["parts"]["total"] >= 4 and done["parts"]["done"] == done["parts"]["total"]
    assert done["progress"]["rows_done"] == len(rows) and done["progress"]["fraction"] == 1.0
    result, _ = read_result(api.url, job["id"])
    assert result["key"].tolist() == rows["key"].tolist()
    assert result["prediction_id"].tolist()[:3] == [f"{job['id']}.{i}" for i in range(3)]
    assert result["prediction_id"].iloc[-1] == f"{job['id']}.{len(rows) - 1}"
    # parts were scored by both workers (each part's result names its worker)
    store = JobStore(redis.Redis.from_url(settings.redis_url), settings.job_ttl_seconds)
    results = store.part_results(job["id"], done["parts"]["total"])
    scorers = {r["worker"].split("@")[0] for r in results}
    assert scorers == {"p0", "p1"}
    sample = rows.iloc[[0, 33_333, 99_999]].drop(columns="key")
    online = requests.post(api.url + "/predict", timeout=10,
                           json={"instances": sample.to_dict(orient="records")}).json()
    got = result.iloc[[0, 33_333, 99_999]]
    assert got["prediction"].tolist() == online["predictions"]
    assert got["probability_1"].tolist() == [p["1"] for p in online["probabilities"]]
    # one file with one header, its announced length; deleting the job removes every part
    res = requests.get(f"{api.url}/jobs/{job['id']}/result", timeout=60)
    assert int(res.headers["Content-Length"]) == len(res.content) == done["output"]["size_bytes"]
    if out_fmt == "csv":
        assert res.content.count(b"prediction_id") == 1
    assert "parts" not in done["output"] and "key" not in done["output"]
    assert requests.delete(f"{api.url}/jobs/{job['id']}", timeout=10).status_code == 204
    assert not (Path(settings.data_dir) / "jobs" / job["id"]).exists()


def test_split_job_row_errors_name_the_file_row(split_stack, rows):
    api, _, _ = split_stack
    bad = rows.drop(columns="key").astype(object)
    bad.loc[61_234, "mean area"] = "oops"
    csv = bad.to_csv(index=False).encode()
    job = submit(api.url, csv, "csv").json()
    done = wait_job(api.url, job["id"], timeout=180)
    assert done["status"] == "failed" and done["error"]["row"] == 61_234
    skipped = submit(api.url, csv, "csv", on_error="skip").json()
    done = wait_job(api.url, skipped["id"], timeout=180)
    assert done["status"] == "succeeded" and done["progress"]["rows_failed"] == 1
    errors = requests.get(f"{api.url}/jobs/{skipped['id']}/errors", timeout=10).text
    assert errors.splitlines() == ["row,field,message", "61234,mean area,not a number"]
    result, _ = read_result(api.url, skipped["id"])
    assert len(result) == len(rows) - 1 and 61_234 not in set(result["row"])
    assert result["row"].iloc[-1] == len(rows) - 1
