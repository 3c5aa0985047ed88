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
    assert jobs.start("b", 2, "w1") == "stale"  # not the next attempt
    assert jobs.start("b", 1, "w1") == "running"
    assert jobs.start("b", 1, "w2") == "stale"  # a duplicate never starts it twice
    assert jobs.start("b", 2, "w2") == "stale"  # a running job is not taken over by a message
    redis_client.delete(keys.job_lease("b"))  # its worker died: the reaper sends attempt 2
    assert jobs.requeue("b", 1, 3, "worker lost", JobError("worker_lost", "x")) == "queued"
    assert jobs.get("b").public()["retry"]["attempt"] == 2
    assert jobs.start("b", 2, "w2") == "running"
    assert jobs.progress("b", 1, rows_done=5) == "stale"
    assert jobs.finish("b", "succeeded", 1) == "stale"
    assert jobs.progress("b", 2, rows_done=5) == "running"
    assert jobs.finish("b", "succeeded", 2) == "succeeded"
    assert jobs.finish("b", "failed", 2) == "succeeded"  # final is final
    assert jobs.counts().queued == jobs.counts().running == 0
    assert 0 < redis_client.ttl(keys.job("b")) <= 60
    assert jobs.get("b").public()["attempts"] == 2
    assert jobs.get("b").status is JobStatus.SUCCEEDED


def test_the_reaper_takes_only_an_attempt_whose_lease_is_gone(redis_client):
    jobs = JobStore(redis_client, ttl_seconds=60)
    jobs.create(_job("r"))
    lost = JobError("worker_lost", "lost")
    assert jobs.start("r", 1, "w1", lease_seconds=30) == "running"
    assert redis_client.get(keys.job_lease("r")) == b"1"
    assert jobs.requeue("r", 1, 3, "worker lost", lost) == "running"  # lease alive
    assert jobs.renew_lease(keys.job_lease("r"), 1, 30)
    assert not jobs.renew_lease(keys.job_lease("r"), 2, 30)  # not attempt 2's
    assert jobs.live_running() == 1 and jobs.counts().running == 1
    redis_client.delete(keys.job_lease("r"))
    assert jobs.live_running() == 0  # its worker is gone: not counted as running
    assert jobs.requeue("r", 2, 3, "worker lost", lost) == "stale"  # not the current attempt
    assert jobs.requeue("r", 1, 3, "worker lost", lost) == "queued"
    assert jobs.requeue("r", 1, 3, "worker lost", lost) == "stale"  # once
    assert jobs.retrying() == 1
    for attempt in (2, 3):
        assert jobs.start("r", attempt, "w") == "running"
        redis_client.delete(keys.job_lease("r"))
        expected = "queued" if attempt < 3 else "failed"
        assert jobs.requeue("r", attempt, 3, "worker lost", lost) == expected
    job = jobs.get("r")
    assert job.status is JobStatus.FAILED and job.error == lost and job.attempt == 3
    assert jobs.retrying() == 0 and jobs.counts().queued == 0


