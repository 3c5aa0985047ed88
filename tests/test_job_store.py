"""Job records and retention against a real redis-server; the Celery delivery settings."""

from __future__ import annotations

import os
import time

import orjson

from shared import keys
from shared.jobs.queue import make_celery
from shared.jobs.record import JobError, JobStatus, new_job
from shared.jobs.retention import purge_expired
from shared.jobs.store import JobStore
from shared.storage import LocalStorage


def _job(job_id: str):
    return new_job(job_id, {"name": "m", "version": 1}, {}, {"key": f"jobs/{job_id}/input.csv"},
                   None, 0)


def test_transitions_are_guarded(redis_client):
    jobs = JobStore(redis_client, ttl_seconds=60)
    jobs.create(_job("a"))
    assert jobs.finish("a", "cancelled") == "cancelled"
    assert jobs.start("a", 1, "w1") == "cancelled"  # a cancelled queued job never runs
    jobs.create(_job("b"))
    assert jobs.start("b", 1, "w1") == "running"
    assert jobs.start("b", 2, "w2") == "running"  # re-delivery supersedes attempt 1
    assert jobs.progress("b", 1, rows_done=5) == "stale"
    assert jobs.finish("b", "succeeded", 1) == "stale"
    assert jobs.progress("b", 2, rows_done=5) == "running"
    assert jobs.finish("b", "succeeded", 2) == "succeeded"
    assert jobs.finish("b", "failed", 2) == "succeeded"  # final is final
    assert jobs.counts().queued == jobs.counts().running == 0
    assert 0 < redis_client.ttl(keys.job("b")) <= 60
    assert jobs.get("b").public()["attempts"] == 2
    assert jobs.get("b").status is JobStatus.SUCCEEDED


def test_a_record_reads_back_as_written(redis_client):
    jobs = JobStore(redis_client, ttl_seconds=60)
    job = jobs.create(_job("c"))
    assert jobs.get("c") == job
    jobs.start("c", 1, "w1")
    error = JobError("invalid_row", "row 3, column 'x': not a number", row=3, field="x")
    assert jobs.fail("c", error, 1) is JobStatus.FAILED
    assert jobs.get("c").error == error
    assert jobs.get("c").public()["error"] == {"code": "invalid_row", "row": 3, "field": "x",
                                               "message": "row 3, column 'x': not a number"}


def test_records_written_before_the_one_error_shape_still_read(redis_client):
    jobs = JobStore(redis_client, ttl_seconds=60)
    jobs.create(_job("old"))
    legacy = {"code": "invalid_row", "message": "bad", "row": 4, "column": "y"}
    redis_client.hset(keys.job("old"), mapping={"status": "failed",
                                               "error": orjson.dumps(legacy),
                                               "a_field_from_elsewhere": "1"})
    assert jobs.get("old").error == JobError("invalid_row", "bad", 4, "y")


def test_queue_counts(redis_client):
    jobs = JobStore(redis_client, ttl_seconds=60)
    for name in "xyz":
        jobs.create(_job(name))
    jobs.start("x", 1, "w")
    jobs.worker_heartbeat("w1@host", 2)
    jobs.worker_heartbeat("w2@host", 1)
    assert jobs.counts() == (2, 1, 3)
    jobs.worker_gone("w1@host")
    assert jobs.counts().workers == 1


def test_files_of_expired_jobs_are_removed(redis_client, tmp_path):
    jobs = JobStore(redis_client, ttl_seconds=60)
    storage = LocalStorage(tmp_path)
    for job_id in ("expired", "live", "fresh"):
        with storage.writer(f"jobs/{job_id}/input.csv") as fh:
            fh.write(b"a\n1\n")
    jobs.create(_job("live"))
    old = time.time() - 2 * 3600
    for job_id in ("expired", "live"):
        os.utime(storage.path(f"jobs/{job_id}"), (old, old))
    assert purge_expired(jobs, storage) == 1
    assert not storage.path("jobs/expired").exists()
    assert storage.exists("jobs/live/input.csv") and storage.exists("jobs/fresh/input.csv")
    assert purge_expired(jobs, storage) == 0  # rate-limited across workers


def test_celery_is_configured_not_to_lose_jobs(base_settings):
    conf = make_celery(base_settings.with_overrides(visibility_timeout_seconds=120)).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 120
    assert conf.broker_connection_retry_on_startup is True
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
