"""A full disk, and what dead attempts and processes leave, against real processes.

The data directory is a small tmpfs mounted for the module (the tests need root to mount
it; they are skipped, saying so, without): uploads that do not fit are a JSON 507 with
nothing staged left behind, a job whose output does not fit fails with
`insufficient_storage` leaving only its input, which the storage sweep removes after the
grace period, and the worker goes on with the next job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.jobclient import file_bytes, read_result, submit, wait_job
from tests.jobstack import _csv
from tests.servers import ApiServer, WorkerProcess, free_port, tabserve_env, wait_until

MiB = 1024 * 1024
DISK = 4 * MiB
RESERVE = 1 * MiB
GRACE = 5


def _mount_tmpfs(directory: Path, size: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs as the data directory needs root")
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A 4 MiB tmpfs, unmounted at the end."""
    directory = tmp_path_factory.mktemp("disk") / "data"
    _mount_tmpfs(directory, DISK)
    yield directory
    subprocess.run(["umount", "-l", str(directory)], check=False)


@pytest.fixture(scope="module")
def disk_settings(base_settings, redis_server, small_disk):
    # Own Redis database and queue, so the session's worker takes none of these jobs.
    return base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/8", queue_name="disk",
        data_dir=str(small_disk), min_free_bytes=RESERVE, failed_job_grace_seconds=GRACE,
        sweep_interval_seconds=1, job_lease_seconds=3, chunk_rows=2000, part_rows=0,
        worker_threads=1)


@pytest.fixture(scope="module")
def disk_api(disk_settings, tmp_path_factory):
    server = ApiServer(tabserve_env(disk_settings.as_env()), tmp_path_factory.mktemp("api"),
                       workers=1)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def disk_worker(disk_settings, disk_api, tmp_path_factory):
    proc = WorkerProcess(tabserve_env(disk_settings.as_env()), tmp_path_factory.mktemp("w"),
                         "disk")
    yield proc
    proc.stop()


