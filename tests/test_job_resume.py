"""A re-delivered job or part resumes from its last checkpoint instead of starting over.

Real processes (redis-server, gunicorn, Celery workers), as in tests/test_job_reliability.py:
an attempt is killed after some checkpoints, the next attempt takes the dead one's file up
to its checkpoint and scores only the rest; the result (and the errors file) holds every
input row exactly once, in order.
"""

from __future__ import annotations

import io
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import redis
import requests

from shared.jobs.checkpoint import Checkpoint
from tests.jobclient import file_bytes, read_result, submit, wait_job
from tests.servers import ApiServer, tabserve_env, wait_until
from tests.test_job_reliability import LEASE, Stack, _csv, _pool_children

N = 120_000


@pytest.fixture(scope="module")
def module_settings(base_settings, redis_server, tmp_path_factory):
    # Own Redis database and queue, so no other module's worker takes these jobs.
    return base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/12", queue_name="resume",
        job_lease_seconds=LEASE, chunk_rows=2000, part_rows=0, worker_threads=1,
        data_dir=str(tmp_path_factory.mktemp("resume") / "data"))


@pytest.fixture(scope="module")
def api(module_settings, tmp_path_factory):
    server = ApiServer(tabserve_env(module_settings.as_env()),
                       tmp_path_factory.mktemp("api"), workers=1)
    yield server
    server.stop()


@pytest.fixture
def stack(module_settings, api, tmp_path):
    client = redis.Redis.from_url(module_settings.redis_url)
    client.flushdb()
    client.close()
    shutil.rmtree(Path(module_settings.data_dir) / "jobs", ignore_errors=True)
    made: list[Stack] = []

    def make(**overrides) -> Stack:
        made.append(Stack(module_settings.with_overrides(**overrides), tmp_path, api))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def _ledger(api_url: str, job_id: str, expected: list[int]) -> None:
    result, _ = read_result(api_url, job_id)  # ids are text in JSON lines
    assert result["key"].astype(int).tolist() == expected  # each row once, in order


def _with_bad_rows(data: bytes, every: int) -> tuple[bytes, list[int]]:
    """The CSV with a non-number in the first feature of every `every`-th row."""
    frame = pd.read_csv(io.BytesIO(data))
    bad = list(range(every // 2, len(frame), every))
    column = frame.columns[1]
    frame[column] = frame[column].astype(object)
    frame.loc[bad, column] = "oops"
    return frame.to_csv(index=False).encode(), bad


def _checkpointed(s: Stack, job_id: str) -> None:
    wait_until(lambda: (Checkpoint.from_raw(s.record(job_id).checkpoint) or
                        Checkpoint(0, 0, 0, 0, "", 0)).rows >= 10_000, 60, "a checkpoint")


def _resumed(s: Stack, job_id: str, n: int, lost_at: float) -> int:
    """Waits for the job; checks it took the second attempt within lease + 30 s; the rows
    that attempt scored itself."""
    done = wait_job(s.api.url, job_id, timeout=LEASE + 30 + 30)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2 and done["retry"]["reason"] == "worker lost", done
    finished = pd.Timestamp(done["finished_at"]).timestamp()
    assert finished - lost_at < LEASE + 30, finished - lost_at
    resumed = s.record(job_id).rows_resumed
    assert resumed >= 10_000, resumed  # taken over from the first attempt's checkpoint
    assert s.logged(f"job {job_id}: attempt 2 resumes after row {resumed}") == 1
    return n - resumed


@pytest.mark.parametrize("on_error,fmt", [("fail", "csv"), ("skip", "csv"),
                                          ("fail", "parquet")])
def test_pool_child_sigkilled_mid_job_resumes_from_its_checkpoint(stack, demo_data, on_error,
                                                                  fmt):
    data, n = _csv(demo_data, N), N
    bad: list[int] = []
    if on_error == "skip":
        data, bad = _with_bad_rows(data, 997)
    if fmt == "parquet":  # row groups that chunks do not line up with: resumed mid-group
        data = file_bytes(pd.read_csv(io.BytesIO(data)), "parquet", row_group_size=7_000)
    # Parquet is read faster: smaller chunks, so that the kill comes mid-job.
    s = stack(chunk_rows=500 if fmt == "parquet" else 2000)
    worker = s.worker("w1")
    job = submit(s.api.url, data, fmt, id_column="key", on_error=on_error,
                 output_format="csv").json()
    _checkpointed(s, job["id"])
    for child in _pool_children(worker):
        child.kill()
    lost_at = time.time()
    scored_again = _resumed(s, job["id"], n, lost_at)
    assert 0 < scored_again < n
    _ledger(s.api.url, job["id"], sorted(set(range(n)) - set(bad)))
    if on_error == "fail":
        return
    errors = pd.read_csv(io.BytesIO(requests.get(
        f"{s.api.url}/jobs/{job['id']}/errors", timeout=60).content))
    assert errors["row"].tolist() == bad  # each bad row once, in order, one header


def test_whole_worker_sigkilled_mid_job_resumes_on_the_other(stack, demo_data):
    data, n = _csv(demo_data, N), N
    s = stack()
    workers = {w.name: w for w in s.workers("w1", "w2")}
    job = submit(s.api.url, data, "csv", id_column="key", output_format="jsonl").json()
    _checkpointed(s, job["id"])
    running = workers[s.record(job["id"]).worker.split("@")[0]]
    running.kill()
    lost_at = time.time()
    running.proc.wait(timeout=10)
    assert 0 < _resumed(s, job["id"], n, lost_at) < n
    _ledger(s.api.url, job["id"], list(range(n)))


def test_a_killed_part_resumes_from_its_checkpoint(stack, demo_data):
    n = 2 * N
    s = stack(part_rows=100_000)
    w1, _ = s.workers("w1", "w2")
    job_id = submit(s.api.url, _csv(demo_data, n), "csv", id_column="key").json()["id"]

    def w1_part() -> int:  # the part w1's pool process took last (from its log)
        found = re.findall(rf"\['{job_id}', (\d+), \d+\]", Path(w1.log_path).read_text())
        return int(found[-1])

    def checkpoint_rows(index: int) -> int:
        raw, _ = s.jobs.part_checkpoint(job_id, index)
        return raw["rows"] if raw else 0

    wait_until(lambda: checkpoint_rows(w1_part()) >= 10_000, 60, "w1's part's checkpoint")
    index = w1_part()
    assert not s.jobs.part_states(job_id, s.record(job_id).parts_total)[index].done
    for child in _pool_children(w1):
        child.kill()
    done = wait_job(s.api.url, job_id, timeout=LEASE + 60)
    assert done["status"] == "succeeded", done
    _ledger(s.api.url, job_id, list(range(n)))
    assert s.logged(f"job {job_id} part {index}: attempt 2 resumes after row ") == 1
    assert s.logged(": attempt 2 starts from the first row") == 0
