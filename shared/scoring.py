"""Running a batch job: read the stored input in chunks, validate, score, write, report.

The output goes to a temporary file and is moved into place only when the whole input was
scored, so a job killed mid-way leaves no half-written result; a re-delivered job starts
again from the first row with a new attempt number, and the superseded attempt stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import redis

from shared.batch import CheckedChunk, RowError, check_chunk, output_table, score_chunk
from shared.drift import DriftAccumulator
from shared.errors import TabserveError
from shared.jobs import JobStore
from shared.metrics import record_job_finished, record_prediction
from shared.models import Prediction
from shared.outputs import ErrorsWriter, OutputWriter
from shared.pipeline import WriteBehind, prefetch
from shared.predictions import JOB_KEY, pack_job_chunk
from shared.runtime import Runtime
from shared.storage import Storage
from shared.tables import Chunk, Part, arrow_type, iter_chunks

logger = logging.getLogger(__name__)


PROGRESS_LOG_CHUNKS = 10
DRIFT_SAMPLE_ROWS = 2_000  # of each chunk (25,000 rows by default): 8% of a job's rows


def _drift_sample(X: Any) -> np.ndarray:
    # PSI over an even sample of each chunk: the same estimate for a fraction of the work.
    n = len(X)
    return np.arange(n) if n <= DRIFT_SAMPLE_ROWS else np.linspace(
        0, n - 1, DRIFT_SAMPLE_ROWS).astype(np.int64)


class JobStopped(Exception):
    """The job was cancelled, or this attempt was superseded: stop without writing."""


class RowsRejectedError(TabserveError):
    status = 422
    code = "invalid_row"


@dataclass
class JobOutcome:
    status: str
    rows: int = 0
    seconds: float = 0.0


def run_job(rt: Runtime, jobs: JobStore, storage: Storage, job_id: str,
            worker: str) -> JobOutcome:
    """Score one job end to end; every failure ends in the job's record, never raised."""
    try:
        rec = jobs.get(job_id)
    except TabserveError:
        logger.warning("job %s: no record (expired or deleted); dropping", job_id)
        return JobOutcome("missing")
    if rec["status"] == "running" and rec.get("parts_dispatched"):
        logger.info("job %s: its parts are queued already", job_id)  # a re-delivered split
        return JobOutcome("split")
    attempt = rec.get("attempt", 0) + 1
    state = jobs.start(job_id, attempt, worker)
    if state != "running":
        logger.info("job %s: not started, status is %s", job_id, state)
        return JobOutcome(state)
    if attempt > 1:
        logger.warning("job %s: attempt %d (an earlier worker stopped mid-job)", job_id, attempt)
    model, version = rec["model"]["name"], str(rec["model"]["version"])
    logger.info("job %s: started on %s (model %s:%s, attempt %d)", job_id, worker, model,
                version, attempt, extra={"job_id": job_id, "model_version": f"{model}:{version}"})
    started = time.perf_counter()
    try:
        from shared.splitting import split_job  # splitting builds on this module

        if split_job(rt, jobs, storage, rec):
            return JobOutcome("split")
        rows = _score(rt, jobs, storage, rec, attempt)
    except JobStopped as stop:
        logger.info("job %s: stopped (%s)", job_id, stop)
        return JobOutcome(str(stop))
    except TabserveError as exc:
        error = {"code": exc.code, "message": exc.message, **getattr(exc, "where", {})}
        return _failed(jobs, job_id, attempt, error, model, version, started)
    except Exception as exc:  # anything else is a bug or an I/O fault; keep it off the client
        logger.exception("job %s: unexpected error", job_id)
        error = {"code": "internal_error", "message": f"scoring failed: {type(exc).__name__}"}
        return _failed(jobs, job_id, attempt, error, model, version, started)
    seconds = time.perf_counter() - started
    record_job_finished(model, version, "succeeded", seconds, rows)
    logger.info("job %s: succeeded: %d rows in %.2f s (%.0f rows/s)", job_id, rows, seconds,
                rows / max(seconds, 1e-9), extra={"duration_s": round(seconds, 3), "rows": rows})
    return JobOutcome("succeeded", rows, seconds)


