"""What a client may do with a job it submitted: see it (only its own, unless an admin),
download its files once it has succeeded, cancel it while it is live, or delete it once it is
final."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from shared.errors import JobNotFinishedError, JobNotFoundError
from shared.jobs import paths
from shared.jobs.mirror import RecordMirror, expired
from shared.jobs.record import LIVE, Job, JobStatus
from shared.monitoring.metrics import record_job_finished
from shared.security.roles import ANONYMOUS, Principal

if TYPE_CHECKING:
    from shared.services import Services


def visible_job(rt: Services, job_id: str, who: Principal) -> Job:
    """The job's record, if `who` may see it. Another key's job answers exactly as an unknown
    id does (JobStore.get's words; tests/test_auth.py compares the two bodies), so a key
    cannot learn which ids exist."""
    try:
        job = rt.jobs.get(job_id)
    except JobNotFoundError:
        # Redis may have lost it (restarted empty): its copy answers until the reaper puts
        # the record back (shared.jobs.mirror).
        copy = RecordMirror(rt.storage).load(job_id) if _is_job_id(job_id) else None
        if copy is None or expired(copy, rt.jobs.ttl):
            raise
        job = copy
    if not who.sees(job.owner):
        raise JobNotFoundError(f"no job {job_id!r} (unknown, or expired)")
    return job


def visible_jobs(rt: Services, who: Principal, limit: int,
                 status: JobStatus | None = None) -> list[Job]:
    """Recent jobs `who` may see: its own, or every job for an admin."""
    return rt.jobs.recent(limit=limit, status=status, owner=who.owner,
                          any_owner=who.sees_all_jobs)


def finished_file(job: Job, which: str) -> str | None:
    """The storage key of a succeeded job's result or errors file (None: a split result,
    served from its parts); 409 while the job is not succeeded or has no such file."""
    if job.status is not JobStatus.SUCCEEDED:
        reason = f"job {job.id} is {job.status}"
        if job.status in LIVE:
            reason += f"; poll GET /jobs/{job.id} until it has succeeded"
        raise JobNotFinishedError(reason)
    if which == "errors":
        if not job.errors_key:
            raise JobNotFinishedError(f"job {job.id} ran with on_error=fail: no errors file")
        return job.errors_key
    assert job.output is not None
    return job.output["key"]


def cancel_or_delete(rt: Services, job_id: str, who: Principal = ANONYMOUS) -> Job | None:
    """Cancel a live job (its record stays, cancelled), or forget a final one and its files
    (None); only a job `who` may see."""
    job = visible_job(rt, job_id, who)
    if job.status.final:
        rt.storage.delete_prefix(paths.job_dir(job_id))  # files (and the record's copy) first
        rt.jobs.delete(job_id)
        return None
    if rt.jobs.finish(job_id, JobStatus.CANCELLED) is JobStatus.CANCELLED:
        if not job.input.get("url"):  # an input_url file is not the job's to delete
            rt.storage.delete(job.input["key"])
        record_job_finished(job.model_name, job.model_version, JobStatus.CANCELLED)
    return rt.jobs.get(job_id)


def _is_job_id(text: str) -> bool:
    # Only an id of the shape new_job_id makes names a storage path.
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False
