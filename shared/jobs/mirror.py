"""A copy of every job's record in storage, beside the job's files, so that a Redis that
loses data loses no accepted job.

Redis holds the records, but it may forget some: restarted without persistence, or killed
(SIGKILL, out of memory, a host crash) within its append-only file's fsync window, which
with the default `appendfsync everysec` is up to two seconds of acknowledged writes. The job
store (shared.jobs.store) writes this copy before a job is accepted (the 202) and after each
change of status: an attempt's start, its end, a requeue. After Redis restarts, or when a
reaper first runs, `restore_lost` puts back every record Redis no longer has: a finished
job as it ended (its result downloadable for the rest of its TTL), a live one as queued,
its next attempt sent. That attempt's number is two past the last started attempt the copy
knows of, so it is above any attempt that may still run somewhere (a start whose copy was
not yet written is one past it); a superseded attempt finds its record changed and stops.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import orjson

from shared import keys
from shared.jobs import paths
from shared.jobs.queue import send_score_job
from shared.jobs.record import Job, JobStatus, decode, encode, job_fields, now
from shared.monitoring.metrics import JOB_RECORDS_RESTORED, JOBS_REQUEUED
from shared.storage import Storage

if TYPE_CHECKING:
    from shared.services import Services

logger = logging.getLogger(__name__)

REDIS_LOST = "redis_lost"


class RecordMirror:
    """Job records as JSON files in storage (shared.jobs.paths.record)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def save(self, job: Job) -> None:
        """Write the record's copy (replacing the last one whole)."""
        with self.storage.writer(paths.record(job.id)) as fh:
            fh.write(orjson.dumps(encode(job_fields(job))))

    def load(self, job_id: str) -> Job | None:
        """The record's copy; None when there is none or it cannot be read."""
        try:
            with self.storage.open(paths.record(job_id)) as fh:
                raw = orjson.loads(fh.read())
            return decode({k.encode(): str(v).encode() for k, v in raw.items()})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            logger.warning("job %s: its record's copy is unreadable: %s", job_id, exc)
            return None


def expired(job: Job, ttl_seconds: int, at: float | None = None) -> bool:
    """Whether a copied record is past its TTL (counted from its end, as Redis does)."""
    if not job.status.final:
        return False
    return (job.finished_at or job.created_at) + ttl_seconds <= (at or now())


def restore_lost(rt: Services) -> int:
    """Put back the record of every job whose files are stored and whose record Redis no
    longer has; returns how many were restored."""
    jobs, mirror = rt.jobs, RecordMirror(rt.storage)
    ids = [paths.job_id_of(p) for p in rt.storage.list_prefixes(paths.ROOT)]
    restored = 0
    for job_id in jobs.missing(ids):
        job = mirror.load(job_id)
        if job is None or expired(job, jobs.ttl):
            continue  # never accepted (no copy), or expired: retention removes the files
        if job.status.final:
            left = int((job.finished_at or job.created_at) + jobs.ttl - now())
            if jobs.restore(job, max(left, 1)):
                logger.warning("job %s: record restored from storage (%s)", job_id, job.status)
                JOB_RECORDS_RESTORED.labels("final").inc()
                restored += 1
            continue
        again = _requeued(job)
        rt.redis.delete(keys.job_parts(job_id))  # the lost attempt's parts start over
        rt.storage.delete_prefix(paths.parts_dir(job_id))
        if not jobs.restore(again, None):
            continue  # restored meanwhile by someone else
        try:
            mirror.save(again)
            send_score_job(rt.celery, rt.settings, job_id, again.attempt + 1)
        except Exception:
            jobs.mark_unsent(job_id)  # the reaper's next pass sends it (_resend_lost)
            raise
        JOB_RECORDS_RESTORED.labels("live").inc()
        JOBS_REQUEUED.labels("job", REDIS_LOST).inc()
        logger.warning("job %s: record restored from storage; Redis had lost it while the job "
                       "was %s: sending attempt %d", job_id, job.status, again.attempt + 1)
        restored += 1
    return restored


def _requeued(job: Job) -> Job:
    stamp = now()
    attempt = job.attempt + 1  # the message's is one more: two past the last known start
    return replace(job, status=JobStatus.QUEUED, attempt=attempt, rows_done=0, rows_failed=0,
                   bytes_done=0, started_at=None, heartbeat_at=None, worker=None,
                   parts_total=0, parts_done=0, parts_dispatched=False, sent_at=stamp,
                   retry={"reason": REDIS_LOST, "attempt": attempt + 1, "at": stamp})
