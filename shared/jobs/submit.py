"""Accepting a batch job: options, the input's checks (an upload or an input_url), the record,
the queue."""

from __future__ import annotations

import codecs
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from shared.diskspace import check_free_space
from shared.errors import (
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    QueueUnavailableError,
    TabserveError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from shared.jobs import paths
from shared.jobs.arrival import START_BYTES, ArrivingUpload, estimated_rows
from shared.jobs.callbacks import check_callback_url
from shared.jobs.csvblocks import MAX_LINE_BYTES, CsvDialect
from shared.jobs.inputs import (
    DELIMITERS,
    InputFormat,
    InputInfo,
    InputLimits,
    column_limit,
    inspect_input,
)
from shared.jobs.queue import send_score_job
from shared.jobs.record import FINAL, Job, JobError, new_job
from shared.jobs.store import new_job_id
from shared.models.manifest import Manifest
from shared.monitoring.metrics import JOBS_SUBMITTED, init_job_series
from shared.redisguard import redis_errors
from shared.storage import Storage, local_dirs

if TYPE_CHECKING:
    from shared.services import Services

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

COPY_BYTES = 1024 * 1024
CSV_TYPES = {"text/csv", "application/csv", "text/plain"}
PARQUET_TYPES = {"application/vnd.apache.parquet", "application/x-parquet",
                 "application/parquet"}
DELIMITER_NAMES = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t", "pipe": "|"}
# Encodings whose line ends, quotes and delimiters are the ASCII bytes (blocks are cut on
# bytes): Python codec name -> the name a job records.
ENCODINGS = {"utf-8": "utf-8", "utf-8-sig": "utf-8", "ascii": "utf-8", "cp1252": "cp1252",
             "iso8859-1": "latin-1", "iso8859-15": "iso-8859-15"}


class JobOptions(BaseModel):
    """Options of POST /jobs, from form fields or query parameters."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = None
    output_format: Literal["csv", "parquet", "jsonl"] | None = None
    include_input: bool = False
    id_column: str | None = None
    on_error: Literal["fail", "skip"] = "fail"
    delimiter: str | None = None
    encoding: str = "utf-8"
    decimal: Literal[".", ","] = "."
    # Seconds from the job's first start to its failure with `timeout`; at most the
    # TABSERVE_JOB_TIME_LIMIT_MAX_SECONDS setting (checked at submit).
    time_limit_seconds: int | None = Field(None, ge=1)
    # Check the input against the model and answer what was found; no job, nothing stored.
    validate_only: bool = False
    callback_url: str | None = Field(
        None, description="POSTed the job's record, signed, when it ends (its host must be "
        "in TABSERVE_CALLBACK_HOSTS; docs/security.md)")

    @field_validator("id_column", "model", "delimiter", "callback_url")
    @classmethod
    def _non_empty(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, value: str | None) -> str | None:
        value = DELIMITER_NAMES.get(value.lower(), value) if value else None
        if value is not None and value not in DELIMITERS:
            raise ValueError("the delimiter must be one of , ; | or tab")
        return value

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        try:
            name = codecs.lookup(value).name
        except LookupError:
            name = ""
        if name not in ENCODINGS:
            raise ValueError("the encoding must be one of "
                             + ", ".join(sorted(set(ENCODINGS.values()))))
        return ENCODINGS[name]

    def dialect(self, max_line_bytes: int) -> CsvDialect:
        """The CSV dialect these options give (a comma unless the header says otherwise)."""
        return CsvDialect(self.delimiter or ",", self.encoding, max_line_bytes, self.decimal)


class InputSource(BaseModel):
    """The input of a JSON job request: a file already in the store."""

    model_config = ConfigDict(extra="forbid")

    input_url: str
    format: Literal["csv", "parquet"] | None = None


class InputURLForbiddenError(TabserveError):
    status = 403
    code = "input_url_forbidden"


class InputNotFoundError(NotFoundError):
    code = "input_not_found"


def parse_options(values: Mapping[str, Any]) -> JobOptions:
    """Validate job options; a 422 names each bad field."""
    return _validated(JobOptions, values, "invalid job options")


def parse_url_request(body: Any, query: Mapping[str, str]) -> tuple[InputSource, JobOptions]:
    """Split a JSON job request (query parameters beneath) into its input and its options."""
    if not isinstance(body, dict):
        raise ValidationError('the JSON body must be an object: {"input_url": "...", ...}')
    values = {**query, **body}
    names = InputSource.model_fields.keys()
    source = _validated(InputSource, {k: v for k, v in values.items() if k in names},
                        "invalid job input")
    return source, parse_options({k: v for k, v in values.items() if k not in names})


def _validated(model: type[M], values: Mapping[str, Any], what: str) -> M:
    try:
        return model.model_validate(dict(values))
    except PydanticValidationError as exc:
        details = [{"field": ".".join(str(p) for p in e["loc"]) or "options",
                    "message": e["msg"]} for e in exc.errors()]
        names = ", ".join(d["field"] for d in details)
        raise ValidationError(f"{what}: {names}", details=details) from None


def format_of(content_type: str | None, filename: str | None) -> InputFormat:
    """csv or parquet, from the part's content type or the file name."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime in PARQUET_TYPES:
        return "parquet"
    if mime in CSV_TYPES:
        return "csv"
    fmt = _format_of_name(filename or "")
    if fmt is not None:
        return fmt
    raise UnsupportedMediaTypeError(
        f"cannot tell the file's format from content type {mime or 'none'!r} and name "
        f"{filename!r}: send text/csv or application/vnd.apache.parquet"
    )


def copy_limited(src: IO[bytes], dst: IO[bytes], limit: int,
                 written: Callable[[int], None] | None = None,
                 expected: int | None = None) -> int:
    """Copy a stream in 1 MiB pieces; 413 once it passes limit bytes (max_upload_bytes),
    400 when it ends before the `expected` bytes (its Content-Length: the client went away;
    gunicorn ends such a body quietly). `written(total)` is called after each piece."""
    total = 0
    while True:
        piece = src.read(COPY_BYTES)
        if not piece:
            if expected is not None and total < expected:
                raise BadRequestError(f"the body ended after {total} of its {expected} bytes "
                                      "(Content-Length): the client went away")
            return total
        total += len(piece)
        if total > limit:
            raise PayloadTooLargeError(f"the upload is larger than the limit of {limit} bytes "
                                       "(TABSERVE_MAX_UPLOAD_BYTES)")
        dst.write(piece)
        if written is not None:
            written(total)


def check_upload_room(rt: Services, incoming: int) -> None:
    """507 when storing `incoming` more bytes would leave the staging or data directory
    below the free-space reserve (TABSERVE_MIN_FREE_BYTES)."""
    check_free_space(local_dirs(rt.settings).values(), rt.settings.min_free_bytes, incoming)


def input_limits(rt: Services, manifest: Manifest) -> InputLimits:
    settings = rt.settings
    columns = column_limit(settings.max_input_columns, len(manifest.features))
    return InputLimits(settings.max_job_rows, columns, settings.max_parquet_row_group_bytes,
                       settings.max_parquet_metadata_bytes)


def check_header_width(fh: IO[bytes], fmt: InputFormat, manifest: Manifest,
                       max_columns: int) -> None:
    """422 for a CSV header with far more columns than the model has features, counted on
    the raw line before anything parses it (parsing a header costs per column: a 100,000
    column one held an API worker for seconds). The count is that of the most frequent
    delimiter, an upper bound whatever the file's dialect."""
    if fmt != "csv":
        return
    fh.seek(0)
    header = fh.readline(MAX_LINE_BYTES)  # the file's other faults are inspect_input's
    fh.seek(0)
    columns = max(header.count(d) for d in (b",", b";", b"\t", b"|")) + 1
    limit = column_limit(max_columns, len(manifest.features))
    if columns > limit:
        raise ValidationError(
            f"the CSV header has {columns} columns; model {manifest.ref} accepts at most "
            f"{limit} ({len(manifest.features)} features and other columns; "
            "TABSERVE_MAX_INPUT_COLUMNS)",
            details=[{"field": "header", "message": f"{columns} columns, at most {limit}"}])


def submit_job(rt: Services, staged: Path, fmt: InputFormat, filename: str | None,
               options: JobOptions, owner: str | None = None,
               job_id: str | None = None) -> Job:
    """Check a staged upload against the pinned model, store it, record and queue the job
    (as `owner`'s: the name of the key that sent it; `job_id`: one already chosen)."""
    manifest, info = inspect_upload(rt, staged, fmt, options)
    job_id = job_id or new_job_id()
    _reserve(rt, owner, job_id)
    key = paths.upload(job_id, fmt)
    rt.storage.adopt(staged, key)
    source = {"name": filename or f"input.{fmt}", "key": key}
    return _record_and_queue(rt, job_id, manifest, options, info, source, owner)


def start_arriving(rt: Services, upload: ArrivingUpload, options: JobOptions,
                   filename: str | None = None, owner: str | None = None) -> Job | None:
    """Queue a CSV upload's job from the file's first bytes, to be scored as the rest
    arrives (shared.jobs.arrival); None when it must wait for the whole file: its header is
    not in yet, it would be cut into parts for several workers, or it cannot be moved in
    place."""
    upload.fh.flush()
    with open(upload.staged, "rb") as fh:
        head = fh.read(START_BYTES)
    if b"\n" not in head:
        return None
    settings = rt.settings
    if settings.part_rows and estimated_rows(head, upload.size) > settings.part_rows:
        with redis_errors():
            if rt.jobs.counts().workers >= 2:
                return None
    job_id = new_job_id()
    if not upload.can_move(job_id, "csv"):
        return None
    manifest, info = inspect_upload(rt, upload.staged, "csv", options, upload.size)
    _reserve(rt, owner, job_id)
    key = upload.move(job_id, "csv")
    source = {"name": filename or "input.csv", "key": key, "streamed": True}
    return _record_and_queue(rt, job_id, manifest, options, info, source, owner)


def stage_arriving(rt: Services, upload: ArrivingUpload, src: IO[bytes], out: IO[bytes],
                   limit: int, options: JobOptions, filename: str | None = None,
                   owner: str | None = None) -> Job | None:
    """Stage a raw CSV body (`out`: its staging file, as written), queueing its job once the
    first START_BYTES are in and checked (start_arriving); the job as the upload ended, or
    None when it waited for the whole file after all. A body that breaks after the job was
    queued fails the job (ArrivingUpload.abandon) before the error goes on."""
    job: Job | None = None
    written = 0

    def piece(total: int) -> None:
        nonlocal job, written
        written = total
        if job is not None:
            out.flush()  # the worker reads what is on disk
        elif total >= START_BYTES and not upload.declined:
            job = start_arriving(rt, upload, options, filename, owner)
            upload.declined = job is None

    try:
        copy_limited(src, out, limit, piece, upload.size)
    except BaseException as exc:
        if job is not None:
            upload.abandon(rt.jobs, exc.message if isinstance(exc, TabserveError)
                           else type(exc).__name__, written)
        raise
    if job is None:
        return None
    upload.finish()
    return rt.jobs.get(job.id)


def inspect_upload(rt: Services, staged: Path, fmt: InputFormat, options: JobOptions,
                   size: int | None = None) -> tuple[Manifest, InputInfo]:
    """The pinned model and what the staged file holds (`size`: the bytes it will hold,
    when it is still arriving); 422 when it does not fit the model."""
    _check_time_limit(options, rt.settings.job_time_limit_max_seconds)
    check_callback_url(options.callback_url, rt.settings)
    manifest = rt.models.resolve(options.model, rt.settings.default_model).manifest
    with open(staged, "rb") as fh:
        check_header_width(fh, fmt, manifest, rt.settings.max_input_columns)
        info = inspect_input(fh, staged.stat().st_size if size is None else size, fmt,
                             manifest.schema_,
                             options.id_column, options.dialect(rt.settings.max_line_bytes),
                             sniff=options.delimiter is None,
                             limits=input_limits(rt, manifest))
    return manifest, info


def _reserve(rt: Services, owner: str | None, job_id: str) -> None:
    # Counted against the key's cap before the job exists: 429 rather than a queued job.
    with redis_errors():
        rt.job_cap.reserve(owner, job_id)


def submit_input_url(rt: Services, source: InputSource, options: JobOptions,
                     owner: str | None = None, job_id: str | None = None) -> Job:
    """Check a file already in the store (an allowed input_url), record and queue the job."""
    manifest, info = inspect_input_url(rt, source, options)
    url = source.input_url
    name = url.rsplit("/", 1)[-1] or f"input.{info.format}"
    job_id = job_id or new_job_id()
    _reserve(rt, owner, job_id)
    # "url" marks an input the job does not own: it is never deleted with the job.
    return _record_and_queue(rt, job_id, manifest, options, info,
                             {"name": name, "key": url, "url": url}, owner)


def inspect_input_url(rt: Services, source: InputSource,
                      options: JobOptions) -> tuple[Manifest, InputInfo]:
    """The pinned model and what the file at an allowed input_url holds."""
    _check_time_limit(options, rt.settings.job_time_limit_max_seconds)
    check_callback_url(options.callback_url, rt.settings)
    storage = rt.storage
    url = source.input_url
    check_input_url(url, rt.settings.input_url_prefixes, storage)
    fmt = source.format or _format_of_url(url)
    manifest = rt.models.resolve(options.model, rt.settings.default_model).manifest
    try:
        size = storage.size(url)
        with storage.open(url) as fh:
            check_header_width(fh, fmt, manifest, rt.settings.max_input_columns)
            info = inspect_input(fh, size, fmt, manifest.schema_, options.id_column,
                                 options.dialect(rt.settings.max_line_bytes),
                                 sniff=options.delimiter is None,
                                 limits=input_limits(rt, manifest))
    except FileNotFoundError:
        raise InputNotFoundError(f"there is no file at input_url {url}") from None
    except PermissionError:
        raise InputURLForbiddenError(f"the store refused to read input_url {url}") from None
    return manifest, info


def check_input_url(url: str, allowed: str, storage: Storage) -> None:
    """403 unless url is under one of the comma-separated allowed prefixes; 422 if malformed."""
    prefixes = [p.strip() for p in allowed.split(",") if p.strip()]
    if not prefixes:
        raise InputURLForbiddenError(
            "input_url is disabled on this server (TABSERVE_INPUT_URL_PREFIXES is empty); "
            "upload the file instead")
    scheme, _, path = url.partition("://")
    segments = (path[1:] if scheme == "file" else path).split("/")  # file:///abs/path
    if not path or any(s in ("", ".", "..") for s in segments) or set("?#\\") & set(path):
        raise ValidationError(f"input_url {url!r} is not a plain URL of a file",
                              details=[{"field": "input_url", "message": "malformed"}])
    if not any(url.startswith(p if p.endswith("/") else p + "/") for p in prefixes):
        raise InputURLForbiddenError(f"input_url {url} is outside the prefixes this server "
                                     "accepts")
    if not storage.is_store_url(url):
        raise ValidationError(f"input_url must be a {storage.scheme}:// URL of the job store",
                              details=[{"field": "input_url", "message": f"not {scheme}://"}])


def _format_of_name(name: str) -> InputFormat | None:
    """csv or parquet from a file name's suffix; None when it says neither."""
    suffix = Path(name).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".txt"):
        return "csv"
    return None


