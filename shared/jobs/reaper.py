"""The reaper: finds attempts that will not finish and sends their jobs on.

A thread in every worker's main process, every third of `job_lease_seconds`, under a Redis
lock so that one runs at a time across the cluster:

- a running job (or part of a split job) whose lease (shared.jobs.lease) has expired goes
  back to queued, saying why, and its next attempt's message is sent; past
  `job_max_attempts` the job fails with `worker_lost` instead, so an input that kills its
  worker every time does not loop;
- a job past its time limit fails with `timeout` (never retried); its running attempt sees
  the final status at its next chunk and stops;
- records Redis lost are put back from their copies in storage (shared.jobs.mirror) when
  Redis restarted or came back empty, and at the first pass;
- messages the broker lost are sent again: every queued job's (and every waiting part's)
  when Redis restarted (its run id changed), and a queued job's whose last send is old when
  the broker's queue holds fewer messages than there are queued jobs.

Every change is compare-and-set on the attempt number (shared.jobs.scripts), so a message
sent twice starts one attempt, and an attempt that was only slow cannot be taken over while
its lease lives.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from shared import keys
from shared.errors import TabserveError
from shared.jobs import paths
from shared.jobs.coordinator import time_limit
from shared.jobs.mirror import restore_lost
from shared.jobs.queue import send_score_job, send_score_part
from shared.jobs.record import TIMEOUT, WORKER_LOST, Job, JobError, JobStatus, now
from shared.monitoring.metrics import JOBS_REQUEUED, JOBS_WAITING_RETRY, record_job_finished

if TYPE_CHECKING:
    from shared.services import Services

logger = logging.getLogger(__name__)

LOST = "worker lost"
RESEND_AFTER_LEASES = 10  # a queued job's message is presumed lost after this many leases
RESEND_MIN_SECONDS = 60


class Reaper:
    """One worker's reaper; `run` loops until `stop` is set."""

    def __init__(self, rt: Services, owner: str) -> None:
        self.rt, self.owner = rt, owner
        self.lease = rt.settings.job_lease_seconds

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.lease / 3):
            try:
                self.tick()
            except Exception as exc:  # Redis away (restarting): try again next time
                logger.warning("reaper: %s: %s", type(exc).__name__, exc)

    def tick(self) -> None:
        """One pass, if this worker holds the lock."""
        jobs = self.rt.jobs
        if not jobs.hold_lock(keys.reaper_lock(), self.owner, self.lease):
            return
        restarted, run_id = jobs.redis_restarted()
        if restarted is not False:  # restarted, came back empty, or this is the first pass
            restored = restore_lost(self.rt)
            if restored:
                logger.warning("reaper: %d job records restored from storage", restored)
        if restarted:
            logger.warning("reaper: Redis restarted: sending every waiting job again")
            self._resend_all()
        if restarted is not False:
            jobs.note_redis_run(run_id)  # not before: a pass cut short is done again
        for job_id in jobs.ids_with_status(JobStatus.RUNNING):
            try:
                self._check_running(jobs.get(job_id))
            except TabserveError:
                continue  # expired or deleted since listed
        self._resend_lost()
        JOBS_WAITING_RETRY.labels(self.rt.settings.queue_name).set(jobs.retrying())

    def _check_running(self, job: Job) -> None:
        if job.deadline_at is not None and now() > job.deadline_at:
            self._time_out(job)
        elif job.parts_dispatched:
            self._check_parts(job)
        else:
            self._requeue(job)

    def _requeue(self, job: Job) -> None:
        """Send a running job whose lease is gone to its next attempt (CAS: else nothing)."""
        cap = self.rt.settings.job_max_attempts
        error = JobError(WORKER_LOST, _lost_message(cap))
        answer = self.rt.jobs.requeue(job.id, job.attempt, cap, LOST, error)
        if answer is JobStatus.QUEUED:
            logger.warning("job %s: attempt %d lost its worker; sending attempt %d", job.id,
                           job.attempt, job.attempt + 1)
            JOBS_REQUEUED.labels("job", "worker_lost").inc()
            self._send_job(job.id, job.attempt + 1)
        elif answer is JobStatus.FAILED:
            logger.error("job %s: failed: %s", job.id, error.message)
            record_job_finished(job.model_name, job.model_version, JobStatus.FAILED)
            self.rt.storage.delete_prefix(paths.parts_dir(job.id))

    def _check_parts(self, job: Job) -> None:
        """Send each part whose running attempt lost its lease to its next attempt."""
        jobs, cap = self.rt.jobs, self.rt.settings.job_max_attempts
        for part in jobs.part_states(job.id, job.parts_total):
            if not part.running or part.done or part.leased:
                continue
            answer = jobs.part_requeue(job.id, part.index, part.attempt, cap)
            if answer is JobStatus.QUEUED:
                logger.warning("job %s part %d: attempt %d lost its worker; sending attempt %d",
                               job.id, part.index, part.attempt, part.attempt + 1)
                JOBS_REQUEUED.labels("part", "worker_lost").inc()
                send_score_part(self.rt.celery, self.rt.settings, job.id, part.index,
                                part.attempt + 1)
            elif answer is JobStatus.FAILED:
                self._fail(job, JobError(WORKER_LOST, _lost_message(cap)))
                return

    def _time_out(self, job: Job) -> None:
        limit = time_limit(job, self.rt.settings)
        self._fail(job, JobError(TIMEOUT, f"the job ran longer than its time limit of "
                                          f"{limit} s; it is not retried"))

    def _fail(self, job: Job, error: JobError) -> None:
        if self.rt.jobs.fail(job.id, error) is JobStatus.FAILED:
            logger.error("job %s: failed: %s", job.id, error.message,
                         extra={"error_code": error.code})
            record_job_finished(job.model_name, job.model_version, JobStatus.FAILED)
            self.rt.storage.delete_prefix(paths.parts_dir(job.id))

    def _send_job(self, job_id: str, attempt: int) -> None:
        send_score_job(self.rt.celery, self.rt.settings, job_id, attempt)
        self.rt.jobs.mark_sent(job_id)

    def _resend_all(self) -> None:
        """After a Redis restart: the broker may have lost any waiting message."""
        jobs = self.rt.jobs
        for job_id in jobs.ids_with_status(JobStatus.QUEUED):
            self._resend(job_id, "redis_restart")
        for job_id in jobs.ids_with_status(JobStatus.RUNNING):
            try:
                job = jobs.get(job_id)
            except TabserveError:
                continue
            if not job.parts_dispatched:
                continue
            for part in jobs.part_states(job_id, job.parts_total):
                if not part.running and not part.done:
                    JOBS_REQUEUED.labels("part", "redis_restart").inc()
                    send_score_part(self.rt.celery, self.rt.settings, job_id, part.index,
                                    part.attempt + 1)

    def _resend(self, job_id: str, reason: str) -> None:
        try:
            job = self.rt.jobs.get(job_id)
        except TabserveError:
            return
        if job.status is JobStatus.QUEUED:
            JOBS_REQUEUED.labels("job", reason).inc()
            self._send_job(job_id, job.attempt + 1)

    def _resend_lost(self) -> None:
        """Queued jobs whose message has been out for long while the broker's queue holds
        fewer messages than there are queued jobs: some message was lost; send again."""
        jobs, settings = self.rt.jobs, self.rt.settings
        queued = jobs.ids_with_status(JobStatus.QUEUED)
        if not queued or self.rt.redis.llen(settings.queue_name) >= len(queued):
            return
        old = now() - max(RESEND_MIN_SECONDS, RESEND_AFTER_LEASES * self.lease)
        for job_id in queued:
            try:
                job = jobs.get(job_id)
            except TabserveError:
                continue
            sent = job.created_at if job.sent_at is None else job.sent_at
            if sent < old:
                logger.warning("job %s: queued since %.0f s without starting; sending again",
                               job_id, now() - max(sent, job.created_at))
                self._resend(job_id, "message_lost")


def _lost_message(cap: int) -> str:
    return (f"the worker running this job stopped (killed, out of memory, or frozen) in each "
            f"of its {cap} attempts; it is not retried again")