def test_a_part_runs_once_per_attempt_and_a_done_part_is_a_duplicate(redis_client):
    jobs = JobStore(redis_client, ttl_seconds=60)
    jobs.create(_job("p"))
    jobs.start("p", 1, "w")
    jobs.set_parts("p", [{"start": 0, "end": 10, "first_row": 0}] * 2)
    assert jobs.part_start("p", 0, 1) == ("running", 1)
    assert jobs.part_start("p", 0, 1)[0] == "stale"  # the same message twice
    assert jobs.part_start("p", 0, None)[0] == "stale"  # running: never taken over
    assert jobs.part_requeue("p", 0, 1, 3) == "running"  # its lease lives
    redis_client.delete(keys.part_lease("p", 0))
    assert [s.leased for s in jobs.part_states("p", 2)] == [False, False]
    assert jobs.part_requeue("p", 0, 1, 3) == "queued"
    assert jobs.part_start("p", 0, 1)[0] == "stale"  # the lost attempt's message, late
    assert jobs.part_start("p", 0, 2) == ("running", 2)
    assert jobs.part_progress("p", 0, 1, 5, 5, 0) == "stale"
    assert jobs.part_done("p", 0, 2, {"rows": 1}) == 1
    assert jobs.part_start("p", 0, 3)[0] == "duplicate"  # done: nothing runs, nothing deleted
    assert jobs.part_done("p", 0, 2, {"rows": 1}) == "stale"
    assert jobs.part_start("p", 1, None) == ("running", 1)  # a message without an attempt


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
    settings = base_settings.with_overrides(visibility_timeout_seconds=120,
                                            job_time_limit_max_seconds=7200)
    conf = make_celery(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    # The reaper finds lost attempts; the broker never re-delivers a job that may still run.
    assert conf.broker_transport_options["visibility_timeout"] > 7200
    assert conf.broker_connection_retry_on_startup is True
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"


def _messages(client, queue: str) -> list[list]:
    """The args of every Celery message waiting in a queue (kombu's JSON envelope)."""
    import base64

    out = []
    for raw in client.lrange(queue, 0, -1):
        body = orjson.loads(raw)["body"]
        out.append(orjson.loads(base64.b64decode(body))[0])
    return out


def test_the_reaper_sends_lost_attempts_on_and_times_jobs_out(base_settings, redis_server,
                                                              tmp_path):
    import redis

    from shared.jobs.reaper import Reaper
    from shared.services import Services

    settings = base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/5", queue_name="reaper",
        job_lease_seconds=1, data_dir=str(tmp_path))
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    rt = Services(settings)
    jobs, reaper = rt.jobs, Reaper(rt, "me")
    for job_id in ("lost", "slow", "late", "waiting"):
        jobs.create(_job(job_id))
    for job_id in ("lost", "slow", "late"):
        assert jobs.start(job_id, 1, "w", lease_seconds=60) == "running"
    client.delete(keys.job_lease("lost"))
    client.hset(keys.job("late"), "deadline_at", time.time() - 1)
    reaper.tick()
    assert _messages(client, "reaper") == [["lost", 2]]
    assert jobs.get("lost").status is JobStatus.QUEUED
    assert jobs.get("lost").public()["retry"]["reason"] == "worker lost"
    assert jobs.get("slow").status is JobStatus.RUNNING  # its lease lives
    late = jobs.get("late")
    assert late.status is JobStatus.FAILED and late.error.code == "timeout"
    assert jobs.retrying() == 1
    # Another worker's reaper waits for the lock.
    assert not jobs.hold_lock(keys.reaper_lock(), "other", 1)
    # A queued job whose message is long gone while the broker's queue is short: sent again.
    client.delete("reaper")
    client.hset(keys.job("waiting"), "sent_at", time.time() - 3600)
    reaper.tick()
    assert sorted(_messages(client, "reaper")) == [["waiting", 1]]
    # Redis restarted (a new run id): every queued job's message is sent again.
    client.delete("reaper")
    client.set(keys.reaper_redis_run_id(), "an earlier server")
    reaper.tick()
    assert sorted(_messages(client, "reaper")) == [["lost", 2], ["waiting", 1]]
    client.close()


def test_a_restore_cut_short_is_finished_by_the_next_pass(base_settings, redis_server, tmp_path):
    """Redis came back empty and the reaper's first pass failed halfway (its broker
    connection refused): the next pass restores the rest and sends every job's message."""
    import redis

    from shared.jobs.reaper import Reaper
    from shared.services import Services
    from tests.servers import free_port

    settings = base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/5", queue_name="reaper",
        job_lease_seconds=1, data_dir=str(tmp_path))
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    rt = Services(settings)
    for job_id in ("a", "b"):
        rt.jobs.create(_job(job_id))  # each with its record's copy in storage
    client.flushdb()  # Redis lost everything
    rt.__dict__["celery"] = make_celery(
        settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    reaper = Reaper(rt, "me")
    try:
        reaper.tick()
    except Exception as exc:  # noqa: BLE001 - the broker refused: the pass stops
        assert "refused" in str(exc).lower() or "connect" in str(exc).lower()
    else:
        raise AssertionError("a pass whose broker is unreachable cannot finish")
    assert client.get(keys.reaper_redis_run_id()) is None  # not noted: the next pass redoes it
    assert len(rt.jobs.missing(["a", "b"])) == 1  # one restored before the send failed
    del rt.__dict__["celery"]  # the broker is back
    client.delete(keys.reaper_lock())
    reaper.tick()
    assert sorted(_messages(client, "reaper")) == [["a", 2], ["b", 2]]
    assert {rt.jobs.get(i).status for i in ("a", "b")} == {JobStatus.QUEUED}
    assert client.get(keys.reaper_redis_run_id()) is not None
    reaper.tick()  # nothing more to do
    assert len(_messages(client, "reaper")) == 2
    client.close()