def _format_of_url(url: str) -> InputFormat:
    fmt = _format_of_name(url)
    if fmt is not None:
        return fmt
    raise ValidationError(
        f"cannot tell the format of {url} from its suffix: add \"format\": \"csv\" or "
        "\"parquet\"", details=[{"field": "format", "message": "needed for this input_url"}])


def _check_time_limit(options: JobOptions, most: int) -> None:
    if options.time_limit_seconds is not None and options.time_limit_seconds > most:
        raise ValidationError(
            f"invalid job options: time_limit_seconds is over the maximum of {most}",
            details=[{"field": "time_limit_seconds", "message": f"at most {most}"}])


def _record_and_queue(rt: Services, job_id: str, manifest: Manifest, options: JobOptions,
                      info: InputInfo, source: dict[str, Any], owner: str | None) -> Job:
    opts = options.model_dump(exclude={"validate_only"})
    opts["output_format"] = options.output_format or info.format
    opts["model"] = manifest.ref
    dialect = {"delimiter": info.dialect.delimiter, "encoding": info.dialect.encoding,
               "decimal": info.dialect.decimal} if info.format == "csv" else {}
    job = new_job(job_id, {"name": manifest.name, "version": manifest.version}, opts,
                  {**source, "format": info.format, "size_bytes": info.size_bytes,
                   "columns": info.columns, **dialect}, info.rows_total, info.size_bytes,
                  owner)
    try:
        rt.jobs.create(job)  # its copy in storage first (shared.jobs.mirror), then Redis
    except Exception:  # Redis away, or no room for the copy: nothing of the job is kept
        rt.storage.delete_prefix(paths.job_dir(job_id))
        raise
    try:
        send_score_job(rt.celery, rt.settings, job_id)
    except Exception as exc:  # broker down between the record and the send
        logger.error("job %s: could not be queued: %s", job_id, exc)
        rt.jobs.fail(job_id, JobError("queue_unavailable", "the job could not be queued"))
        rt.storage.delete_prefix(paths.job_dir(job_id))
        raise QueueUnavailableError("the job queue is not reachable; try again later") from None
    JOBS_SUBMITTED.labels(manifest.name, str(manifest.version)).inc()
    init_job_series(manifest.name, str(manifest.version), FINAL)
    logger.info("job %s: queued for %s (%s, %d bytes)", job_id, manifest.ref, info.format,
                info.size_bytes, extra={"job_id": job_id, "model_version": manifest.ref})
    return job
