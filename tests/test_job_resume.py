"""A re-delivered job or part resumes from its last checkpoint instead of starting over.

Real processes (redis-server, gunicorn, Celery workers), as in tests/test_job_reliability.py:
an attempt is killed after some checkpoints, the next attempt takes the dead one's file up
to its checkpoint and scores only the rest; the result (and the errors file) holds every
input row exactly once, in order.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from shared.jobs.checkpoint import Checkpoint
from tests.jobclient import file_bytes, read_result, submit, wait_job
from tests.jobstack import LEASE, Stack, _csv, _pool_children
from tests.servers import wait_until

N = 120_000
REDIS_DB, QUEUE = 12, "resume"  # the job_stack fixtures' own database and queue


def _ledger_of(api_url: str, job_id: str, expected: list[int]) -> None:
    result, _ = read_result(api_url, job_id)  # ids are text in JSON lines
    assert result["key"].astype(int).tolist() == expected  # each row once, in order


def _with_bad_rows(data: bytes, every: int) -> tuple[bytes, list[int]]:
    """The CSV with a non-number in the first feature of every `every`-th row (its bytes
    edited: what pandas writes for the frame with those cells changed, in a fraction of the
    time)."""
    lines = data.decode().split("\n")  # the header, a line per row, "" after the last
    bad = list(range(every // 2, len(lines) - 2, every))
    for row in bad:
        key, _, rest = lines[row + 1].split(",", 2)
        lines[row + 1] = f"{key},oops,{rest}"
    return "\n".join(lines).encode(), bad


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
def test_pool_child_sigkilled_mid_job_resumes_from_its_checkpoint(job_stack, demo_data, on_error,
                                                                  fmt):
    data, n = _csv(demo_data, N), N
    bad: list[int] = []
    if on_error == "skip":
        data, bad = _with_bad_rows(data, 997)
    if fmt == "parquet":  # row groups that chunks do not line up with: resumed mid-group
        data = file_bytes(pd.read_csv(io.BytesIO(data)), "parquet", row_group_size=7_000)
    # Parquet is read faster: smaller chunks, so that the kill comes mid-job.
    s = job_stack(chunk_rows=500 if fmt == "parquet" else 2000)
    worker = s.worker("w1")
    job = submit(s.api.url, data, fmt, id_column="key", on_error=on_error,
                 output_format="csv").json()
    _checkpointed(s, job["id"])
    for child in _pool_children(worker):
        child.kill()
    lost_at = time.time()
    scored_again = _resumed(s, job["id"], n, lost_at)
    assert 0 < scored_again < n
    _ledger_of(s.api.url, job["id"], sorted(set(range(n)) - set(bad)))
    if on_error == "fail":
        return
    errors = pd.read_csv(io.BytesIO(requests.get(
        f"{s.api.url}/jobs/{job['id']}/errors", timeout=60).content))
    assert errors["row"].tolist() == bad  # each bad row once, in order, one header


def test_whole_worker_sigkilled_mid_job_resumes_on_the_other(job_stack, demo_data):
    data, n = _csv(demo_data, N), N
    s = job_stack()
    workers = {w.name: w for w in s.workers("w1", "w2")}
    job = submit(s.api.url, data, "csv", id_column="key", output_format="jsonl").json()
    _checkpointed(s, job["id"])
    running = workers[s.record(job["id"]).worker.split("@")[0]]
    running.kill()
    lost_at = time.time()
    running.proc.wait(timeout=10)
    assert 0 < _resumed(s, job["id"], n, lost_at) < n
    _ledger_of(s.api.url, job["id"], list(range(n)))


def test_a_killed_part_resumes_from_its_checkpoint(job_stack, demo_data):
    n = 2 * N
    s = job_stack(part_rows=100_000)
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
    _ledger_of(s.api.url, job_id, list(range(n)))
    assert s.logged(f"job {job_id} part {index}: attempt 2 resumes after row ") == 1
    assert s.logged(": attempt 2 starts from the first row") == 0
