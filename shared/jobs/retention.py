"""Removing files of jobs whose records expired (TABSERVE_JOB_TTL_SECONDS)."""

from __future__ import annotations

import logging
import time

from shared import keys
from shared.jobs import paths
from shared.jobs.mirror import RecordMirror, expired
from shared.jobs.store import JobStore
from shared.storage import Storage

logger = logging.getLogger(__name__)

GRACE_SECONDS = 3600  # a job's files are stored just before its record is created


def purge_expired(jobs: JobStore, storage: Storage, every_seconds: int = 600) -> int:
    """Delete the files of jobs with no record; at most once per every_seconds cluster-wide."""
    if not jobs.r.set(keys.retention_lock(), "1", nx=True, ex=every_seconds):
        return 0
    removed = 0
    cutoff = time.time() - GRACE_SECONDS
    mirror = RecordMirror(storage)
    for prefix in storage.list_prefixes(paths.ROOT):
        # The record first: it is one Redis call, the age may be a listing of a bucket.
        job_id = paths.job_id_of(prefix)
        if jobs.exists(job_id) or storage.last_modified(prefix) > cutoff:
            continue
        copy = mirror.load(job_id)  # a record Redis lost is put back, not its files removed
        if copy is not None and not expired(copy, jobs.ttl):
            continue
        storage.delete_prefix(prefix)
        removed += 1
    storage.purge_staging(cutoff)
    if removed:
        logger.info("retention: removed files of %d expired jobs", removed)
    return removed
