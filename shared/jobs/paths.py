"""Where a job's files live in storage (shared.storage), relative to the data directory."""

from __future__ import annotations

ROOT = "jobs"


def job_dir(job_id: str) -> str:
    """Everything a job owns: its input (when uploaded), result, errors file and parts."""
    return f"{ROOT}/{job_id}"


def job_id_of(directory: str) -> str:
    """The job id of a directory listed under ROOT."""
    return directory.rsplit("/", 1)[-1]


def upload(job_id: str, fmt: str) -> str:
    return f"{ROOT}/{job_id}/input.{fmt}"


def _attempt(attempt: int) -> str:
    # Each attempt writes its own files, so a late attempt never touches another's; the
    # first keeps the names files had before attempts were numbered.
    return "" if attempt <= 1 else f".a{attempt}"


def result(job_id: str, fmt: str, attempt: int = 1) -> str:
    return f"{ROOT}/{job_id}/result{_attempt(attempt)}.{fmt}"


def errors(job_id: str, attempt: int = 1) -> str:
    return f"{ROOT}/{job_id}/errors{_attempt(attempt)}.csv"


def parts_dir(job_id: str) -> str:
    return f"{ROOT}/{job_id}/parts"


def part_result(job_id: str, index: int, fmt: str, attempt: int = 1) -> str:
    return f"{ROOT}/{job_id}/parts/{index:05d}{_attempt(attempt)}.{fmt}"


def part_errors(job_id: str, index: int, attempt: int = 1) -> str:
    return f"{ROOT}/{job_id}/parts/{index:05d}{_attempt(attempt)}.errors.csv"


def record(job_id: str) -> str:
    """The copy of the job's record (shared.jobs.mirror)."""
    return f"{ROOT}/{job_id}/job.json"
