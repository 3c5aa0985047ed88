"""What a client may do with a job it submitted: download its files once it has succeeded,
cancel it while it is live, or delete it once it is final."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.errors import JobNotFinishedError
from shared.jobs import paths
from shared.jobs.record import LIVE, Job, JobStatus
from shared.monitoring.metrics import record_job_finished

if TYPE_CHECKING:
    from shared.services import Services


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


def cancel_or_delete(rt: Services, job_id: str) -> Job | None:
    """Cancel a live job (its record stays, cancelled), or forget a final one and its files
    (None)."""
    job = rt.jobs.get(job_id)
    if job.status.final:
        rt.jobs.delete(job_id)
        rt.storage.delete_prefix(paths.job_dir(job_id))
        return None
    if rt.jobs.finish(job_id, JobStatus.CANCELLED) is JobStatus.CANCELLED:
        if not job.input.get("url"):  # an input_url file is not the job's to delete
            rt.storage.delete(job.input["key"])
        record_job_finished(job.model_name, job.model_version, JobStatus.CANCELLED)
    return rt.jobs.get(job_id)