def _failed(jobs: JobStore, job_id: str, attempt: int, error: dict[str, Any], model: str,
            version: str, started: float) -> JobOutcome:
    final = jobs.finish(job_id, "failed", attempt, error=error)
    seconds = time.perf_counter() - started
    if final == "failed":
        record_job_finished(model, version, "failed", seconds, 0)
    logger.info("job %s: failed after %.2f s: %s", job_id, seconds, error["message"],
                extra={"duration_s": round(seconds, 3), "error_code": error["code"]})
    return JobOutcome(final)


def _score(rt: Runtime, jobs: JobStore, storage: Storage, rec: dict[str, Any],
           attempt: int) -> int:
    """Score every chunk, then publish the output and mark the job succeeded."""
    job_id = rec["id"]

    def report(run: JobRun, chunk: Chunk) -> str:
        return jobs.progress(job_id, attempt, rows_done=run.rows_done,
                             rows_failed=run.rows_failed, bytes_done=chunk.bytes_done)

    run = JobRun(rt, rec, report)
    rt.redis.delete(JOB_KEY + job_id)  # a re-delivered job starts its predictions afresh
    rows = score_range(storage, rec, run, None, run.output_key, run.errors_key)
    if run.rows_done == 0:
        raise RowsRejectedError("the file has no data rows")
    # Both files are in place now; only then does the job become "succeeded".
    output = {"format": run.out_fmt, "key": run.output_key, "rows": rows,
              "size_bytes": storage.size(run.output_key)}
    final = jobs.finish(job_id, "succeeded", attempt, rows_total=run.rows_done,
                        rows_done=run.rows_done, rows_failed=run.rows_failed,
                        bytes_done=rec["input"]["size_bytes"], output=output,
                        errors_key=run.errors_key if run.skip else None,
                        drift=run.drift.result())
    if final == "cancelled":
        storage.delete(run.output_key)
        storage.delete(run.errors_key)
    if final != "succeeded":
        raise JobStopped(final)
    return run.rows_done


def score_range(storage: Storage, rec: dict[str, Any], run: JobRun, part: Part | None,
                output_key: str, errors_key: str) -> int:
    """Score the input (or one part of it) into output_key (and errors_key); returns the
    output's row count. Reading runs ahead and writing behind the scoring."""
    with ExitStack() as files:
        input_fh = files.enter_context(storage.open(rec["input"]["key"]))
        out_fh = files.enter_context(storage.writer(output_key))
        err_fh = files.enter_context(storage.writer(errors_key, "w")) if run.skip else None
        writer = OutputWriter(out_fh, run.out_fmt, header=run.header)
        run.errors = ErrorsWriter(err_fh) if err_fh else None
        chunks = iter_chunks(input_fh, rec["input"]["format"], run.types, run.columns,
                             run.rt.settings.chunk_rows, part)
        if run.rt.settings.worker_threads == 1:  # one core: the stages one after another
            for chunk in chunks:
                writer.write(run.process(chunk))
        else:
            behind = WriteBehind(writer.write)
            try:
                with closing(prefetch(chunks)) as stream:  # stops the reader on any exit
                    for chunk in stream:
                        behind.put(run.process(chunk))
            finally:
                behind.close()
        if writer.rows == 0:
            writer.write(_empty_output(run.loaded, run.id_column))
        writer.close()
    return writer.rows


