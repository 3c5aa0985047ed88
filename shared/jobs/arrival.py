"""Scoring a CSV upload while it is still arriving.

A raw-body CSV upload (`Content-Type: text/csv`, options in the query, a Content-Length)
large enough to be worth it is queued as soon as its start has passed the submit checks: the
staged file is moved into the job's directory while the API goes on writing it, and the
worker reads it as it grows. A job finishes shortly after its upload does, instead of
starting then.

The API and the worker agree through a marker file beside the input (paths.arriving), on
the local store both see:
- the marker present: the upload is arriving; a read past the bytes written waits for more;
- the marker gone and the file at its announced size (the Content-Length): complete;
- the marker gone and the file shorter: the upload failed; the API has failed the job
  (`upload_interrupted`) and a worker reading it stops;
- the marker present but the file not grown for TABSERVE_UPLOAD_STALL_SECONDS: the API
  process died mid-upload, or its client stopped sending; the worker fails the job.

Only what can be decided from the request's head and the file's first bytes streams: not a
multipart form (its fields may follow the file), not Parquet (its schema is in its footer),
not a request with an Idempotency-Key (its fingerprint is the whole file's), not a job that
would be cut into parts for several workers (parts need the whole file), and not on object
storage (the worker could not see the file grow).
"""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from shared.cooperative import fsync
from shared.errors import TabserveError
from shared.jobs import paths
from shared.jobs.csvblocks import SNIFF_BYTES
from shared.jobs.record import Job, JobError, JobStatus
from shared.monitoring.metrics import record_job_finished

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.storage import Storage

logger = logging.getLogger(__name__)

# Bytes staged before the job is queued: the header and a sample of rows for the submit
# checks (the delimiter, the columns, decimal marks), and for the worker's block size.
START_BYTES = 1 << 20
POLL_SECONDS = (0.002, 0.05)  # a waiting read's first and longest sleep


class UploadInterruptedError(TabserveError):
    """The upload a job was scoring as it arrived did not arrive whole."""

    status = 400
    code = "upload_interrupted"


def marker_path(input_path: Path) -> Path:
    """The marker beside an arriving input (paths.arriving's file)."""
    return input_path.with_name(paths.ARRIVING)


def follows_upload(job: Job) -> bool:
    """Whether the job was queued while its upload was arriving."""
    return bool(job.input.get("streamed"))


def open_input(storage: Storage, job: Job, settings: Settings) -> IO[bytes]:
    """The job's input for reading: a file that waits for its bytes when the job was queued
    while its upload was arriving (complete or not by now), else the stored file."""
    key = job.input["key"]
    path = storage.local_path(key) if follows_upload(job) else None
    if path is None:
        return storage.open(key)
    try:
        raw = ArrivingFile(path, int(job.input["size_bytes"]), settings.upload_stall_seconds)
    except FileNotFoundError:  # removed with the failed upload
        raise UploadInterruptedError("the upload of the job's file did not complete; "
                                     "submit the job again") from None
    return io.BufferedReader(raw, buffer_size=1 << 20)


