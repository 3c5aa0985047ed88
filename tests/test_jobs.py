"""The batch path end to end: real gunicorn, redis-server and Celery worker processes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import requests

from tests.jobclient import file_bytes, read_result, submit, wait_job


@pytest.fixture(scope="module")
def frame(customer_frame) -> pd.DataFrame:
    return customer_frame


def online(api_server, rows: list[dict]) -> dict:
    r = requests.post(api_server.url + "/predict", json={"instances": rows}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("in_fmt", ["csv", "parquet"])
@pytest.mark.parametrize("out_fmt", ["csv", "parquet", "jsonl"])
def test_job_output_equals_online_predictions(api_server, worker, frame, demo_rows, in_fmt,
                                              out_fmt):
    r = submit(api_server.url, file_bytes(frame, in_fmt), in_fmt, output_format=out_fmt,
               id_column="customer")
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["Location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["model"] == {"name": "breast-cancer", "version": 1}
    done = wait_job(api_server.url, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["rows_done"] == done["progress"]["rows_total"] == len(frame)
    assert done["progress"]["fraction"] == 1.0

    result, response = read_result(api_server.url, job["id"])
    assert f'filename=input-predictions.{out_fmt}' in response.headers["Content-Disposition"]
    assert list(result.columns) == ["customer", "prediction_id", "prediction", "probability_0",
                                    "probability_1"]
    assert result["prediction_id"][7] == f"{job['id']}.7"
    assert result["customer"].tolist() == frame["customer"].tolist()
    expected = online(api_server, demo_rows)
    assert result["prediction"].tolist() == expected["predictions"]
    assert result["probability_0"].tolist() == [p["0"] for p in expected["probabilities"]]
    assert result["probability_1"].tolist() == [p["1"] for p in expected["probabilities"]]


def test_include_input_and_row_numbers(api_server, worker, frame):
    r = submit(api_server.url, file_bytes(frame.iloc[:50], "csv"), "csv", multipart=False,
               include_input="true", output_format="parquet")
    assert r.status_code == 202, r.text
    assert wait_job(api_server.url, r.json()["id"])["status"] == "succeeded"
    result, _ = read_result(api_server.url, r.json()["id"])
    assert result["row"].tolist() == list(range(50))
    assert list(result.columns[5:]) == list(frame.columns)
    assert result["customer"].tolist() == frame["customer"][:50].tolist()
    np.testing.assert_array_equal(result["mean radius"], frame["mean radius"][:50])


def test_large_file_progress_rises_and_every_row_is_scored_once(api_server, worker, frame,
                                                                tmp_path):
    big = pd.concat([frame.drop(columns="customer")] * 352, ignore_index=True)[:200_000]
    big.insert(0, "customer", np.arange(len(big)))
    r = submit(api_server.url, file_bytes(big, "csv"), "csv", id_column="customer")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    fractions = []
    while True:
        job = requests.get(f"{api_server.url}/jobs/{job_id}", timeout=10).json()
        fractions.append(job["progress"]["fraction"])
        if job["status"] in ("succeeded", "failed"):
            break
    assert job["status"] == "succeeded", job
    assert fractions == sorted(fractions)
    assert len({f for f in fractions if 0 < f < 1}) >= 2, fractions
    result, _ = read_result(api_server.url, job_id)
    assert len(result) == 200_000
    assert result["customer"].tolist() == list(range(200_000))
    features = big.drop(columns="customer")
    for rows in (slice(0, 500), slice(199_500, 200_000)):  # first and last chunks
        expected = online(api_server, features[rows].to_dict(orient="records"))
        assert result["probability_1"][rows].tolist() == [p["1"] for p in expected["probabilities"]]


def test_cancel_queued_and_running_jobs(api_server, worker, frame, base_settings):
    big = pd.concat([frame] * 250, ignore_index=True)  # ~142k rows: several chunks
    running = submit(api_server.url, file_bytes(big, "csv"), "csv").json()
    queued = submit(api_server.url, file_bytes(frame, "csv"), "csv").json()
    wait_job(api_server.url, running["id"], until=("running",))

    r = requests.delete(f"{api_server.url}/jobs/{queued['id']}", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = requests.delete(f"{api_server.url}/jobs/{running['id']}", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"

    # the worker moves on: a later job runs, the cancelled ones never ran further
    after = submit(api_server.url, file_bytes(frame.iloc[:10], "csv"), "csv").json()
    assert wait_job(api_server.url, after["id"])["status"] == "succeeded"
    q = requests.get(f"{api_server.url}/jobs/{queued['id']}", timeout=10).json()
    assert q["status"] == "cancelled" and q["started_at"] is None and q["attempts"] == 0
    run = requests.get(f"{api_server.url}/jobs/{running['id']}", timeout=10).json()
    assert run["status"] == "cancelled" and run["output"] is None
    job_dir = base_settings.data_dir + f"/jobs/{running['id']}"
    import os

    leftovers = os.listdir(job_dir) if os.path.isdir(job_dir) else []
    assert leftovers == ["job.json"], leftovers  # partial output removed; the record's copy

    r = requests.get(f"{api_server.url}/jobs/{running['id']}/result", timeout=10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_finished"


def test_list_get_and_delete(api_server, worker, frame):
    job = submit(api_server.url, file_bytes(frame.iloc[:5], "csv"), "csv").json()
    wait_job(api_server.url, job["id"])
    listed = requests.get(api_server.url + "/jobs?limit=3", timeout=10).json()["jobs"]
    assert listed[0]["id"] == job["id"] and len(listed) <= 3
    times = [j["created_at"] for j in listed]
    assert times == sorted(times, reverse=True)
    ok = requests.get(api_server.url + "/jobs?status=succeeded", timeout=10).json()["jobs"]
    assert ok and all(j["status"] == "succeeded" for j in ok)
    bad = requests.get(api_server.url + "/jobs?status=weird&limit=0", timeout=10)
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["error"]["details"]} == {"status", "limit"}
    assert requests.delete(f"{api_server.url}/jobs/{job['id']}", timeout=10).status_code == 204
    gone = requests.get(f"{api_server.url}/jobs/{job['id']}", timeout=10)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "job_not_found"
    r = requests.get(f"{api_server.url}/jobs/{job['id']}/result", timeout=10)
    assert r.status_code == 404


def test_a_result_downloads_whole_and_by_range(api_server, worker, frame):
    """Under the gevent worker a stored file is sent in pieces read off the loop
    (api/downloads.py): whole, as a Range (seeked to, 206), and conditional (304)."""
    r = submit(api_server.url, file_bytes(frame, "csv"), "csv", include_input="true")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert wait_job(api_server.url, job_id)["status"] == "succeeded"
    url = f"{api_server.url}/jobs/{job_id}/result"
    whole = requests.get(url, timeout=30)
    assert whole.status_code == 200 and int(whole.headers["Content-Length"]) == len(
        whole.content) > 2000
    part = requests.get(url, headers={"Range": "bytes=1000-1999"}, timeout=30)
    assert part.status_code == 206, part.text
    assert part.content == whole.content[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(whole.content)}"
    tail = requests.get(url, headers={"Range": "bytes=-10"}, timeout=30)
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    again = requests.get(url, timeout=30,
                         headers={"If-Modified-Since": whole.headers["Last-Modified"]})
    assert again.status_code == 304 and again.content == b""


def test_the_pool_processes_score_at_the_priority_set(base_settings, tmp_path):
    """TABSERVE_WORKER_NICE lowers the pool processes' CPU priority, so scoring can yield
    the CPU to online requests on the same machine; the worker's main process (heartbeat,
    reaper, broker) keeps its own."""
    import os

    import psutil

    from tests.servers import WorkerProcess, tabserve_env

    assert base_settings.worker_nice == 0  # the default: as the API's
    settings = base_settings.with_overrides(worker_nice=10, queue_name="nice")
    worker = WorkerProcess(tabserve_env(settings.as_env()), tmp_path, "nice", 2)
    try:
        main = psutil.Process(worker.pid)
        children = main.children()
        assert len(children) == 2
        assert main.nice() == os.nice(0)
        assert all(c.nice() == max(10, os.nice(0)) for c in children)
    finally:
        worker.stop()
