"""Where a job's files live in storage (shared.storage), relative to the data directory."""

from __future__ import annotations

import re

ROOT = "jobs"
# A file an attempt writes: result / errors of the job, or a part's output / errors file
# (`00003.a2.csv`, `00003.a2.errors.csv`), with `.aN` after the first attempt, and the
# segments of a file written in segments (`result.a2.s00004.parquet`, `errors.s00001.csv`,
# `00003.a2.errors.s00000.csv`).
_WRITTEN = re.compile(r"^(?:result|errors|(?P<index>\d{5}))(?:\.a(?P<attempt>\d+))?"
                      r"(?:\.errors)?(?:\.s\d{5,})?\.[a-z]+$")


def job_dir(job_id: str) -> str:
    """Everything a job owns: its input (when uploaded), result, errors file and parts."""
    return f"{ROOT}/{job_id}"


def job_id_of(directory: str) -> str:
    """The job id of a directory listed under ROOT."""
    return directory.rsplit("/", 1)[-1]


def upload(job_id: str, fmt: str) -> str:
    return f"{ROOT}/{job_id}/input.{fmt}"


# Beside an upload the job scores while it arrives, until its last byte is written
# (shared.jobs.arrival).
ARRIVING = "input.arriving"


def _attempt(attempt: int) -> str:
    # Each attempt writes its own files, so a late attempt never touches another's; the
    # first keeps the names files had before attempts were numbered.
    return "" if attempt <= 1 else f".a{attempt}"


def result(job_id: str, fmt: str, attempt: int = 1) -> str:
    return f"{ROOT}/{job_id}/result{_attempt(attempt)}.{fmt}"


def errors(job_id: str, attempt: int = 1) -> str:
    return f"{ROOT}/{job_id}/errors{_attempt(attempt)}.csv"


def segment(output: str, number: int) -> str:
    """The key of segment `number` of a file written in segments (shared.jobs.segments,
    streams): the file's key with `.sNNNNN` before its extension."""
    head, dot, ext = output.rpartition(".")
    return f"{head}.s{number:05d}{dot}{ext}"


def is_segment(key: str) -> bool:
    """Whether key is a segment (complete, not a writer's temporary file)."""
    return re.search(r"\.s\d{5,}\.[a-z]+$", key) is not None and \
        attempt_of(key) is not None


def parts_dir(job_id: str) -> str:
    return f"{ROOT}/{job_id}/parts"


def part_result(job_id: str, index: int, fmt: str, attempt: int = 1) -> str:
    return f"{ROOT}/{job_id}/parts/{index:05d}{_attempt(attempt)}.{fmt}"


def part_errors(job_id: str, index: int, attempt: int = 1) -> str:
    return f"{ROOT}/{job_id}/parts/{index:05d}{_attempt(attempt)}.errors.csv"


def attempt_of(key: str) -> tuple[int | None, int] | None:
    """(part index or None for the job's own file, attempt) of a file an attempt writes;
    None for any other key (the input)."""
    segments = key.split("/")
    if segments[0] != ROOT or len(segments) not in (3, 4):
        return None
    if len(segments) == 4 and segments[2] != "parts":
        return None
    found = _WRITTEN.match(segments[-1])
    if found is None or (found["index"] is None) != (len(segments) == 3):
        return None
    index = None if found["index"] is None else int(found["index"])
    return index, int(found["attempt"] or 1)


def record(job_id: str) -> str:
    """The copy of the job's record (shared.jobs.mirror)."""
    return f"{ROOT}/{job_id}/job.json"