class JobRun:
    """One attempt at one job (or part): validates, scores and reports chunk by chunk."""

    def __init__(self, rt: Runtime, rec: dict[str, Any],
                 report: Callable[[JobRun, Chunk], str]) -> None:
        self.rt, self.report = rt, report
        self.job_id, options = rec["id"], rec["options"]
        self.loaded = rt.models.get(rec["model"]["name"], int(rec["model"]["version"]))
        self.manifest = self.loaded.manifest
        features = self.manifest.features
        self.id_column = options.get("id_column")
        self.include_input = bool(options.get("include_input"))
        names = [f.name for f in features]
        extra = [self.id_column] if self.id_column and self.id_column not in names else []
        self.columns = list(rec["input"]["columns"]) if self.include_input else names + extra
        self.types = {f.name: arrow_type(f) for f in features}
        self.out_fmt = options["output_format"]
        self.skip = options.get("on_error") == "skip"
        self.output_key = f"jobs/{self.job_id}/result.{self.out_fmt}"
        self.errors_key = f"jobs/{self.job_id}/errors.csv"
        self.errors: ErrorsWriter | None = None
        self.header = True  # a part after the first continues the first's CSV: no header
        # A part of a split job learns its first row's number while it starts (see
        # shared.splitting); chunks are numbered from 0 until then, and shifted here.
        self.row_offset: Callable[[], int] | None = None
        self.drift = DriftAccumulator(self.manifest)
        self.rows_done = self.rows_failed = self.chunks = 0

    def process(self, chunk: Chunk) -> pa.Table:
        """Validate and score one chunk, record it, and return its output rows."""
        if self.row_offset is not None:
            chunk = Chunk(chunk.start_row + self.row_offset(), chunk.table, chunk.bytes_done)
        checked = check_chunk(chunk.table, chunk.start_row, self.manifest.features)
        if checked.errors:
            if self.errors is None:
                raise _row_error(checked.errors[0], len(checked.errors))
            self.errors.write(checked.errors)
        scored_at = time.perf_counter()
        X, result = score_chunk(self.loaded, checked)
        record_prediction(self.manifest, "batch", checked.num_rows,
                          time.perf_counter() - scored_at)
        self._observe(chunk, checked, X, result)
        table = output_table(self.loaded, checked, result, self.id_column,
                             self.columns if self.include_input else None, f"{self.job_id}.")
        self.rows_done += chunk.table.num_rows
        self.rows_failed += chunk.table.num_rows - checked.num_rows
        self.chunks += 1
        if self.chunks % PROGRESS_LOG_CHUNKS == 0:
            logger.info("job %s: %d rows scored", self.job_id, self.rows_done)
        state = self.report(self, chunk)
        if state != "running":
            raise JobStopped(state)
        return table

    def _observe(self, chunk: Chunk, checked: CheckedChunk, X: Any, result: Prediction) -> None:
        # Drift (the job's own, and this process's window) and predictions kept for feedback.
        sample = _drift_sample(X)
        X_sample = X[sample] if isinstance(X, np.ndarray) else X.iloc[sample]
        binned = self.drift.add(X_sample, result.labels[sample])
        self.rt.drift.observe_binned(self.manifest, binned)  # the process's window too
        packed = pack_job_chunk(chunk.table.num_rows, checked.rows, chunk.start_row,
                                result.labels, self.loaded.classes)
        if not packed:
            return
        width = len(packed) // chunk.table.num_rows
        pipe = self.rt.redis.pipeline()
        pipe.setrange(JOB_KEY + self.job_id, chunk.start_row * width, packed)
        pipe.expire(JOB_KEY + self.job_id, self.rt.settings.prediction_ttl_seconds)
        try:
            pipe.execute()
        except redis.ResponseError as exc:  # past Redis's 512 MB string limit
            logger.warning("job %s: predictions not kept for feedback: %s", self.job_id, exc)


def _row_error(first: RowError, count: int) -> RowsRejectedError:
    more = f" ({count - 1} more in this chunk)" if count > 1 else ""
    exc = RowsRejectedError(f"row {first.row}, column {first.column!r}: {first.reason}{more}")
    exc.where = {"row": first.row, "column": first.column}  # type: ignore[attr-defined]
    return exc


def _empty_output(loaded: Any, id_column: str | None) -> pa.Table:
    """The output's header (and schema) for a job whose every row was skipped."""
    features = loaded.manifest.features
    table = pa.table({f.name: pa.array([], type=arrow_type(f)) for f in features})
    if id_column and id_column not in table.column_names:
        table = table.append_column(id_column, pa.array([], type=pa.string()))
    empty = check_chunk(table, 0, features)
    _, result = score_chunk(loaded, empty)
    return output_table(loaded, empty, result, id_column, None, "")
