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

from shared.batch import CheckedChunk, RowError, check_chunk, output_table
from shared.errors import TabserveError
from shared.jobs import JobStore
from shared.outputs import ErrorsWriter, OutputWriter
from shared.runtime import Runtime
from shared.storage import LocalStorage
from shared.tables import arrow_type, iter_chunks

logger = logging.getLogger(__name__)


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


def run_job(rt: Runtime, jobs: JobStore, storage: LocalStorage, job_id: str,
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
    started = time.perf_counter()
    try:
        rows = _score(rt, jobs, storage, rec, attempt)
    except JobStopped as stop:
        logger.info("job %s: stopped (%s)", job_id, stop)
        return JobOutcome(str(stop))
    except TabserveError as exc:
        error = {"code": exc.code, "message": exc.message, **getattr(exc, "where", {})}
        final = jobs.finish(job_id, "failed", attempt, error=error)
        logger.info("job %s: failed: %s", job_id, exc.message)
        return JobOutcome(final)
    except Exception as exc:  # anything else is a bug or an I/O fault; keep it off the client
        logger.exception("job %s: unexpected error", job_id)
        error = {"code": "internal_error", "message": f"scoring failed: {type(exc).__name__}"}
        return JobOutcome(jobs.finish(job_id, "failed", attempt, error=error))
    seconds = time.perf_counter() - started
    return JobOutcome("succeeded", rows, seconds)


def _score(rt: Runtime, jobs: JobStore, storage: LocalStorage, rec: dict[str, Any],
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
    input_path = storage.path(rec["input"]["key"])
    skip = options.get("on_error") == "skip"
    output_key = f"jobs/{job_id}/result.{out_fmt}"
    errors_key = f"jobs/{job_id}/errors.csv"
    rows_done = rows_failed = 0
    with ExitStack() as files:
        out_fh = files.enter_context(storage.writer(output_key))
        err_fh = files.enter_context(storage.writer(errors_key, "w")) if skip else None
        writer = OutputWriter(out_fh, out_fmt)
        errors = ErrorsWriter(err_fh) if err_fh else None
        for chunk in iter_chunks(input_path, fmt, types, columns, rt.settings.chunk_rows):
            checked = check_chunk(chunk.table, chunk.start_row, features)
            if checked.errors:
                if errors is None:
                    raise _row_error(checked.errors[0], len(checked.errors))
                errors.write(checked.errors)
            writer.write(output_table(loaded, checked, id_column,
                                      bool(options.get("include_input"))))
            rows_done += chunk.table.num_rows
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
                        errors_key=errors_key if skip else None)
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
    return output_table(loaded, empty, id_column, False)
