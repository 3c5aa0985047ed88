"""A job's record survives a Redis that lost it: its copy in storage (shared.jobs.mirror)
answers meanwhile, and the reaper puts it back, finished jobs as they ended and live ones
queued again. Real redis-server, gunicorn and Celery worker; a ledger of rows for each job.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests

from shared import keys
from shared.jobs import paths
from shared.jobs.mirror import RecordMirror, restore_lost
from shared.jobs.record import JobStatus
from shared.jobs.retention import purge_expired
from shared.jobs.store import JobStore
from shared.services import Services
from tests.jobclient import read_result, submit, wait_job
from tests.jobstack import LEASE, Stack, _csv, _ledger
from tests.servers import RedisServer


# A job scored whole and one split into parts, each with 20 queued jobs behind it.
@pytest.mark.parametrize("split", [False, True], ids=["whole", "parts"])
def test_every_job_comes_back_after_redis_restarts_empty(base_settings, demo_data, tmp_path,
                                                         split):
    server = RedisServer(tmp_path / "redis")
    settings = base_settings.with_overrides(
        redis_url=server.url, queue_name="empty", job_lease_seconds=LEASE, chunk_rows=2000,
        part_rows=30_000 if split else 0, worker_threads=1, data_dir=str(tmp_path / "data"))
    s = Stack(settings, tmp_path)
    try:
        s.worker("w1", concurrency=2)
        n_big, n_small = 300_000 if split else 90_000, 300  # parts run side by side: longer
        small = _csv(demo_data, n_small)
        done = submit(s.api.url, small, "csv", id_column="key").json()
        assert wait_job(s.api.url, done["id"])["status"] == "succeeded"
        big = submit(s.api.url, _csv(demo_data, n_big), "csv", id_column="key").json()
        s.wait_rows(big["id"])
        queued = [submit(s.api.url, small, "csv", id_column="key").json()["id"]
                  for _ in range(20)]
        assert s.record(big["id"]).status is JobStatus.RUNNING
        server.kill()
        server.proc.wait(timeout=30)
        s.procs.append(server.restarted())  # same port, nothing kept
        ids = [done["id"], big["id"], *queued]

        s.wait_succeeded(ids, 120, "every job's record to come back and succeed")
        _ledger(s.api.url, big["id"], n_big)
        for job_id in [done["id"], *queued]:
            _ledger(s.api.url, job_id, n_small)
        assert s.record(done["id"]).attempt == 1  # finished before: restored as it ended
        assert s.record(big["id"]).retry["reason"] == "redis_lost"
        assert s.jobs.r.ttl(keys.job(done["id"])) > 0
        listed = requests.get(f"{s.api.url}/jobs?limit=100", timeout=10).json()["jobs"]
        assert {j["id"] for j in listed} == set(ids)
        assert s.logged("record restored from storage") >= 2
        assert s.logged("Unrecoverable error") == 0  # the worker reconnected (test_broker.py)
    finally:
        s.stop()
        server.stop()


def test_a_lost_record_answers_from_its_copy_and_is_put_back(api_server, worker,
                                                             redis_client, base_settings,
                                                             demo_data):
    job = submit(api_server.url, _csv(demo_data, 300), "csv", id_column="key").json()
    assert wait_job(api_server.url, job["id"])["status"] == "succeeded"
    before = requests.get(f"{api_server.url}/jobs/{job['id']}", timeout=10).json()
    redis_client.delete(keys.job(job["id"]))  # as a write Redis never made durable
    redis_client.zrem(keys.jobs_index(), job["id"])

    # Meanwhile the copy answers: the record, and the result.
    answer = requests.get(f"{api_server.url}/jobs/{job['id']}", timeout=10)
    assert answer.status_code == 200 and answer.json() == before
    assert read_result(api_server.url, job["id"])[0]["key"].tolist() == list(range(300))

    # The retention sweep keeps the files of a job whose record is only lost.
    rt = Services(base_settings)
    job_dir = Path(base_settings.data_dir) / paths.job_dir(job["id"])
    old = time.time() - 7200
    os.utime(job_dir, (old, old))
    redis_client.delete(keys.retention_lock())
    purge_expired(rt.jobs, rt.storage, every_seconds=1)
    assert (job_dir / "job.json").is_file() and (job_dir / "result.csv").is_file()

    # The reaper's restore puts it back as it ended, expiring with the rest of its TTL.
    assert restore_lost(rt) == 1
    assert requests.get(f"{api_server.url}/jobs/{job['id']}", timeout=10).json() == before
    assert 0 < redis_client.ttl(keys.job(job["id"])) <= base_settings.job_ttl_seconds
    assert restore_lost(rt) == 0  # once

    # A deleted job is gone for good: files and copy first, then the record, and the
    # predictions it kept for feedback.
    assert redis_client.exists(keys.job_predictions(job["id"]))
    assert requests.delete(f"{api_server.url}/jobs/{job['id']}", timeout=10).status_code == 204
    assert not redis_client.exists(keys.job_predictions(job["id"]))
    assert not job_dir.exists()
    assert requests.get(f"{api_server.url}/jobs/{job['id']}", timeout=10).status_code == 404
    assert RecordMirror(rt.storage).load(job["id"]) is None


def test_a_copy_is_written_at_every_change_of_status(redis_client, base_settings, tmp_path):
    settings = base_settings.with_overrides(data_dir=str(tmp_path / "data"))
    rt = Services(settings)
    jobs, mirror = rt.jobs, RecordMirror(rt.storage)
    assert isinstance(jobs, JobStore) and jobs.mirror is not None
    from shared.jobs.record import new_job

    job = new_job("0b6c6bd4-5a43-4e33-a0b5-7bdc0f2d9d2e", {"name": "m", "version": 1}, {},
                  {"key": "k", "format": "csv", "size_bytes": 1}, 10, 1)
    jobs.create(job)
    assert mirror.load(job.id) == job
    assert jobs.start(job.id, 1, "w") is JobStatus.RUNNING
    assert mirror.load(job.id).status is JobStatus.RUNNING
    assert mirror.load(job.id).attempt == 1
    assert jobs.finish(job.id, JobStatus.SUCCEEDED, 1, rows_done=10) is JobStatus.SUCCEEDED
    copy = mirror.load(job.id)
    assert copy.status is JobStatus.SUCCEEDED and copy.rows_done == 10 and copy.finished_at


def test_a_callback_delivery_updates_the_copy(redis_client, base_settings, tmp_path):
    settings = base_settings.with_overrides(data_dir=str(tmp_path / "data"))
    rt = Services(settings)
    jobs, mirror = rt.jobs, RecordMirror(rt.storage)
    from shared.jobs.record import new_job

    job = new_job("5d0f6b2e-8a9c-4d3e-9f1a-2b7c6e4d8a10", {"name": "m", "version": 1},
                  {"callback_url": "http://127.0.0.1:9/hook"},
                  {"key": "k", "format": "csv", "size_bytes": 1}, 10, 1)
    jobs.create(job)
    assert jobs.claim_callback(job.id, {"state": "pending", "attempts": 0})
    delivered = {"state": "delivered", "attempts": 2, "last_status": 200,
                 "delivered_at": "2026-12-02T09:00:00Z"}
    jobs.set_callback(job.id, delivered)
    assert mirror.load(job.id).callback == delivered
    # A job deleted meanwhile (files, then record) gets no copy back from a late delivery.
    rt.storage.delete_prefix(paths.job_dir(job.id))
    jobs.delete(job.id)
    assert mirror.load(job.id) is None
    jobs.set_callback(job.id, {**delivered, "attempts": 3})
    assert mirror.load(job.id) is None


def test_a_result_gone_from_storage_is_a_410_not_a_500(api_server, worker, redis_client,
                                                      base_settings, demo_data):
    job = submit(api_server.url, _csv(demo_data, 300), "csv", id_column="key").json()
    assert wait_job(api_server.url, job["id"])["status"] == "succeeded"
    (Path(base_settings.data_dir) / paths.result(job["id"], "csv")).unlink()
    r = requests.get(f"{api_server.url}/jobs/{job['id']}/result", timeout=10)
    assert r.status_code == 410, r.text
    assert r.json()["error"]["code"] == "result_gone"
    assert base_settings.data_dir not in r.text  # no path in the message
