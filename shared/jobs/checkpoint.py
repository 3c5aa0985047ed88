"""Checkpoints: where an attempt stood after its last chunk written to disk, so that the next
attempt (after the reaper re-queued a dead one) continues from there instead of row 0.

After each chunk whose output (and errors) is flushed and fsynced, the attempt records, in
the same compare-and-set progress write as its counts, how far it got: the rows done, the
input position (the byte offset of the next CSV record), the bytes of its files written, and
the keys of those files (the storage writer's temporary `.part` files). The next attempt
copies those first bytes into its own temporary files (whatever the dead attempt wrote past
them, a half-written chunk, is left behind), reads the input from the position on (Parquet:
from the row group holding the next row, skipping the rows of it already done) and
appends. Copying rather than reopening the dead attempt's file fences it off: a zombie
attempt still holding that file open writes only into its own, and its progress writes fail
on the attempt number. When one fails so (the job was sent on), the attempt stops and keeps
its temporary files (`JobStopped.keep_partial`): the next attempt may not have copied them
yet. The leftovers sweep removes them once no checkpoint names them.

A Parquet output cannot be appended to (its footer comes last, and nothing before it can
be read without one), so it is written in segments (shared.jobs.segments): a segment is
closed, a complete file in the store, at a chunk's end once it holds TABSERVE_SEGMENT_BYTES,
and only then a checkpoint is recorded, naming the closed ones (`segments`); the next
attempt adopts them and writes its own after them, and the range's end joins them by their
bytes. Closed segments need no partial file, so a Parquet output resumes on S3 as well, but
only without an errors file (on_error=skip appends to one).

Resumed: CSV or Parquet input; CSV and JSON lines outputs on local storage; Parquet output on
local storage, and on S3 without an errors file. CSV and JSON lines outputs on S3 start over.
An S3 multipart upload could be continued by another process (its UploadId and the parts
ListParts returns live until it is completed or aborted), but not through s3fs's S3File as
used here: (1) it uploads a part whenever its buffer reaches the block size, mid-chunk, so
the bytes in completed parts seldom end where a chunk does, and a checkpoint needs both: the
part uploads must be taken out of s3fs's hands (one part of at least 5 MiB, flushed by us at
a chunk's end); (2) it numbers parts `len(parts) + 1`, so a zombie attempt and the attempt
that adopted its upload send the same part numbers, the later overwriting the earlier, and
the zombie's `discard()` aborts the upload under both: fencing needs a range of part numbers
per attempt and a completion naming the adopted parts by ETag; (3) an upload whose attempts
all died is no file, so the leftovers sweep cannot see it without ListMultipartUploads (or
a bucket lifecycle rule). That is a writer of our own over boto calls, not a setting.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from shared.monitoring.metrics import JOB_ROWS_RESCORED, JOB_ROWS_RESUMED
from shared.storage import Storage

logger = logging.getLogger(__name__)

RESUMABLE_OUTPUTS = ("csv", "jsonl")  # appended to, on an appendable store
SEGMENTED_OUTPUT = "parquet"  # written in segments


@dataclass(frozen=True)
class Checkpoint:
    """How far an attempt (at a job, or at one part) got: `rows` of its range done (of which
    `rows_failed` skipped), a CSV input read up to byte `position` (a Parquet input resumes
    by rows), and the first `*_bytes` bytes of its files (`output`, `errors`: storage keys)
    complete."""

    attempt: int
    rows: int
    rows_failed: int
    position: int
    output: str
    output_bytes: int
    errors: str | None = None
    errors_bytes: int = 0
    drift: list[list[int]] | None = None
    segments: list[str] | None = None

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_raw(cls, raw: Any) -> Checkpoint | None:
        """A checkpoint from its record field (a dict, JSON text or bytes); None if absent or
        unreadable (an older shape: the attempt starts over)."""
        if raw in (None, b"", ""):
            return None
        try:
            values = raw if isinstance(raw, dict) else orjson.loads(raw)
            return cls(**values)
        except (TypeError, ValueError) as exc:
            logger.warning("checkpoint not readable, starting over: %s", exc)
            return None

    def files(self) -> set[str]:
        """The keys of the files the checkpoint names (kept by the leftovers sweep)."""
        return ({self.output} if self.output else set()) | set(self.segments or ()) | \
            ({self.errors} if self.errors else set())


def can_checkpoint(storage: Storage, input_format: str, output_format: str,
                   skip: bool = False) -> bool:
    """Whether an attempt at such a job records checkpoints (and so can be resumed)."""
    if input_format not in ("csv", "parquet"):
        return False
    if output_format == SEGMENTED_OUTPUT:  # segments are whole files: any store
        return storage.appendable or not skip
    return storage.appendable and output_format in RESUMABLE_OUTPUTS


def writes_segments(checkpoints: bool, output_format: str) -> bool:
    """Whether an attempt writes its output in segments (shared.jobs.segments)."""
    return checkpoints and output_format == SEGMENTED_OUTPUT


def usable(checkpoint: Checkpoint | None, storage: Storage, skip: bool) -> Checkpoint | None:
    """The checkpoint when its files are still there, at least as long as it says."""
    if checkpoint is None or checkpoint.rows <= 0:
        return None
    try:
        if checkpoint.segments is not None:
            if not all(storage.exists(key) for key in checkpoint.segments):
                return None
        elif storage.size(checkpoint.output) < checkpoint.output_bytes:
            return None
        if skip and (checkpoint.errors is None
                     or storage.size(checkpoint.errors) < checkpoint.errors_bytes):
            return None
    except (FileNotFoundError, ValueError):
        return None
    return checkpoint


def note_attempt(job_id: str, index: int | None, attempt: int, previous_rows: int,
                 resume: Checkpoint | None) -> None:
    """Log and count, for a re-delivered attempt, the rows it takes over and those it scores
    again (`previous_rows`: what the attempt before it had reported)."""
    if attempt <= 1:
        return
    kind, what = ("job", f"job {job_id}") if index is None else \
        ("part", f"job {job_id} part {index}")
    resumed = resume.rows if resume is not None else 0
    rescored = max(previous_rows - resumed, 0)
    JOB_ROWS_RESUMED.labels(kind).inc(resumed)
    JOB_ROWS_RESCORED.labels(kind).inc(rescored)
    if resume is not None:
        logger.warning("%s: attempt %d resumes after row %d (the checkpoint of attempt %d); "
                       "%d rows scored again", what, attempt, resumed, resume.attempt, rescored)
    else:
        logger.warning("%s: attempt %d starts from the first row; %d rows scored again",
                       what, attempt, rescored)
