"""Running a batch job: read the stored input in chunks, validate, score, write, report.

The output goes to a temporary file and is moved into place only when the whole input was
scored, so a job killed mid-way leaves no half-written result; a re-delivered job starts
again from the first row with a new attempt number, and the superseded attempt stops.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from shared.batch import CheckedChunk, RowError, check_chunk, output_table, score_chunk
from shared.drift import DriftAccumulator
from shared.errors import TabserveError
from shared.jobs import JobStore
from shared.metrics import record_job_finished, record_prediction
from shared.outputs import ErrorsWriter, OutputWriter
from shared.predictions import JOB_KEY, pack_job_chunk
from shared.runtime import Runtime
from shared.storage import Storage
from shared.tables import arrow_type, iter_chunks

logger = logging.getLogger(__name__)


PROGRESS_LOG_CHUNKS = 10
DRIFT_SAMPLE_ROWS = 10_000


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
    job_id, options = rec["id"], rec["options"]
    loaded = rt.models.get(rec["model"]["name"], int(rec["model"]["version"]))
    features = loaded.manifest.features
    id_column = options.get("id_column")
    needed = [f.name for f in features]
    extra = [id_column] if id_column and id_column not in needed else []
    columns = needed + extra
    if options.get("include_input"):
        columns = list(rec["input"]["columns"])
    types = {f.name: arrow_type(f) for f in features}
    fmt, out_fmt = rec["input"]["format"], options["output_format"]
    skip = options.get("on_error") == "skip"
    output_key = f"jobs/{job_id}/result.{out_fmt}"
    errors_key = f"jobs/{job_id}/errors.csv"
    rows_done = rows_failed = 0
    manifest = loaded.manifest
    drift = DriftAccumulator(manifest)
    rt.redis.delete(JOB_KEY + job_id)  # a re-delivered job starts its predictions afresh
    with ExitStack() as files:
        input_fh = files.enter_context(storage.open(rec["input"]["key"]))
        out_fh = files.enter_context(storage.writer(output_key))
        err_fh = files.enter_context(storage.writer(errors_key, "w")) if skip else None
        writer = OutputWriter(out_fh, out_fmt)
        errors = ErrorsWriter(err_fh) if err_fh else None
        for n_chunk, chunk in enumerate(iter_chunks(input_fh, fmt, types, columns,
                                                    rt.settings.chunk_rows)):
            checked = check_chunk(chunk.table, chunk.start_row, features)
            if checked.errors:
                if errors is None:
                    raise _row_error(checked.errors[0], len(checked.errors))
                errors.write(checked.errors)
            scored_at = time.perf_counter()
            X, result = score_chunk(loaded, checked)
            record_prediction(manifest, "batch", checked.table.num_rows,
                              time.perf_counter() - scored_at)
            sample = _drift_sample(X)
            X_sample = X[sample] if isinstance(X, np.ndarray) else X.iloc[sample]
            drift.add(X_sample, result.labels[sample])
            rt.drift.observe(manifest, X_sample, result.labels[sample])
            pipe = rt.redis.pipeline()
            pipe.append(JOB_KEY + job_id, pack_job_chunk(
                chunk.table.num_rows, checked.rows, chunk.start_row, result.labels,
                loaded.classes))
            pipe.expire(JOB_KEY + job_id, rt.settings.prediction_ttl_seconds)
            pipe.execute()
            writer.write(output_table(loaded, checked, result, id_column,
                                      bool(options.get("include_input")), f"{job_id}."))
            rows_done += chunk.table.num_rows
            if n_chunk % PROGRESS_LOG_CHUNKS == PROGRESS_LOG_CHUNKS - 1:
                logger.info("job %s: %d rows scored", job_id, rows_done)
            rows_failed += chunk.table.num_rows - checked.table.num_rows
            state = jobs.progress(job_id, attempt, rows_done=rows_done, rows_failed=rows_failed,
                                  bytes_done=chunk.bytes_done)
            if state != "running":
                raise JobStopped(state)
        if rows_done == 0:
            raise RowsRejectedError("the file has no data rows")
        if writer.rows == 0:
            writer.write(_empty_output(loaded, id_column))
        writer.close()
    # Both files are in place now; only then does the job become "succeeded".
    output = {"format": out_fmt, "key": output_key, "rows": writer.rows,
              "size_bytes": storage.size(output_key)}
    final = jobs.finish(job_id, "succeeded", attempt, rows_total=rows_done,
                        rows_done=rows_done, rows_failed=rows_failed,
                        bytes_done=rec["input"]["size_bytes"], output=output,
                        errors_key=errors_key if skip else None, drift=drift.result())
    if final == "cancelled":
        storage.delete(output_key)
        storage.delete(errors_key)
    if final != "succeeded":
        raise JobStopped(final)
    return rows_done


def _row_error(first: RowError, count: int) -> RowsRejectedError:
    more = f" ({count - 1} more in this chunk)" if count > 1 else ""
    exc = RowsRejectedError(f"row {first.row}, column {first.column!r}: {first.reason}{more}")
    exc.where = {"row": first.row, "column": first.column}  # type: ignore[attr-defined]
    return exc


def _empty_output(loaded: Any, id_column: str | None) -> pa.Table:
    empty = CheckedChunk(pa.table({f.name: pa.array([], type=arrow_type(f))
                                   for f in loaded.manifest.features}),
                         np.empty(0, dtype=np.int64))
    if id_column:
        empty.table = empty.table.append_column(id_column, pa.array([], type=pa.string()))
    _, result = score_chunk(loaded, empty)
    return output_table(loaded, empty, result, id_column, False, "")