class ArrivingFile(io.RawIOBase):
    """A file of a known final size, read while it is written: a read past the bytes on disk
    waits for more, as long as the upload's marker says it is arriving and the file grows."""

    def __init__(self, path: Path, size: int, stall_seconds: float) -> None:
        super().__init__()
        self._fh = open(path, "rb", buffering=0)  # noqa: SIM115 (closed in close())
        self._marker = marker_path(path)
        self._size, self._stall, self._pos = size, stall_seconds, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def close(self) -> None:
        self._fh.close()
        super().close()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos)
        if want <= 0:
            return 0
        view = view[:want]
        delay, seen, since = POLL_SECONDS[0], -1, time.monotonic()
        while True:
            got = self._read(view)
            if got:
                return got
            if not self._marker.exists():  # ended: its last bytes may have landed just before
                got = self._read(view)
                if got:
                    return got
                raise UploadInterruptedError(
                    f"the upload ended after {self._written()} of its {self._size} bytes; "
                    "submit the job again")
            written = self._written()
            if written != seen:
                seen, since = written, time.monotonic()
            elif time.monotonic() - since > self._stall:
                raise UploadInterruptedError(
                    f"the upload stopped arriving after {written} of its {self._size} bytes "
                    f"(nothing for {self._stall:g} s, TABSERVE_UPLOAD_STALL_SECONDS); submit "
                    "the job again")
            time.sleep(delay)
            delay = min(delay * 2, POLL_SECONDS[1])

    def _read(self, view: memoryview) -> int:
        self._fh.seek(self._pos)
        got = self._fh.readinto(view) or 0
        self._pos += got
        return got

    def _written(self) -> int:
        return os.fstat(self._fh.fileno()).st_size


class ArrivingUpload:
    """The API's side: the file as it is staged, moved under the job once queued, and the
    marker dropped when the last byte is written (or the job failed if it never is)."""

    def __init__(self, storage: Storage, staged: Path, fh: IO[bytes], size: int) -> None:
        self.storage, self.staged, self.fh, self.size = storage, staged, fh, size
        self.job_id: str | None = None
        self.path: Path | None = None
        self.declined = False  # start_arriving found it must wait for the whole file

    def can_move(self, job_id: str, fmt: str) -> bool:
        """Whether the staged file can become the job's input in place (a rename on the
        same filesystem of a local store)."""
        target = self.storage.local_path(paths.upload(job_id, fmt))
        if target is None:
            return False
        jobs_dir = target.parent.parent  # the job's own directory is made only by move()
        jobs_dir.mkdir(parents=True, exist_ok=True)
        return os.stat(jobs_dir).st_dev == os.stat(self.staged).st_dev

    def move(self, job_id: str, fmt: str) -> str:
        """Mark the upload arriving and move the staged file (still being written) to be
        the job's input; returns its key."""
        key = paths.upload(job_id, fmt)
        target = self.storage.local_path(key)
        assert target is not None
        self.fh.flush()
        target.parent.mkdir(parents=True, exist_ok=True)
        marker_path(target).touch()  # before the job exists: a reader never misses it
        os.replace(self.staged, target)
        self.job_id, self.path = job_id, target
        return key

    def finish(self) -> None:
        """The whole body is written: flush it and drop the marker (the worker reads on
        to the end)."""
        assert self.path is not None
        fsync(self.fh)
        marker_path(self.path).unlink(missing_ok=True)

    def abandon(self, jobs: Any, reason: str, written: int) -> None:
        """The body did not arrive whole: fail the job (a worker scoring it stops at its
        next chunk, or when its reads find the marker gone) and remove the partial file."""
        assert self.job_id is not None and self.path is not None
        error = JobError("upload_interrupted",
                         f"the upload ended after {written} of its {self.size} bytes "
                         f"({reason}); submit the job again")
        try:
            final = jobs.fail(self.job_id, error)
            if final is JobStatus.FAILED:
                job = jobs.get(self.job_id)
                record_job_finished(job.model_name, job.model_version, final)
        except Exception as exc:  # Redis away: the worker's stall check fails it instead
            logger.warning("job %s: could not be failed after its upload broke: %s",
                           self.job_id, exc)
        finally:
            self.path.unlink(missing_ok=True)
            marker_path(self.path).unlink(missing_ok=True)
        logger.info("job %s: upload interrupted after %d of %d bytes (%s)", self.job_id,
                    written, self.size, reason, extra={"job_id": self.job_id})


def estimated_rows(head: bytes, size: int) -> int:
    """The rows a CSV file of `size` bytes holds, judged from its first bytes."""
    sample = head[:SNIFF_BYTES * 4]
    lines = max(sample.count(b"\n"), 1)
    return int(size / max(len(sample) / lines, 1.0))