def _frame(demo_data, n: int) -> pd.DataFrame:
    names, X = demo_data
    frame = pd.DataFrame(np.tile(X, (n // len(X) + 1, 1))[:n], columns=names)
    frame.insert(0, "key", np.arange(n))
    return frame


def _files(root: Path) -> list[str]:
    """The files under root but the copies of job records (job.json, shared.jobs.mirror:
    tests/test_record_mirror.py checks those), which live as long as their records."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != "job.json")


def _free(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def _assert_507(response: requests.Response, words: str) -> dict:
    assert response.status_code == 507, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "insufficient_storage" and words in error["message"], error
    assert "/" not in error["message"], error  # no path of the server's
    return error


def _pieces(data: bytes, size: int = 64 * 1024):
    # A generator body: requests sends it chunked, without a Content-Length.
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_an_upload_below_the_reserve_is_refused_before_it_is_staged(disk_api, small_disk,
                                                                    demo_data):
    data = _csv(demo_data, 15_000)  # ~3.2 MiB: fits, but not with 1 MiB kept free
    assert _free(small_disk) > len(data) > _free(small_disk) - RESERVE
    error = _assert_507(submit(disk_api.url, data, "csv"), "TABSERVE_MIN_FREE_BYTES")
    assert error["details"] == [{"field": "file",
                                 "message": "not enough disk space on the server"}]
    assert _files(small_disk) == []



def test_the_reserve_refuses_uploads_without_a_small_disk(base_settings, tmp_path, demo_data):
    # Needs no root: a reserve larger than any disk, on the ordinary one.
    settings = base_settings.with_overrides(data_dir=str(tmp_path / "data"),
                                            min_free_bytes=1 << 62)
    api = ApiServer(tabserve_env(settings.as_env()), tmp_path, workers=1)
    try:
        for multipart in (True, False):
            response = submit(api.url, _csv(demo_data, 300), "csv", multipart=multipart)
            _assert_507(response, "TABSERVE_MIN_FREE_BYTES")
    finally:
        api.stop()
    assert _files(tmp_path / "data") == []

@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "raw"])
def test_an_upload_that_fills_the_disk_while_staged_is_a_507_leaving_nothing(
        disk_api, small_disk, demo_data, multipart):
    data = _csv(demo_data, 25_000)  # ~5.4 MiB, sent without a Content-Length
    assert len(data) > _free(small_disk)
    headers = {"Content-Type": "text/csv"}
    body = data
    if multipart:
        boundary = "tabservedisktest"
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"big.csv\"\r\nContent-Type: text/csv\r\n\r\n").encode() + data + \
            f"\r\n--{boundary}--\r\n".encode()
    response = requests.post(disk_api.url + "/jobs", data=_pieces(body), headers=headers,
                             timeout=60)
    _assert_507(response, "ran out of disk space")
    assert _files(small_disk) == []
    assert _free(small_disk) > DISK - MiB // 4  # the partial staged file is gone
    # and the API still takes what fits
    ok = submit(disk_api.url, _csv(demo_data, 300), "csv")
    assert ok.status_code == 202, ok.text
    requests.delete(f"{disk_api.url}/jobs/{ok.json()['id']}", timeout=10)


def test_a_job_whose_output_fills_the_disk_fails_cleanly_and_the_worker_goes_on(
        disk_api, disk_worker, small_disk, demo_data):
    data = _csv(demo_data, 4000)  # ~0.9 MiB in; its JSON lines with the input, ~5 MiB out
    job = submit(disk_api.url, data, "csv", id_column="key", include_input="true",
                 output_format="jsonl").json()
    done = wait_job(disk_api.url, job["id"], timeout=60)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "insufficient_storage", done
    assert "ran out of disk space" in done["error"]["message"]
    assert "/" not in done["error"]["message"]
    job_dir = small_disk / "jobs" / job["id"]
    assert _files(job_dir) == ["input.csv"]  # no partial output, no temporary file
    result = requests.get(f"{disk_api.url}/jobs/{job['id']}/result", timeout=10)
    assert result.status_code == 409, result.text
    # The worker is healthy: the next job (that fits) succeeds.
    n = 300
    other = submit(disk_api.url, _csv(demo_data, n), "csv", id_column="key").json()
    assert wait_job(disk_api.url, other["id"], timeout=60)["status"] == "succeeded"
    frame, _ = read_result(disk_api.url, other["id"])
    assert frame["key"].tolist() == list(range(n))
    # The failed job's input goes after the grace period; its record (and the record's copy)
    # stays, and the succeeded job keeps its files.
    wait_until(lambda: _files(job_dir) == [], GRACE + 15, "the failed job's files to go",
               interval=0.2)
    assert (job_dir / "job.json").is_file()
    assert requests.get(f"{disk_api.url}/jobs/{job['id']}", timeout=10).json()["error"][
        "code"] == "insufficient_storage"
    assert _files(small_disk / "jobs" / other["id"]) == ["input.csv", "result.csv"]
    assert time.time() - pd.Timestamp(done["finished_at"]).timestamp() >= GRACE




def test_a_split_job_whose_parts_fill_the_disk_fails_cleanly(base_settings, redis_server,
                                                            tmp_path, demo_data):
    data_dir = tmp_path / "data"
    _mount_tmpfs(data_dir, DISK)
    settings = base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/10", queue_name="diskparts",
        data_dir=str(data_dir), min_free_bytes=RESERVE, sweep_interval_seconds=1,
        job_lease_seconds=3, chunk_rows=500, part_rows=1000, worker_threads=1)
    redis.Redis.from_url(settings.redis_url).flushdb()
    env = tabserve_env(settings.as_env())
    procs: list = []
    try:
        procs.append(api := ApiServer(env, tmp_path, workers=1))
        procs.append(WorkerProcess(env, tmp_path, "parts", concurrency=2))
        # Parquet row groups of 1000 rows are the parts (a CSV part is at least 1 MiB).
        data = file_bytes(_frame(demo_data, 4000), "parquet", row_group_size=1000)
        job = submit(api.url, data, "parquet", id_column="key", include_input="true",
                     output_format="jsonl").json()
        done = wait_job(api.url, job["id"], timeout=90)
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "insufficient_storage", done
        assert done["parts"]["total"] == 4, done
        job_dir = data_dir / "jobs" / job["id"]
        wait_until(lambda: _files(job_dir) == ["input.parquet"], 15,
                   "the parts still running to stop and leave nothing", interval=0.2)
        n = 300  # under part_rows: one piece
        other = submit(api.url, _csv(demo_data, n), "csv", id_column="key").json()
        assert wait_job(api.url, other["id"], timeout=60)["status"] == "succeeded"
        frame, _ = read_result(api.url, other["id"])
        assert frame["key"].tolist() == list(range(n))
    finally:
        for proc in reversed(procs):
            proc.stop()
        subprocess.run(["umount", "-l", str(data_dir)], check=False)

# --- what dead attempts and processes leave (on the ordinary disk) ---

@pytest.fixture
def sweep_env(base_settings, redis_server, tmp_path):
    """Settings for one API and worker of their own: a 1 s sweep, a worker exporter, and a
    temp directory of their own, where `tabserve` makes its metrics directories."""
    settings = base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/9", queue_name="sweep",
        data_dir=str(tmp_path / "data"), sweep_interval_seconds=1, job_lease_seconds=3,
        chunk_rows=2000, part_rows=0, worker_threads=1, worker_metrics_port=free_port())
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    client.close()
    temp = tmp_path / "tmp"
    temp.mkdir()
    procs: list = []
    yield settings, tabserve_env(settings.as_env(), {"TMPDIR": str(temp)}), temp, procs
    for proc in reversed(procs):
        proc.stop()


def test_a_killed_attempts_temporary_file_is_swept_once_the_job_goes_on(sweep_env, tmp_path,
                                                                        demo_data):
    settings, env, _, procs = sweep_env
    api = ApiServer(env, tmp_path, workers=1)
    procs.append(api)
    worker = WorkerProcess(env, tmp_path, "w1")
    procs.append(worker)
    n = 90_000
    job = submit(api.url, _csv(demo_data, n), "csv", id_column="key").json()
    job_dir = Path(settings.data_dir) / "jobs" / job["id"]
    wait_until(lambda: requests.get(f"{api.url}/jobs/{job['id']}", timeout=5).json()[
        "progress"]["rows_done"] > 0, 60, "the job to make progress")
    for child in psutil.Process(worker.pid).children():
        child.kill()  # the attempt dies mid-write: its temporary output stays
    orphans = [f for f in _files(job_dir) if f.startswith(".result.csv.")]
    assert len(orphans) == 1 and orphans[0].endswith(".part"), _files(job_dir)
    done = wait_job(api.url, job["id"], timeout=90)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    wait_until(lambda: _files(job_dir) == ["input.csv", "result.a2.csv"], 15,
               "the dead attempt's file to be swept", interval=0.2)
    frame, _ = read_result(api.url, job["id"])
    assert frame["key"].tolist() == list(range(n))


def _sample(url: str, name: str, **labels: str) -> float:
    text = requests.get(url, timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == name
               and labels.items() <= sample.labels.items())


def _rows_scored(port: int) -> float:
    return _sample(f"http://127.0.0.1:{port}/metrics", "tabserve_rows_predicted_total",
                   path="batch")


def test_dead_processes_metric_files_are_folded_without_losing_counts(sweep_env, tmp_path,
                                                                     demo_data):
    settings, env, temp, procs = sweep_env
    api = ApiServer(env, tmp_path, workers=1)
    procs.append(api)
    worker = WorkerProcess(env, tmp_path, "w1")
    procs.append(worker)
    port = settings.worker_metrics_port
    [metrics_dir] = [d for d in temp.glob("tabserve-metrics-worker-*")]
    n = 300
    first = submit(api.url, _csv(demo_data, n), "csv").json()
    assert wait_job(api.url, first["id"], timeout=60)["status"] == "succeeded"
    wait_until(lambda: _rows_scored(port) == n, 10, "the worker's rows counter")
    [child] = psutil.Process(worker.pid).children()
    assert list(metrics_dir.glob(f"counter_{child.pid}.db"))
    child.kill()
    wait_until(lambda: not list(metrics_dir.glob(f"*_{child.pid}.db")), 15,
               "the dead pool process's files to be folded", interval=0.2)
    assert (metrics_dir / "counter_archive.db").is_file()
    assert _rows_scored(port) == n  # its count is kept
    second = submit(api.url, _csv(demo_data, n), "csv").json()  # by the new pool process
    assert wait_job(api.url, second["id"], timeout=90)["status"] == "succeeded"
    wait_until(lambda: _rows_scored(port) == 2 * n, 10, "both jobs' rows")
    # A worker killed outright leaves its directory; the next server to start removes it.
    worker.kill()
    worker.proc.wait(timeout=10)
    assert metrics_dir.is_dir()
    procs.append(WorkerProcess(env, tmp_path, "w2"))
    assert not metrics_dir.exists()
    assert len(list(temp.glob("tabserve-metrics-worker-*"))) == 1  # the new worker's


def test_a_replaced_api_processes_metric_files_are_folded_by_the_master(sweep_env, tmp_path):
    _, env, temp, procs = sweep_env
    api = ApiServer(env, tmp_path, workers=1)
    procs.append(api)
    [metrics_dir] = [d for d in temp.glob("tabserve-metrics-api-*")]
    for _ in range(5):
        assert requests.get(api.url + "/version", timeout=5).ok

    def answered() -> float:
        return _sample(api.url + "/metrics", "tabserve_http_requests_total", route="/version",
                       status="200")

    assert answered() == 5
    [child] = psutil.Process(api.pid).children()
    assert list(metrics_dir.glob(f"counter_{child.pid}.db"))
    child.kill()  # gunicorn's master starts another and folds the dead one's files
    wait_until(lambda: not list(metrics_dir.glob(f"*_{child.pid}.db"))
               and requests.get(api.url + "/healthz", timeout=1).ok, 30,
               "a new API process and the old one's files folded", interval=0.2)
    assert (metrics_dir / "counter_archive.db").is_file()
    assert requests.get(api.url + "/version", timeout=5).ok
    assert answered() == 6  # the five of the dead process, and the new one's
