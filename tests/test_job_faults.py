"""Faults: a worker SIGKILLed mid-job, a job outliving its lease, Redis down.

More faults (frozen workers, duplicate deliveries, Redis restarts): test_job_reliability.py.
"""

from __future__ import annotations

import io

import pandas as pd
import pytest
import requests

from tests.jobclient import read_result, submit, wait_job
from tests.jobstack import _csv
from tests.servers import ApiServer, WorkerProcess, free_port, tabserve_env, wait_until


@pytest.fixture
def fault_settings(base_settings, redis_server, redis_client, tmp_path):
    # Own Redis database and queue, so the session worker takes none of these jobs.
    return base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/3", queue_name="faults",
        job_lease_seconds=3, chunk_rows=2000, data_dir=str(tmp_path / "data"),
        worker_threads=1,  # the sequential, one-core path
    )


@pytest.fixture
def big_csv(demo_data) -> tuple[bytes, int]:
    n = 300_000
    return _csv(demo_data, n), n


def _servers(settings, tmp_path, workers: int):
    env = tabserve_env(settings.as_env())
    api = ApiServer(env, tmp_path, workers=1)
    procs = [WorkerProcess(env, tmp_path, f"w{i}") for i in range(workers)]
    return api, procs


def test_sigkilled_worker_job_finishes_on_another_with_each_row_once(fault_settings, big_csv,
                                                                    tmp_path):
    data, n = big_csv
    api, (first,) = _servers(fault_settings, tmp_path, 1)
    second = None
    try:
        job = submit(api.url, data, "csv", id_column="key").json()
        wait_until(lambda: requests.get(f"{api.url}/jobs/{job['id']}", timeout=5).json()
                   ["progress"]["rows_done"] > 0, 60, "the job to make progress")
        first.kill()  # SIGKILL to the worker and its pool child
        first.proc.wait(timeout=10)
        mid = requests.get(f"{api.url}/jobs/{job['id']}", timeout=5).json()
        assert mid["status"] == "running" and 0 < mid["progress"]["rows_done"] < n
        second = WorkerProcess(tabserve_env(fault_settings.as_env()), tmp_path, "second")
        done = wait_job(api.url, job["id"], timeout=120)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2
        result, _ = read_result(api.url, job["id"])
        assert len(result) == n
        assert result["key"].tolist() == list(range(n))  # each row exactly once, in order
    finally:
        for proc in (first, second, api):
            if proc is not None:
                proc.stop()


def test_job_longer_than_its_lease_runs_once(fault_settings, big_csv, tmp_path):
    data, n = big_csv
    settings = fault_settings.with_overrides(chunk_rows=500, job_lease_seconds=1)
    api, workers = _servers(settings, tmp_path, 2)
    try:
        job = submit(api.url, data, "csv").json()
        done = wait_job(api.url, job["id"], timeout=240)
        started = pd.Timestamp(done["started_at"])
        seconds = (pd.Timestamp(done["finished_at"]) - started).total_seconds()
        assert done["status"] == "succeeded", done
        assert seconds > 2 * settings.job_lease_seconds, seconds  # long enough to tell
        assert done["attempts"] == 1  # its renewed lease kept the reaper away
    finally:
        for proc in (*workers, api):
            proc.stop()


def test_redis_down_jobs_503_predict_still_works(base_settings, demo_rows, tmp_path):
    dead = base_settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    api = ApiServer(tabserve_env(dead.as_env()), tmp_path, workers=1)
    try:
        r = requests.post(api.url + "/predict", json={"features": demo_rows[0]}, timeout=10)
        assert r.status_code == 200
        for method, path in [("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/jobs/x"),
                             ("DELETE", "/jobs/x")]:
            r = requests.request(method, api.url + path, data=io.BytesIO(b"a,b\n1,2\n"),
                                 headers={"Content-Type": "text/csv"}, timeout=20)
            assert r.status_code == 503, (method, path, r.text)
            assert r.json()["error"]["code"] == "queue_unavailable"
            assert "Redis" in r.json()["error"]["message"]
        ready = requests.get(api.url + "/readyz", timeout=10).json()
        assert ready["ready"] is True and ready["checks"]["redis"]["status"] == "unavailable"
    finally:
        api.stop()
