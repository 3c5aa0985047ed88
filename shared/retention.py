"""Removing files of jobs whose records expired (TABSERVE_JOB_TTL_SECONDS)."""

from __future__ import annotations

import logging
import time

from shared.jobs import PREFIX, JobStore
from shared.storage import LocalStorage

logger = logging.getLogger(__name__)

SWEEP_LOCK = PREFIX + "retention:lock"
GRACE_SECONDS = 3600  # a job directory is created just before its record


def purge_expired(jobs: JobStore, storage: LocalStorage, every_seconds: int = 600) -> int:
    """Delete job directories with no record; at most once per every_seconds cluster-wide."""
    if not jobs.r.set(SWEEP_LOCK, "1", nx=True, ex=every_seconds):
        return 0
    removed = 0
    cutoff = time.time() - GRACE_SECONDS
    for prefix in storage.list_prefixes("jobs"):
        job_id = prefix.rsplit("/", 1)[-1]
        if storage.path(prefix).stat().st_mtime > cutoff or jobs.r.exists(f"{PREFIX}job:{job_id}"):
            continue
        storage.delete_prefix(prefix)
        removed += 1
    for prefix in ("staging",):
        base = storage.path(prefix)
        for stale in base.glob("*.part") if base.is_dir() else []:
            if stale.stat().st_mtime < cutoff:
                stale.unlink(missing_ok=True)
    if removed:
        logger.info("retention: removed files of %d expired jobs", removed)
    return removed
