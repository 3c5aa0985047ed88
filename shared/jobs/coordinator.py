"""Running a job: scored whole, or cut into parts for many workers (shared.jobs.parts).

Each message is for one attempt. Only a queued job whose next attempt is the message's
starts; a running one is never taken over by a delivery, so a late or duplicate message is
acknowledged and dropped. A dead or frozen attempt is found by its lease (shared.jobs.lease)
and sent to its next attempt by the reaper (shared.jobs.reaper), which continues from the
dead attempt's last checkpoint (shared.jobs.checkpoint), or from the first row where there is
none; the superseded attempt stops at its next chunk.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from shared import keys
from shared.errors import TabserveError
from shared.jobs import paths
from shared.jobs.arrival import open_input
from shared.jobs.checkpoint import Checkpoint, can_checkpoint, note_attempt, usable
from shared.jobs.inputs import resumed_range, whole_range
from shared.jobs.lease import Lease
from shared.jobs.parts import split_job
from shared.jobs.record import Answer, Job, JobStatus, Outcome
from shared.jobs.run import (
    REDIS_LOST,
    JobOutcome,
    JobRun,
    JobStopped,
    RowsRejectedError,
    Scored,
    error_of,
    fail_job,
    score_range,
)
from shared.jobs.segments import delete_segments
from shared.monitoring.metrics import JOB_ATTEMPTS, record_job_finished

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.services import Services

logger = logging.getLogger(__name__)


def time_limit(job: Job, settings: Settings) -> int:
    """The job's time limit: its option, else the setting, never past the maximum."""
    asked = job.options.get("time_limit_seconds") or settings.job_time_limit_seconds
    return min(int(asked), settings.job_time_limit_max_seconds)


def run_job(rt: Services, job_id: str, worker: str, attempt: int | None = None) -> JobOutcome:
    """Run one attempt at a job (None: a message from before attempts were numbered, for
    the next one); every failure ends in the job's record, never raised."""
    jobs = rt.jobs
    try:
        job = jobs.get(job_id)
    except TabserveError:
        logger.warning("job %s: no record (expired or deleted); dropping", job_id)
        return JobOutcome(Outcome.MISSING)
    attempt = attempt or job.attempt + 1
    lease = rt.settings.job_lease_seconds
    state = jobs.start(job_id, attempt, worker, lease, time_limit(job, rt.settings))
    if state is not JobStatus.RUNNING:
        logger.info("job %s: message for attempt %d dropped (%s; the job was at attempt %d)",
                    job_id, attempt, state, job.attempt)
        return JobOutcome(state)
    JOB_ATTEMPTS.labels("job").inc()
    if attempt > 1:
        logger.warning("job %s: attempt %d (an earlier attempt was lost)", job_id, attempt)
    with Lease(jobs, keys.job_lease(job_id), attempt, lease):
        return _run(rt, job, attempt, worker)


def _run(rt: Services, job: Job, attempt: int, worker: str) -> JobOutcome:
    jobs, job_id = rt.jobs, job.id
    ref = f"{job.model_name}:{job.model_version}"
    logger.info("job %s: started on %s (model %s, attempt %d)", job_id, worker, ref, attempt,
                extra={"job_id": job_id, "model_version": ref})
    started = time.perf_counter()
    try:
        if split_job(rt, job):
            return JobOutcome(Outcome.SPLIT)
        rows = _score(rt, job, attempt)
    except JobStopped as stop:
        logger.info("job %s: stopped (%s)", job_id, stop)
        return JobOutcome(stop.answer)
    except REDIS_LOST as exc:
        logger.warning("job %s: attempt %d abandoned, Redis lost: %s", job_id, attempt, exc)
        return JobOutcome(Outcome.STALE)
    except Exception as exc:  # every failure ends in the job's record
        outcome = fail_job(jobs, job, attempt, error_of(exc, job_id))
        if outcome.status is JobStatus.FAILED:  # no attempt will adopt its segments now
            delete_segments(rt.storage, [key for key in rt.storage.list_files(
                paths.job_dir(job_id)) if paths.is_segment(key)])
        return outcome
    seconds = time.perf_counter() - started
    record_job_finished(job.model_name, job.model_version, JobStatus.SUCCEEDED, seconds, rows)
    logger.info("job %s: succeeded: %d rows in %.2f s (%.0f rows/s)", job_id, rows, seconds,
                rows / max(seconds, 1e-9), extra={"duration_s": round(seconds, 3), "rows": rows})
    return JobOutcome(JobStatus.SUCCEEDED, rows, seconds)


def _score(rt: Services, job: Job, attempt: int) -> int:
    """Score every chunk (from the last checkpoint on, when there is one), then publish the
    output and mark the job succeeded."""
    jobs, storage, job_id = rt.jobs, rt.storage, job.id

    def report(run: JobRun, scored: Scored, checkpoint: Checkpoint | None) -> Answer:
        return jobs.progress(job_id, attempt, rows_done=scored.rows_done,
                             rows_failed=scored.rows_failed, bytes_done=scored.bytes_done,
                             rows_resumed=run.rows_resumed,
                             checkpoint=None if checkpoint is None else asdict(checkpoint))

    run = JobRun(rt, job, report, attempt)
    run.checkpoints = can_checkpoint(job.input["format"], run.out_fmt)
    resume = usable(Checkpoint.from_raw(job.checkpoint), storage, run.out_fmt, run.skip) \
        if run.checkpoints else None
    part = None
    if resume is not None:
        run.adopt(resume)
        with open_input(storage, job, rt.settings) as fh:
            fmt = job.input["format"]
            part = resumed_range(fh, fmt, whole_range(fh, fmt), resume.rows, resume.position)
    else:
        rt.redis.delete(keys.job_predictions(job_id))  # a re-delivered job starts them afresh
    note_attempt(job_id, None, attempt, job.rows_done if attempt > 1 else 0, resume)
    rows = score_range(storage, job, run, part, run.output_key, run.errors_key)
    if run.rows_done == 0:
        raise RowsRejectedError("the file has no data rows")
    # Both files are in place now; only then does the job become "succeeded".
    output = {"format": run.out_fmt, "key": run.output_key, "rows": rows,
              "size_bytes": storage.size(run.output_key)}
    final = jobs.finish(job_id, JobStatus.SUCCEEDED, attempt, rows_total=run.rows_done,
                        rows_done=run.rows_done, rows_failed=run.rows_failed,
                        bytes_done=job.input["size_bytes"], output=output,
                        errors_key=run.errors_key if run.skip else None,
                        drift=run.drift.result())
    if final is not JobStatus.SUCCEEDED:  # this attempt's own files: no other's
        storage.delete(run.output_key)
        storage.delete(run.errors_key)
        raise JobStopped(final)
    # Only the attempt that finished the job deletes the segments (a later attempt may have
    # adopted them from a checkpoint while this one was thought dead).
    delete_segments(storage, run.segments)
    return run.rows_done
