"""Running a job: scored whole, or cut into parts for many workers (shared.jobs.parts).

A re-delivered job starts again from the first row with a new attempt number, and the
superseded attempt stops at its next chunk.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.errors import TabserveError
from shared.jobs.inputs import Chunk
from shared.jobs.parts import split_job
from shared.jobs.run import (
    JobOutcome,
    JobRun,
    JobStopped,
    RowsRejectedError,
    error_of,
    fail_job,
    score_range,
)
from shared.jobs.store import JobStore
from shared.monitoring.metrics import record_job_finished
from shared.monitoring.predictions import JOB_KEY
from shared.services import Runtime
from shared.storage import Storage

logger = logging.getLogger(__name__)


def run_job(rt: Runtime, jobs: JobStore, storage: Storage, job_id: str,
            worker: str) -> JobOutcome:
    """Score one job end to end; every failure ends in the job's record, never raised."""
    try:
        rec = jobs.get(job_id)
    except TabserveError:
        logger.warning("job %s: no record (expired or deleted); dropping", job_id)
        return JobOutcome("missing")
    if rec["status"] == "running" and rec.get("parts_dispatched"):
        logger.info("job %s: its parts are queued already", job_id)  # a re-delivered split
        return JobOutcome("split")
    attempt = rec.get("attempt", 0) + 1
    state = jobs.start(job_id, attempt, worker)
    if state != "running":
        logger.info("job %s: not started, status is %s", job_id, state)
        return JobOutcome(state)
    if attempt > 1:
        logger.warning("job %s: attempt %d (an earlier worker stopped mid-job)", job_id, attempt)
    model, version = rec["model"]["name"], str(rec["model"]["version"])
    logger.info("job %s: started on %s (model %s:%s, attempt %d)", job_id, worker, model,
                version, attempt, extra={"job_id": job_id, "model_version": f"{model}:{version}"})
    started = time.perf_counter()
    try:
        if split_job(rt, jobs, storage, rec):
            return JobOutcome("split")
        rows = _score(rt, jobs, storage, rec, attempt)
    except JobStopped as stop:
        logger.info("job %s: stopped (%s)", job_id, stop)
        return JobOutcome(str(stop))
    except Exception as exc:  # every failure ends in the job's record
        return fail_job(jobs, rec, attempt, error_of(exc, job_id),
                        time.perf_counter() - started)
    seconds = time.perf_counter() - started
    record_job_finished(model, version, "succeeded", seconds, rows)
    logger.info("job %s: succeeded: %d rows in %.2f s (%.0f rows/s)", job_id, rows, seconds,
                rows / max(seconds, 1e-9), extra={"duration_s": round(seconds, 3), "rows": rows})
    return JobOutcome("succeeded", rows, seconds)


def _score(rt: Runtime, jobs: JobStore, storage: Storage, rec: dict[str, Any],
           attempt: int) -> int:
    """Score every chunk, then publish the output and mark the job succeeded."""
    job_id = rec["id"]

    def report(run: JobRun, chunk: Chunk) -> str:
        return jobs.progress(job_id, attempt, rows_done=run.rows_done,
                             rows_failed=run.rows_failed, bytes_done=chunk.bytes_done)

    run = JobRun(rt, rec, report)
    rt.redis.delete(JOB_KEY + job_id)  # a re-delivered job starts its predictions afresh
    rows = score_range(storage, rec, run, None, run.output_key, run.errors_key)
    if run.rows_done == 0:
        raise RowsRejectedError("the file has no data rows")
    # Both files are in place now; only then does the job become "succeeded".
    output = {"format": run.out_fmt, "key": run.output_key, "rows": rows,
              "size_bytes": storage.size(run.output_key)}
    final = jobs.finish(job_id, "succeeded", attempt, rows_total=run.rows_done,
                        rows_done=run.rows_done, rows_failed=run.rows_failed,
                        bytes_done=rec["input"]["size_bytes"], output=output,
                        errors_key=run.errors_key if run.skip else None,
                        drift=run.drift.result())
    if final == "cancelled":
        storage.delete(run.output_key)
        storage.delete(run.errors_key)
    if final != "succeeded":
        raise JobStopped(final)
    return run.rows_done


