"""Scoring a job's input, or a range of it: read in chunks, validate, score, write, report.

The output goes to a temporary file and is moved into place only when the whole range was
scored, so an attempt killed mid-way leaves no half-written result. Each chunk is reported
once it is written; where the store allows, the files are synced first and the report
carries a checkpoint that a later attempt resumes from (shared.jobs.checkpoint).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import redis

from shared import keys
from shared.diskspace import is_disk_full, storage_full
from shared.errors import (
    InputRowError,
    ModelRejectedInputError,
    QueueUnavailableError,
    TabserveError,
)
from shared.jobs import paths
from shared.jobs.arrival import open_input
from shared.jobs.checkpoint import Checkpoint, errors_in_segments, writes_segments
from shared.jobs.chunks import (
    CheckedChunk,
    RowError,
    check_chunk,
    output_table,
    rows_the_model_refuses,
    score_chunk,
)
from shared.jobs.csvblocks import CsvDialect
from shared.jobs.inputs import (
    Chunk,
    InputLimits,
    Part,
    arrow_type,
    check_csv_file,
    check_parquet_file,
    column_limit,
    iter_chunks,
)
from shared.jobs.outputs import ErrorsWriter, OutputWriter
from shared.jobs.pipeline import WriteBehind, cores, prefetch
from shared.jobs.record import Answer, Job, JobError, JobStatus, Outcome
from shared.jobs.segments import SegmentedOutput
from shared.jobs.store import JobStore
from shared.jobs.streams import SegmentedStream, StreamOutput
from shared.models.loading import Prediction
from shared.monitoring.drift import DriftAccumulator
from shared.monitoring.metrics import record_job_finished, record_prediction
from shared.monitoring.predictions import pack_job_chunk
from shared.storage import MIN_PART_BYTES, Storage

if TYPE_CHECKING:
    from shared.services import Services

logger = logging.getLogger(__name__)


PROGRESS_LOG_CHUNKS = 10
DRIFT_SAMPLE_ROWS = 2_000  # of each chunk (25,000 rows by default): 8% of a job's rows


def _drift_sample(X: Any) -> np.ndarray:
    # PSI over an even sample of each chunk: the same estimate for a fraction of the work.
    n = len(X)
    return np.arange(n) if n <= DRIFT_SAMPLE_ROWS else np.linspace(
        0, n - 1, DRIFT_SAMPLE_ROWS).astype(np.int64)


# Redis went away mid-attempt (restarting, unreachable): the attempt is abandoned, not the
# job; its lease expires and the reaper sends the next attempt once Redis is back.
REDIS_LOST = (QueueUnavailableError, redis.ConnectionError, redis.TimeoutError)


REFUSED_ROWS_MAX = 100  # rows of a job the model may raise on before the job fails


class JobStopped(Exception):
    """The job was cancelled, or this attempt was superseded: stop without writing."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.value)
        self.answer = answer
        # Superseded (sent back to queued, or taken over): the next attempt may adopt this
        # one's checkpointed files and may not have copied them yet, so the store's writers
        # keep them (the sweep removes them once no checkpoint names them).
        self.keep_partial = answer in (Outcome.STALE, JobStatus.QUEUED)


