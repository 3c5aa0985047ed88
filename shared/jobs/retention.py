"""The storage sweep: what jobs' directories and the staging area hold that nothing needs.

At most once per TABSERVE_SWEEP_INTERVAL_SECONDS across the cluster (a lock in Redis), a
worker removes
- the files of jobs whose records expired (TABSERVE_JOB_TTL_SECONDS); a job whose record
  Redis lost keeps them while its record's copy (shared.jobs.mirror) has not expired, for
  the reaper to put the record back;
- a failed or cancelled job's files TABSERVE_FAILED_JOB_GRACE_SECONDS after it ended (its
  record, and its copy, stay, so GET /jobs/<id> still says why it failed);
- what dead attempts left: their temporary and finished files (shared.jobs.leftovers);
- staged uploads of requests that died before they cleaned up.
"""

from __future__ import annotations

import logging
import time

from shared import keys
from shared.errors import TabserveError
from shared.jobs import paths
from shared.jobs.leftovers import dead_files, failed_files_due
from shared.jobs.mirror import RecordMirror, expired
from shared.jobs.record import Job
from shared.jobs.store import JobStore
from shared.storage import Storage

logger = logging.getLogger(__name__)

GRACE_SECONDS = 3600  # a job's files are stored just before its record is created


def purge_expired(jobs: JobStore, storage: Storage, every_seconds: int = 600,
                  failed_grace_seconds: float = 3600) -> int:
    """Sweep the jobs' files, if no worker did in the last every_seconds; returns how many
    job directories and files it removed."""
    if not jobs.r.set(keys.retention_lock(), "1", nx=True, ex=every_seconds):
        return 0
    removed = gone = 0
    cutoff = time.time() - GRACE_SECONDS
    mirror = RecordMirror(storage)
    for prefix in storage.list_prefixes(paths.ROOT):
        job_id = paths.job_id_of(prefix)
        try:
            job = jobs.get(job_id)
        except TabserveError:  # no record: expired or deleted (or being created, or lost)
            if storage.last_modified(prefix) <= cutoff:
                copy = mirror.load(job_id)  # a record Redis lost is put back, not removed
                if copy is None or expired(copy, jobs.ttl):
                    storage.delete_prefix(prefix)
                    gone += 1
            continue
        removed += _sweep_job(jobs, storage, prefix, job, failed_grace_seconds)
    storage.purge_staging(cutoff)
    if gone or removed:
        logger.info("retention: removed the files of %d expired jobs and %d files nothing "
                    "needs", gone, removed)
    return gone + removed


def _sweep_job(jobs: JobStore, storage: Storage, prefix: str, job: Job, grace: float) -> int:
    now = time.time()
    if failed_files_due(job, now, grace):  # nothing writes there again
        files = storage.list_files(prefix)
        if paths.record(job.id) in files:  # the record's copy stays as long as the record
            files.remove(paths.record(job.id))
            for key in files:
                storage.delete(key)
        else:
            storage.delete_prefix(prefix)
        if files:
            logger.info("job %s: files removed, %s more than %d s ago", job.id, job.status,
                        grace)
        return len(files)
    files = storage.list_files(prefix)
    parts = jobs.part_attempts(job.id, job.parts_total) if job.parts_total else []
    dead = dead_files(job, files, parts, now, grace)
    for key in dead:
        storage.delete(key)
        logger.info("job %s: removed %s, left by an attempt that ended", job.id,
                    key.rsplit("/", 1)[-1])
    return len(dead)
