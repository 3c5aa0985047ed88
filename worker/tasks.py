"""Celery tasks, named by the constants in shared.jobs.queue: thin adapters over shared/.

Each message names the attempt it is for; messages sent before attempts were numbered have
none and are taken for the next attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shared.jobs.callbacks import DELIVER_CALLBACK, deliver
from shared.jobs.coordinator import run_job
from shared.jobs.parts import run_part
from shared.jobs.queue import SCORE_JOB, SCORE_PART
from shared.jobs.retention import purge_expired
from shared.logs import log_context
from shared.services import Services
from shared.storage import is_local
from worker.app import celery_app, runtime

logger = logging.getLogger(__name__)


@contextmanager
def _logged(**context: Any) -> Iterator[Services]:
    """Tag the logs while the work runs (its lease is kept by shared.jobs.lease)."""
    token = log_context.set(context)
    try:
        yield runtime()
    finally:
        log_context.reset(token)


@celery_app.task(name=SCORE_JOB, bind=True)
def score_job(self: Any, job_id: str, attempt: int | None = None) -> str:
    """Score one batch job (or cut it into parts); its outcome is in the job record."""
    with _logged(job_id=job_id) as rt:
        outcome = run_job(rt, job_id, self.request.hostname, attempt)
        if not is_local(rt.settings):  # a local data directory: worker.app's sweeper thread
            try:
                purge_expired(rt.jobs, rt.storage, rt.settings.sweep_interval_seconds,
                              rt.settings.failed_job_grace_seconds)
            except Exception:  # retention is best effort; the job is done
                logger.exception("retention sweep failed")
    return outcome.status.value


@celery_app.task(name=SCORE_PART, bind=True)
def score_part(self: Any, job_id: str, index: int, attempt: int | None = None) -> str:
    """Score one part of a job spread over the workers."""
    with _logged(job_id=job_id, part=index) as rt:
        outcome = run_part(rt, job_id, index, self.request.hostname, attempt)
    return outcome.status.value


@celery_app.task(name=DELIVER_CALLBACK, bind=True)
def deliver_callback(self: Any, job_id: str, attempt: int = 1) -> None:
    """POST a finished job's signed record to its callback_url; on failure, the next attempt
    after a backoff (shared.jobs.callbacks)."""
    with _logged(job_id=job_id) as rt:
        wait = deliver(rt, job_id, attempt)
        if wait is not None:
            self.apply_async(args=[job_id, attempt + 1], countdown=wait,
                             queue=rt.settings.queue_name)