class RowsRejectedError(TabserveError):
    """A row the job cannot score, with on_error=fail: where it is travels with the error."""

    status = 422
    code = "invalid_row"

    def __init__(self, message: str, row: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.row, self.field = row, field


@dataclass
class JobOutcome:
    status: Answer
    rows: int = 0
    seconds: float = 0.0


def fail_job(jobs: JobStore, job: Job, attempt: int | None, error: JobError) -> JobOutcome:
    """End the job as failed (fenced by the attempt, when given) and count it once."""
    final = jobs.fail(job.id, error, attempt)
    if final is JobStatus.FAILED:
        record_job_finished(job.model_name, job.model_version, final)
    logger.info("job %s: failed: %s", job.id, error.message, extra={"error_code": error.code})
    return JobOutcome(final)


def error_of(exc: Exception, job_id: str) -> JobError:
    """The job error for an exception raised while scoring."""
    if isinstance(exc, RowsRejectedError):
        return JobError(exc.code, exc.message, exc.row, exc.field)
    if isinstance(exc, InputRowError):
        return JobError(exc.code, exc.message, exc.row)
    if isinstance(exc, TabserveError):
        return JobError(exc.code, exc.message)
    if is_disk_full(exc):  # the writer removed its temporary file: nothing half-written
        logger.error("job %s: the data directory is full: %s", job_id, exc)
        full = storage_full("the job's output")
        return JobError(full.code, full.message)
    # Anything else is a bug or an I/O fault: logged here, kept off the client.
    logger.error("job %s: unexpected error", job_id, exc_info=exc)
    return JobError("internal_error", f"scoring failed: {type(exc).__name__}")


def score_range(storage: Storage, job: Job, run: JobRun, part: Part | None,
                output_key: str, errors_key: str) -> int:
    """Score the input (or one part of it) into output_key (and errors_key); returns the
    output's row count. Reading runs ahead and writing behind the scoring. With run.resume,
    the range continues a checkpoint: its files start with the checkpoint's bytes."""
    resume = run.resume
    with ExitStack() as files:
        input_fh = files.enter_context(open_input(storage, job, run.rt.settings))
        if job.input["format"] == "parquet":
            check_parquet_file(input_fh, run.limits)
        else:
            check_csv_file(input_fh, run.dialect, run.limits.max_columns)
        writer = _output(files, storage, run, output_key)
        err_fh = _errors_file(files, storage, run, errors_key) if run.skip else None
        if isinstance(err_fh, SegmentedStream):  # a header only if no adopted one holds it
            run.errors = ErrorsWriter(err_fh.text(), header=not err_fh.segments)
        elif err_fh is not None:
            run.errors = ErrorsWriter(err_fh, header=resume is None)
        threads = run.rt.settings.worker_threads
        chunks = iter_chunks(input_fh, job.input["format"], run.types, run.columns,
                             run.rt.settings.chunk_rows, part, run.dialect, cores(threads))

        def write(scored: Scored) -> None:
            writer.write(scored.table)
            if run.errors is not None and scored.errors:
                run.errors.write(scored.errors)
            checkpoint = _checkpoint(storage, run, scored, writer, output_key,
                                     (errors_key, err_fh)) if run.checkpoints else None
            state = run.report(run, scored, checkpoint)
            if state is not JobStatus.RUNNING:
                raise JobStopped(state)

        if threads == 1:  # one core: the stages one after another
            for chunk in chunks:
                write(run.process(chunk))
        else:
            behind = WriteBehind(write)
            try:
                with closing(prefetch(chunks)) as stream:  # stops the reader on any exit
                    for chunk in stream:
                        behind.put(run.process(chunk))
            finally:
                behind.close()
        if writer.rows == 0:
            writer.write(_empty_output(run.loaded, run.id_column))
        writer.close()
        run.segments = list(writer.segments) if isinstance(
            writer, (SegmentedOutput, StreamOutput)) else []
        if isinstance(err_fh, SegmentedStream):
            err_fh.join()
            run.segments += err_fh.segments
    return writer.rows


def _checkpoint(storage: Storage, run: JobRun, scored: Scored,
                writer: OutputWriter | SegmentedOutput | StreamOutput, output_key: str,
                errors: tuple[str, Any]) -> Checkpoint | None:
    """The checkpoint after a chunk, its files synced first (or their open segments closed:
    None while they hold fewer than TABSERVE_SEGMENT_BYTES, no checkpoint at this chunk)."""
    errors_key, err_fh = errors
    stream = err_fh if isinstance(err_fh, SegmentedStream) else None
    segments = errors_segments = None
    output, output_bytes, errors_file, errors_bytes = "", 0, None, 0
    if isinstance(writer, (SegmentedOutput, StreamOutput)):
        held = [n for n in (writer.open_bytes, None if stream is None else stream.open_bytes)
                if n is not None]
        if not held or sum(held) < _segment_bytes(run.rt.settings.segment_bytes, writer):
            return None
        segments = writer.cut()
        errors_segments = stream.cut() if stream is not None else None
    else:
        output, output_bytes = storage.partial_key(output_key, writer.fh), \
            storage.sync(writer.fh)
    if err_fh is not None and stream is None:
        errors_file, errors_bytes = storage.partial_key(errors_key, err_fh), \
            storage.sync(err_fh)
    return scored.checkpoint(run.attempt, output, output_bytes, errors_file, errors_bytes,
                             segments, errors_segments)


def _segment_bytes(setting: int, writer: Any) -> int:
    # Byte-stream segments (on S3) of at least S3's smallest part are joined by copies
    # inside the store (Storage.join_copies); 0, a segment per chunk, stays 0.
    return max(setting, MIN_PART_BYTES) if setting and isinstance(writer, StreamOutput) \
        else setting


def _output(files: ExitStack, storage: Storage, run: JobRun,
            key: str) -> OutputWriter | SegmentedOutput | StreamOutput:
    """The range's output writer: in segments (Parquet, or any output on a store that cannot
    append, when checkpointing), or one file (continuing a checkpoint's bytes when
    resumed)."""
    resume = run.resume
    done = 0 if resume is None else resume.rows - resume.rows_failed
    if writes_segments(storage, run.checkpoints, run.out_fmt):
        adopted = None if resume is None else resume.segments
        if run.out_fmt == "parquet":
            return files.enter_context(SegmentedOutput(storage, key, adopted, done))
        stream = files.enter_context(SegmentedStream(storage, key, adopted))
        return StreamOutput(stream, run.out_fmt, run.header and not adopted, done)
    out_fh = files.enter_context(_writer(storage, key, "wb", None if resume is None
                                         else (resume.output, resume.output_bytes)))
    writer = OutputWriter(out_fh, run.out_fmt, header=run.header and resume is None)
    writer.rows = done
    return writer


def _errors_file(files: ExitStack, storage: Storage, run: JobRun, key: str) -> Any:
    """The errors file: in segments (a SegmentedStream, on a store that cannot append, when
    checkpointing), or one text file (continuing a checkpoint's bytes when resumed)."""
    resume = run.resume
    if errors_in_segments(storage, run.checkpoints):
        return files.enter_context(SegmentedStream(
            storage, key, None if resume is None else resume.errors_segments))
    return files.enter_context(_writer(storage, key, "w", None if resume is None
                                       else (resume.errors or "", resume.errors_bytes)))


def _writer(storage: Storage, key: str, mode: str, start: tuple[str, int] | None) -> Any:
    # Only a range resumed on an appendable store passes `start`.
    if start is None:
        return storage.writer(key, mode)
    return storage.writer(key, mode, start)  # type: ignore[call-arg]


@dataclass
class Scored:
    """One chunk's output rows and row errors, and where its range stood after it: rows done
    and skipped, the input's byte offset, the job's drift counts (when checkpointing)."""

    table: pa.Table
    errors: list[RowError]
    rows_done: int
    rows_failed: int
    bytes_done: int
    drift: np.ndarray | None = None

    def checkpoint(self, attempt: int, output: str, output_bytes: int, errors: str | None,
                   errors_bytes: int, segments: list[str] | None = None,
                   errors_segments: list[str] | None = None) -> Checkpoint:
        """The checkpoint once this chunk is on disk in these files."""
        return Checkpoint(attempt, self.rows_done, self.rows_failed, self.bytes_done, output,
                          output_bytes, errors, errors_bytes,
                          None if self.drift is None else self.drift.tolist(), segments,
                          errors_segments)


Report = Callable[["JobRun", Scored, "Checkpoint | None"], Answer]


class JobRun:
    """One attempt at one job (or part): validates, scores and reports chunk by chunk."""

    def __init__(self, rt: Services, job: Job, report: Report, attempt: int = 1) -> None:
        self.rt, self.report, self.attempt = rt, report, attempt
        self.job_id, options = job.id, job.options
        self.loaded = rt.models.get(job.model_name, int(job.model_version))
        self.manifest = self.loaded.manifest
        features = self.manifest.features
        self.id_column = options.get("id_column")
        self.include_input = bool(options.get("include_input"))
        names = [f.name for f in features]
        extra = [self.id_column] if self.id_column and self.id_column not in names else []
        self.columns = list(job.input["columns"]) if self.include_input else names + extra
        self.types = {f.name: arrow_type(f) for f in features}
        self.dialect = dialect_of(job.input, rt.settings)
        self.out_fmt = options["output_format"]
        self.skip = job.skips_rows
        self.output_key = paths.result(self.job_id, self.out_fmt, attempt)
        self.errors_key = paths.errors(self.job_id, attempt)
        self.errors: ErrorsWriter | None = None
        self.header = True  # a part after the first continues the first's CSV: no header
        # A part of a split job learns its first row's number while it starts (see
        # shared.jobs.parts); chunks are numbered from 0 until then, and shifted here.
        self.row_offset: Callable[[], int] | None = None
        self.drift = DriftAccumulator(self.manifest)
        self.rows_done = self.rows_failed = self.chunks = 0
        self.rows_refused = 0  # rows the model raised on (skipped)
        self.checkpoints = False  # whether each written chunk records a checkpoint
        settings = rt.settings
        self.max_rows = settings.max_job_rows
        self.limits = InputLimits(settings.max_job_rows,
                                  column_limit(settings.max_input_columns, len(features)),
                                  settings.max_parquet_row_group_bytes,
                                  settings.max_parquet_metadata_bytes)
        self.resume: Checkpoint | None = None
        self.segments: list[str] = []  # the output's segments, once joined (to delete)

    def adopt(self, checkpoint: Checkpoint) -> None:
        """Continue from an earlier attempt's checkpoint: its rows count as done."""
        self.resume = checkpoint
        self.rows_done, self.rows_failed = checkpoint.rows, checkpoint.rows_failed
        if checkpoint.drift is not None:
            self.drift.merge(checkpoint.drift)

    @property
    def rows_resumed(self) -> int:
        return 0 if self.resume is None else self.resume.rows

    def process(self, chunk: Chunk) -> Scored:
        """Validate and score one chunk, and return its output rows and errors (reported
        once written)."""
        if self.row_offset is not None:
            chunk = replace(chunk, start_row=chunk.start_row + self.row_offset())
        if chunk.start_row + chunk.span > self.max_rows:  # before a row of it is scored
            raise too_many_rows(self.max_rows)
        checked = check_chunk(chunk.table, chunk.start_row, self.manifest.features,
                              chunk.bad_rows)
        if checked.errors and self.errors is None:
            raise _row_error(checked.errors[0], len(checked.errors))
        scored_at = time.perf_counter()
        try:
            X, result = score_chunk(self.loaded, checked)
        except ModelRejectedInputError:
            checked = self._without_refused(checked)
            X, result = score_chunk(self.loaded, checked)
        record_prediction(self.manifest, "batch", checked.num_rows,
                          time.perf_counter() - scored_at)
        self._observe(chunk, checked, X, result)
        table = output_table(self.loaded, checked, result, self.id_column,
                             self.columns if self.include_input else None, f"{self.job_id}.")
        self.rows_done += chunk.span
        self.rows_failed += chunk.span - checked.num_rows
        self.chunks += 1
        if self.chunks % PROGRESS_LOG_CHUNKS == 0:
            logger.info("job %s: %d rows scored", self.job_id, self.rows_done)
        return Scored(table, checked.errors, self.rows_done, self.rows_failed,
                      chunk.bytes_done, self.drift.counts.copy() if self.checkpoints else None)

    def _without_refused(self, checked: CheckedChunk) -> CheckedChunk:
        """The chunk without the rows the model raised on: each is a row error (skipped
        with on_error=skip; the job fails on the first otherwise, not retried). The
        REFUSED_ROWS_MAX-th such row of a job fails it: finding each costs model calls, and
        so many say the model and its schema disagree."""
        left = 1 if self.errors is None else REFUSED_ROWS_MAX - self.rows_refused
        refused = rows_the_model_refuses(self.loaded, checked, left)
        if not refused:  # the model raised on the whole chunk but on no part of it
            raise RowsRejectedError(
                f"rows {checked.rows[0]}-{checked.rows[-1]}: the model refused the chunk "
                "as a whole")
        if self.errors is None:
            raise _row_error(refused[0], 1)
        self.rows_refused += len(refused)
        if self.rows_refused >= REFUSED_ROWS_MAX:
            last = refused[-1]
            raise RowsRejectedError(
                f"the model refused {REFUSED_ROWS_MAX} rows, the last at row {last.row} "
                f"({last.reason}); with so many, check the model against its schema",
                last.row)
        keep = ~np.isin(checked.rows, [e.row for e in refused])
        errors = sorted(checked.errors + refused, key=lambda e: e.row)
        return replace(checked.subset(keep), errors=errors)

    def _observe(self, chunk: Chunk, checked: CheckedChunk, X: Any, result: Prediction) -> None:
        # Drift (the job's own, and this process's window) and predictions kept for feedback.
        sample = _drift_sample(X)
        X_sample = X[sample] if isinstance(X, np.ndarray) else X.iloc[sample]
        binned = self.drift.add(X_sample, result.labels[sample])
        self.rt.drift.observe_binned(self.manifest, binned)  # the process's window too
        packed = pack_job_chunk(chunk.span, checked.rows, chunk.start_row,
                                result.labels, self.loaded.classes)
        if not packed:
            return
        width = len(packed) // chunk.span
        pipe = self.rt.redis.pipeline()
        key = keys.job_predictions(self.job_id)
        pipe.setrange(key, chunk.start_row * width, packed)
        pipe.expire(key, self.rt.settings.prediction_ttl_seconds)
        try:
            pipe.execute()
        except redis.ResponseError as exc:  # past Redis's 512 MB string limit
            logger.warning("job %s: predictions not kept for feedback: %s", self.job_id, exc)


class TooManyRowsError(RowsRejectedError):
    """The input holds more rows than a job may (TABSERVE_MAX_JOB_ROWS): a CSV file's rows
    are known only as they are read."""

    status = 413
    code = "payload_too_large"


def too_many_rows(limit: int) -> TooManyRowsError:
    """The error for the first row past the limit (rows are numbered from 0)."""
    return TooManyRowsError(f"row {limit}: the file has more than {limit} rows, the limit of "
                            "rows per job (TABSERVE_MAX_JOB_ROWS): split it into several jobs",
                            limit)


def _row_error(first: RowError, count: int) -> RowsRejectedError:
    more = f" ({count - 1} more in this chunk)" if count > 1 else ""
    if not first.column:  # the row itself could not be read
        return RowsRejectedError(f"row {first.row}: {first.reason}{more}", first.row)
    return RowsRejectedError(f"row {first.row}, column {first.column!r}: {first.reason}{more}",
                             first.row, first.column)


def dialect_of(source: dict[str, Any], settings: Any) -> CsvDialect:
    """The CSV dialect a job's input was accepted with (records before it: plain CSV)."""
    return CsvDialect(source.get("delimiter") or ",", source.get("encoding") or "utf-8",
                      settings.max_line_bytes, source.get("decimal") or ".")


def _empty_output(loaded: Any, id_column: str | None) -> pa.Table:
    """The output's header (and schema) for a job whose every row was skipped."""
    features = loaded.manifest.features
    table = pa.table({f.name: pa.array([], type=arrow_type(f)) for f in features})
    if id_column and id_column not in table.column_names:
        table = table.append_column(id_column, pa.array([], type=pa.string()))
    empty = check_chunk(table, 0, features)
    _, result = score_chunk(loaded, empty)
    return output_table(loaded, empty, result, id_column, None, "")
