"""Which of a job's stored files nothing will read again: what dead attempts left, and a
failed job's input once its grace period is over.

Each attempt writes files named for it (shared.jobs.paths), through a temporary file renamed
when complete (shared.storage), so the record says which files are alive:
- a succeeded job needs its input, its result (or its parts) and its errors file;
- a failed or cancelled job needs only its input, and that only for
  TABSERVE_FAILED_JOB_GRACE_SECONDS after it ended, so it can be looked at;
- a live job needs the files of its running attempt (or of any later one): an earlier
  attempt's are dead, as are a part's earlier attempts' unless they are its result. A split
  job's own result and errors files are written by whichever part completes the set, so
  they are left alone while it runs. The files a checkpoint names (the job's or a part's,
  shared.jobs.checkpoint: temporary files, or the segments of its output and errors file)
  are kept too: the next attempt resumes from them. A segment no checkpoint names is judged
  by its attempt, as any attempt's file is.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.jobs import paths
from shared.jobs.checkpoint import Checkpoint
from shared.jobs.record import Job, JobStatus
from shared.jobs.store import PartAttempt
from shared.storage import written_key


def owned_input(job: Job) -> str | None:
    """The input's key when the job owns it (an input_url file is not the job's)."""
    return None if job.input.get("url") else job.input.get("key")


def failed_files_due(job: Job, now: float, grace: float) -> bool:
    """Whether a failed or cancelled job's grace period is over: all its files may go."""
    return job.status in (JobStatus.FAILED, JobStatus.CANCELLED) and \
        (job.finished_at or 0.0) + grace <= now


def dead_files(job: Job, files: Sequence[str], parts: Sequence[PartAttempt], now: float,
               grace: float) -> list[str]:
    """The keys among `files` (the job's stored files) that nothing will read again."""
    keep: set[str | None] = {paths.record(job.id)}  # the record's copy: as long as the record
    if failed_files_due(job, now, grace):
        return [f for f in files if f not in keep]
    keep.add(owned_input(job))
    if job.status is JobStatus.SUCCEEDED:
        output = job.output or {}
        keep |= {output.get("key"), *output.get("parts", []), job.errors_key}
        return [f for f in files if f not in keep]
    if job.status.final:  # failed or cancelled, within its grace period
        return [f for f in files if f not in keep]
    keep |= _checkpointed(job, parts)
    return [f for f in files if f not in keep and _dead_attempt(job, f, parts)]


def _checkpointed(job: Job, parts: Sequence[PartAttempt]) -> set[str | None]:
    """The files a live job's checkpoints name (its own, and its unfinished parts')."""
    found = [job.checkpoint] + [p.checkpoint for p in parts if p.done is None]
    return {key for raw in found if (c := Checkpoint.from_raw(raw)) for key in c.files()}


def _dead_attempt(job: Job, key: str, parts: Sequence[PartAttempt]) -> bool:
    target = written_key(key)
    owner = paths.attempt_of(target)
    if owner is None:
        return False  # not an attempt's file: not ours to judge
    index, attempt = owner
    if index is None:
        if job.parts_dispatched:
            return False
        return attempt < _first_live(job.attempt, job.status is JobStatus.RUNNING)
    if index >= len(parts):
        return False
    part = parts[index]
    if part.done is not None and "output" not in part.done:
        return False  # a result recorded before parts named their files: the first's
    done = part.done or {}
    if target in (done.get("output"), done.get("errors")):
        return False
    return attempt < _first_live(part.attempt, part.running)


def _first_live(attempt: int, running: bool) -> int:
    # The running attempt is alive; with none running, only a later one can be.
    return attempt if running else attempt + 1
