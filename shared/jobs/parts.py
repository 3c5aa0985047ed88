"""One large job spread over many workers: cut into parts that any worker can take.

The job's own message (the coordinator) cuts the input into parts (CSV byte ranges at line
ends, Parquet row groups) and queues one message per part. Each part is scored into its own
file, with its progress added to the job's; the part that completes the set marks the job
succeeded with the parts, in input order, as its result (CSV and JSONL parts are streamed one
after another on download; Parquet parts are rewritten into one file). A CSV part numbers
its rows after counting the lines of the parts before it (each part counts its own range;
a missing count is counted by whoever needs it).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from shared import keys
from shared.diskspace import is_disk_full
from shared.jobs import paths
from shared.jobs.arrival import follows_upload
from shared.jobs.checkpoint import Checkpoint, can_checkpoint, note_attempt, usable
from shared.jobs.csvrecords import count_csv_rows
from shared.jobs.inputs import Part, plan_parts, resumed_range
from shared.jobs.lease import Lease
from shared.jobs.queue import send_score_part
from shared.jobs.record import Answer, Job, JobError, JobStatus, Outcome
from shared.jobs.run import (
    REDIS_LOST,
    JobOutcome,
    JobRun,
    JobStopped,
    Scored,
    dialect_of,
    error_of,
    fail_job,
    score_range,
)
from shared.jobs.segments import delete_segments, join_parquet
from shared.jobs.store import JobStore
from shared.jobs.streams import join_bytes
from shared.monitoring.metrics import JOB_ATTEMPTS, record_job_finished
from shared.storage import Storage

if TYPE_CHECKING:
    from shared.services import Services

logger = logging.getLogger(__name__)

COUNT_WAIT_SECONDS = 3.0
# Outputs whose parts, laid end to end, are the result (CSV parts after the first have no
# header): the result is the list of parts, streamed in order, never copied into one file.
CONCATENATED = ("csv", "jsonl")


def split_job(rt: Services, job: Job) -> bool:
    """Queue the job as parts when it is large and more than one worker process is alive;
    False when it is scored in one piece."""
    jobs = rt.jobs
    if rt.settings.part_rows <= 0 or follows_upload(job) or jobs.counts().workers < 2:
        return False  # (a job scored as its upload arrives has no whole file to cut)
    with rt.storage.open(job.input["key"]) as fh:
        parts = plan_parts(fh, job.input["format"], rt.settings.part_rows,
                           dialect_of(job.input, rt.settings))
    if len(parts) < 2:
        return False
    job_id = job.id
    jobs.set_parts(job_id, [{"start": p.start, "end": p.end, "first_row": p.first_row}
                            for p in parts])
    rt.redis.delete(keys.job_predictions(job_id))
    for part in parts:
        send_score_part(rt.celery, rt.settings, job_id, part.index)
    jobs.parts_dispatched(job_id)
    logger.info("job %s: split into %d parts", job_id, len(parts))
    return True


def run_part(rt: Services, job_id: str, index: int, worker: str,
             attempt: int | None = None) -> JobOutcome:
    """Run one attempt at a part (None: its next); the part that completes the set
    assembles the result. A part already done, or running, is left alone."""
    jobs, lease = rt.jobs, rt.settings.job_lease_seconds
    checkpoint, previous_rows = jobs.part_checkpoint(job_id, index)  # before a start resets
    status, started = jobs.part_start(job_id, index, attempt, lease)
    if status is not JobStatus.RUNNING:
        logger.info("job %s part %d: message for attempt %s dropped (%s)", job_id, index,
                    attempt, status)
        return JobOutcome(status)
    JOB_ATTEMPTS.labels("part").inc()
    if started > 1:
        logger.warning("job %s part %d: attempt %d (an earlier attempt was lost)", job_id,
                       index, started)
    with Lease(jobs, keys.part_lease(job_id, index), started, lease):
        return _run_part(rt, job_id, index, started, worker,
                         (Checkpoint.from_raw(checkpoint), previous_rows))


def _run_part(rt: Services, job_id: str, index: int, attempt: int, worker: str,
              earlier: tuple[Checkpoint | None, int]) -> JobOutcome:
    jobs, storage = rt.jobs, rt.storage
    job = jobs.get(job_id)
    spec = jobs.part_spec(job_id, index)
    run = JobRun(rt, job, _PartProgress(jobs, job, index, attempt, spec["start"]), attempt)
    run.header = index == 0 or run.out_fmt not in CONCATENATED
    run.checkpoints = can_checkpoint(job.input["format"], run.out_fmt)
    resume = usable(earlier[0], storage, run.out_fmt, run.skip) if run.checkpoints else None
    part = Part(index, spec["start"], spec["end"], 0)
    if resume is not None:  # rows numbered within the part, shifted by its first row
        run.adopt(resume)
        with storage.open(job.input["key"]) as fh:
            part = resumed_range(fh, job.input["format"], part, resume.rows, resume.position)
    note_attempt(job_id, index, attempt, earlier[1], resume)
    output = paths.part_result(job_id, index, run.out_fmt, attempt)
    errors = paths.part_errors(job_id, index, attempt)
    try:
        first_row = _first_row(jobs, storage, job, index, spec)
        run.row_offset = first_row.result  # waited for at the first chunk, after its parse
        rows = score_range(storage, job, run, part, output, errors)
    except JobStopped as stop:
        return JobOutcome(stop.answer)
    except REDIS_LOST as exc:
        logger.warning("job %s part %d: attempt %d abandoned, Redis lost: %s", job_id, index,
                       attempt, exc)
        return JobOutcome(Outcome.STALE)
    except Exception as exc:  # every failure ends in the job's record
        return _fail(rt, job, error_of(exc, job_id))
    result = {"rows": rows, "rows_done": run.rows_done, "rows_failed": run.rows_failed,
              "drift": run.drift.counts.tolist(), "output": output, "errors": errors,
              "worker": worker}
    done = jobs.part_done(job_id, index, attempt, result)
    logger.info("job %s part %d: %d rows scored (%s)", job_id, index, run.rows_done, done)
    if not isinstance(done, int):  # this attempt's own files, named for it: no other's
        storage.delete(output)
        storage.delete(errors)
        return JobOutcome(done)
    delete_segments(storage, run.segments)  # joined into the part's output, now its result
    if done < job.parts_total:
        return JobOutcome(Outcome.PART_DONE, run.rows_done)
    try:
        return _assemble(rt, job, run)
    except Exception as exc:  # e.g. a full disk: the job fails rather than hangs
        if is_disk_full(exc):
            return _fail(rt, job, error_of(exc, job_id))
        logger.exception("job %s: could not join its parts", job_id)
        return _fail(rt, job, JobError("internal_error",
                                       f"joining the parts failed: {type(exc).__name__}"))


class _PartProgress:
    """Adds each chunk's rows and bytes to the job's progress, with the part's checkpoint
    (fenced by the attempt)."""

    def __init__(self, jobs: JobStore, job: Job, index: int, attempt: int,
                 offset: int) -> None:
        self.jobs, self.job, self.index, self.attempt = jobs, job, index, attempt
        self.offset = offset
        self.rows = self.failed = 0

    def __call__(self, run: JobRun, scored: Scored, checkpoint: Checkpoint | None) -> Answer:
        rows, failed = scored.rows_done - self.rows, scored.rows_failed - self.failed
        self.rows, self.failed = scored.rows_done, scored.rows_failed
        if self.job.input["format"] == "csv":
            nbytes, self.offset = scored.bytes_done - self.offset, scored.bytes_done
        else:  # Parquet: bytes in proportion to rows
            total_rows = max(self.job.rows_total or 1, 1)
            nbytes = int(self.job.input["size_bytes"] * rows / total_rows)
        return self.jobs.part_progress(self.job.id, self.index, self.attempt, rows, nbytes,
                                       failed, "" if checkpoint is None else
                                       checkpoint.to_json())


def _first_row(jobs: JobStore, storage: Storage, job: Job, index: int,
               spec: dict[str, int]) -> Future[int]:
    """The number of the part's first row, found in a thread while the part starts scoring.

    Parquet parts know it from the file's metadata. A CSV part adds up the counts of the
    parts before it, counting any that no part has posted within a few seconds itself, and
    counts its own lines for the parts after it (first, when it has to wait for others).
    """
    future: Future[int] = Future()
    if job.input["format"] == "parquet":
        future.set_result(spec["first_row"])
        return future

    def count() -> None:
        job_id = job.id
        with storage.open(job.input["key"]) as fh:

            def post_own() -> None:
                jobs.set_part_count(job_id, index, count_csv_rows(fh, spec["start"],
                                                                  spec["end"]))

            counts = jobs.part_counts(job_id, index)
            waits = None in counts
            if waits:
                # Own range first, so that parts started together do not count in a chain.
                post_own()
                counts = jobs.part_counts(job_id, index)
                deadline = time.monotonic() + COUNT_WAIT_SECONDS
                while None in counts and time.monotonic() < deadline:
                    time.sleep(0.02)
                    counts = jobs.part_counts(job_id, index)
                for j, known in enumerate(counts):
                    if known is None:  # that part has not started: count its lines here
                        other = jobs.part_spec(job_id, j)
                        counts[j] = count_csv_rows(fh, other["start"], other["end"])
                        jobs.set_part_count(job_id, j, counts[j] or 0)
            future.set_result(sum(c or 0 for c in counts))
            if not waits:  # the parts before were counted: own count for the parts after
                post_own()

    def run() -> None:
        try:
            count()
        except BaseException as exc:  # handed to the scoring thread
            if not future.done():
                future.set_exception(exc)
            else:  # the part's own count only helps the parts after it
                logger.warning("job %s part %d: row count not posted: %s", job.id, index, exc)

    threading.Thread(target=run, name="count-rows", daemon=True).start()
    return future


def _fail(rt: Services, job: Job, error: JobError) -> JobOutcome:
    outcome = fail_job(rt.jobs, job, None, error)
    if outcome.status is JobStatus.FAILED:
        rt.storage.delete_prefix(paths.parts_dir(job.id))
    return outcome


def _assemble(rt: Services, job: Job, run: JobRun) -> JobOutcome:
    """Join the parts' files in order into the result; the job succeeds once it is in place."""
    jobs, storage = rt.jobs, rt.storage
    job_id, total = job.id, job.parts_total
    results = jobs.part_results(job_id, total)
    fmt = run.out_fmt
    # Results written before parts named their files are where the first attempt's are.
    outputs = [r.get("output") or paths.part_result(job_id, i, fmt)
               for i, r in enumerate(results)]
    output: dict[str, Any] = {"format": fmt, "rows": sum(r["rows"] for r in results)}
    if fmt in CONCATENATED:  # the parts are the result: no second copy of every byte
        output.update(key=None, parts=outputs, size_bytes=sum(map(storage.size, outputs)))
    else:
        _join(storage, outputs, run.output_key, fmt)
        output.update(key=run.output_key, size_bytes=storage.size(run.output_key))
    if run.skip:
        errors = [r.get("errors") or paths.part_errors(job_id, i)
                  for i, r in enumerate(results)]
        _join(storage, errors, run.errors_key, "csv")
    for counts in results:
        run.drift.merge(counts["drift"])
    rows = sum(r["rows_done"] for r in results)
    final = jobs.finish(job_id, JobStatus.SUCCEEDED, None, rows_total=rows, rows_done=rows,
                        rows_failed=sum(r["rows_failed"] for r in results),
                        bytes_done=job.input["size_bytes"], output=output,
                        errors_key=run.errors_key if run.skip else None,
                        drift=run.drift.result())
    if final is not JobStatus.SUCCEEDED:
        storage.delete_prefix(paths.parts_dir(job_id))
        storage.delete(run.output_key)
        storage.delete(run.errors_key)
        return JobOutcome(final)
    if output["key"] is not None:
        storage.delete_prefix(paths.parts_dir(job_id))
    else:  # only the parts' errors files go
        for i, r in enumerate(results):
            storage.delete(r.get("errors") or paths.part_errors(job_id, i))
    seconds = time.time() - (job.started_at or time.time())
    record_job_finished(job.model_name, job.model_version, final, seconds, rows)
    logger.info("job %s: succeeded: %d rows in %d parts, %.2f s (%.0f rows/s)", job_id, rows,
                total, seconds, rows / max(seconds, 1e-9),
                extra={"duration_s": round(seconds, 3), "rows": rows})
    return JobOutcome(final, rows, seconds)


def _join(storage: Storage, sources: list[str], target: str, fmt: str) -> None:
    """Concatenate part files (CSV headers after the first dropped, shared.jobs.streams;
    Parquet files joined by their row groups' bytes, shared.jobs.segments)."""
    if fmt == "parquet":
        join_parquet(storage, sources, target)
    else:
        join_bytes(storage, sources, target, drop_headers=fmt == "csv")
