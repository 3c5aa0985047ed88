"""Checkpoints: where an attempt stood after its last chunk written to disk, so that the next
attempt (after the reaper re-queued a dead one) continues from there instead of row 0.

On a store that can append (local storage), after each chunk whose output (and errors) is
flushed and fsynced, the attempt records, in the same compare-and-set progress write as its
counts, how far it got: the rows done, the input position (the byte offset of the next CSV
record), the bytes of its files written, and the keys of those files (the storage writer's
temporary `.part` files). The next attempt
copies those first bytes into its own temporary files (whatever the dead attempt wrote past
them, a half-written chunk, is left behind), reads the input from the position on (Parquet:
from the row group holding the next row, skipping the rows of it already done) and
appends. Copying rather than reopening the dead attempt's file fences it off: a zombie
attempt still holding that file open writes only into its own, and its progress writes fail
on the attempt number. When one fails so (the job was sent on), the attempt stops and keeps
its temporary files (`JobStopped.keep_partial`): the next attempt may not have copied them
yet. The leftovers sweep removes them once no checkpoint names them.

A file in segments (a Parquet output on any store, shared.jobs.segments; a CSV or JSON lines
output and the errors file on a store that cannot append, S3, shared.jobs.streams) is a
list of segment objects, each complete once closed: at a chunk's end, once the open
segments hold TABSERVE_SEGMENT_BYTES, they are closed (the output's and the errors file's
together), and only then a checkpoint is recorded, naming the closed ones (`segments`,
`errors_segments`; `output` and `errors` are then empty); the next attempt adopts them and
writes its own after them, and the range's end joins them (Parquet by its row groups'
bytes, the byte streams end to end). A Parquet output cannot be appended to (its footer
comes last, and nothing before it can be read without one); an S3 object cannot be appended
to, nor read before it is complete.

Resumed: CSV or Parquet input, every output, on either store:
- local storage: CSV and JSON lines outputs and the errors file appended (a copied `.part`
  file), a Parquet output in segments;
- S3: every output and the errors file in segments.
An S3 multipart upload could be continued by another process (its UploadId and the parts
ListParts returns live until it is completed or aborted), but not through s3fs's S3File as
used here: (1) it uploads a part whenever its buffer reaches the block size, mid-chunk, so
the bytes in completed parts seldom end where a chunk does; (2) it numbers parts
`len(parts) + 1`, so a zombie attempt and the attempt that adopted its upload send the same
part numbers, and the zombie's `discard()` aborts the upload under both; (3) an upload whose
attempts all died is no file, so the leftovers sweep cannot see it without
ListMultipartUploads. Segments are plain objects named for their attempt: fenced (each
attempt writes its own), and swept like any attempt's file once no checkpoint names them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from shared.monitoring.metrics import JOB_ROWS_RESCORED, JOB_ROWS_RESUMED
from shared.storage import Storage

logger = logging.getLogger(__name__)

RESUMABLE_OUTPUTS = ("csv", "jsonl", "parquet")
APPENDED_OUTPUTS = ("csv", "jsonl")  # byte streams: appended to where the store can append
SEGMENTED_OUTPUT = "parquet"  # written in segments on any store


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
    errors_segments: list[str] | None = None

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
            ({self.errors} if self.errors else set()) | set(self.errors_segments or ())


def can_checkpoint(input_format: str, output_format: str) -> bool:
    """Whether an attempt at such a job records checkpoints (and so can be resumed)."""
    return input_format in ("csv", "parquet") and output_format in RESUMABLE_OUTPUTS


def writes_segments(storage: Storage, checkpoints: bool, output_format: str) -> bool:
    """Whether an attempt writes its output in segments (shared.jobs.segments for Parquet,
    shared.jobs.streams for CSV and JSON lines)."""
    return checkpoints and (output_format == SEGMENTED_OUTPUT or not storage.appendable)


def errors_in_segments(storage: Storage, checkpoints: bool) -> bool:
    """Whether an attempt writes its errors file in segments (shared.jobs.streams)."""
    return checkpoints and not storage.appendable


def usable(checkpoint: Checkpoint | None, storage: Storage, output_format: str,
           skip: bool) -> Checkpoint | None:
    """The checkpoint when it is of the shape this attempt writes (segments or a partial
    file, for the output and the errors file) and its files are still there, at least as
    long as it says."""
    if checkpoint is None or checkpoint.rows <= 0:
        return None
    segmented = writes_segments(storage, True, output_format)
    errors_segmented = errors_in_segments(storage, True)
    if (checkpoint.segments is not None) != segmented or \
            (skip and (checkpoint.errors_segments is not None) != errors_segmented):
        return None
    try:
        if not _holds(storage, checkpoint.segments, checkpoint.output,
                      checkpoint.output_bytes):
            return None
        if skip and not _holds(storage, checkpoint.errors_segments, checkpoint.errors,
                               checkpoint.errors_bytes):
            return None
    except (FileNotFoundError, ValueError):
        return None
    return checkpoint


def _holds(storage: Storage, segments: list[str] | None, partial: str | None,
           length: int) -> bool:
    # Segments are complete objects or none; a partial file must hold `length` bytes.
    if segments is not None:
        return all(storage.exists(key) for key in segments)
    return partial is not None and storage.size(partial) >= length


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
