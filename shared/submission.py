"""Accepting a batch job: options, the stored upload's checks, the record, the queue."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic import ValidationError as PydanticValidationError

from shared.errors import (
    PayloadTooLargeError,
    QueueUnavailableError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from shared.jobs import JobStore, new_job_id
from shared.metrics import JOBS_SUBMITTED
from shared.runtime import Runtime
from shared.storage import LocalStorage
from shared.tables import InputFormat, inspect_input

logger = logging.getLogger(__name__)

COPY_BYTES = 1024 * 1024
CSV_TYPES = {"text/csv", "application/csv", "text/plain"}
PARQUET_TYPES = {"application/vnd.apache.parquet", "application/x-parquet",
                 "application/parquet"}


class JobOptions(BaseModel):
    """Options of POST /jobs, from form fields or query parameters."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = None
    output_format: Literal["csv", "parquet", "jsonl"] | None = None
    include_input: bool = False
    id_column: str | None = None
    on_error: Literal["fail", "skip"] = "fail"

    @field_validator("id_column", "model")
    @classmethod
    def _non_empty(cls, value: str | None) -> str | None:
        return value or None


def parse_options(values: Mapping[str, str]) -> JobOptions:
    """Validate job options; a 422 names each bad field."""
    try:
        return JobOptions.model_validate(dict(values))
    except PydanticValidationError as exc:
        details = [{"field": ".".join(str(p) for p in e["loc"]) or "options",
                    "message": e["msg"]} for e in exc.errors()]
        names = ", ".join(d["field"] for d in details)
        raise ValidationError(f"invalid job options: {names}", details=details) from None


def format_of(content_type: str | None, filename: str | None) -> InputFormat:
    """csv or parquet, from the part's content type or the file name."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime in PARQUET_TYPES:
        return "parquet"
    if mime in CSV_TYPES:
        return "csv"
    suffix = Path(filename or "").suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".txt"):
        return "csv"
    raise UnsupportedMediaTypeError(
        f"cannot tell the file's format from content type {mime or 'none'!r} and name "
        f"{filename!r}: send text/csv or application/vnd.apache.parquet"
    )


def copy_limited(src: IO[bytes], dst: IO[bytes], limit: int) -> int:
    """Copy a stream in 1 MiB pieces; 413 once it passes limit bytes."""
    total = 0
    while True:
        piece = src.read(COPY_BYTES)
        if not piece:
            return total
        total += len(piece)
        if total > limit:
            raise PayloadTooLargeError(f"the upload is larger than the limit of {limit} bytes")
        dst.write(piece)


def submit_job(rt: Runtime, jobs: JobStore, storage: LocalStorage, celery: Any,
               staged: Path, fmt: InputFormat, filename: str | None,
               options: JobOptions) -> dict[str, Any]:
    """Check a staged upload against the pinned model, store it, record and queue the job."""
    from shared.queue import send_score_job

    loaded = rt.models.resolve(options.model, rt.settings.default_model)
    manifest = loaded.manifest
    info = inspect_input(staged, fmt, manifest.schema_, options.id_column)
    job_id = new_job_id()
    key = f"jobs/{job_id}/input.{fmt}"
    storage.adopt(staged, key)
    opts = options.model_dump()
    opts["output_format"] = options.output_format or fmt
    opts["model"] = manifest.ref
    fields = {
        "model": {"name": manifest.name, "version": manifest.version},
        "options": opts,
        "input": {"name": filename or f"input.{fmt}", "format": fmt, "key": key,
                  "size_bytes": info.size_bytes, "columns": info.columns},
        "rows_total": info.rows_total,
        "bytes_total": info.size_bytes,
    }
    try:
        record = jobs.create(job_id, fields)
    except QueueUnavailableError:
        storage.delete_prefix(f"jobs/{job_id}")
        raise
    try:
        send_score_job(celery, rt.settings, job_id)
    except Exception as exc:  # broker down between the record and the send
        logger.error("job %s: could not be queued: %s", job_id, exc)
        jobs.finish(job_id, "failed", error={"code": "queue_unavailable",
                                             "message": "the job could not be queued"})
        storage.delete_prefix(f"jobs/{job_id}")
        raise QueueUnavailableError("the job queue is not reachable; try again later") from None
    JOBS_SUBMITTED.labels(manifest.name, str(manifest.version)).inc()
    logger.info("job %s: queued for %s (%s, %d bytes)", job_id, manifest.ref, fmt,
                info.size_bytes, extra={"job_id": job_id, "model_version": manifest.ref})
    return record
