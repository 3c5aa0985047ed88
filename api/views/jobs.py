"""Batch jobs: submit a file, read status and progress, download results, cancel."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast
from urllib.parse import quote

from flask import Blueprint, Response, request, send_file
from werkzeug.http import parse_options_header

from api.upload import HashingWriter, end_body, guard_header
from api.views import json_body, json_response, limit_body, principal, runtime
from shared.errors import ResultGoneError, TabserveError, ValidationError
from shared.jobs.arrival import ArrivingUpload
from shared.jobs.idempotency import HEADER as IDEMPOTENCY_HEADER
from shared.jobs.idempotency import Fingerprint, check_key, submit_once
from shared.jobs.inputs import InputFormat
from shared.jobs.lifecycle import cancel_or_delete, finished_file, visible_job, visible_jobs
from shared.jobs.outputs import CONTENT_TYPES
from shared.jobs.record import Job, JobStatus
from shared.jobs.submit import (
    CSV_TYPES,
    JobOptions,
    check_upload_room,
    copy_limited,
    format_of,
    inspect_input_url,
    inspect_upload,
    parse_options,
    parse_url_request,
    stage_arriving,
    submit_input_url,
    submit_job,
)
from shared.jobs.validation import validation_report
from shared.redisguard import redis_errors as queue_errors
from shared.services import Services
from shared.storage import Storage, is_local

bp = Blueprint("jobs", __name__)


def _ping_queue() -> None:
    # Fail fast with 503 before taking an upload the queue cannot accept.
    with queue_errors():
        runtime().redis.ping()


@bp.post("/jobs")
def create_job() -> Response:
    rt = runtime()
    key = check_key(request.headers.get(IDEMPOTENCY_HEADER))
    _ping_queue()
    if request.mimetype != "application/json":
        return _create_from_upload(rt, key)
    # {"input_url": ...}: a file already stored
    limit_body(rt.settings.max_body_bytes, "TABSERVE_MAX_BODY_BYTES")
    source, options = parse_url_request(json_body(), request.args.to_dict())
    if options.validate_only:
        return json_response(validation_report(
            rt, options.model, lambda: inspect_input_url(rt, source, options)))
    fingerprint = Fingerprint().finish(source=source.model_dump(), options=options.model_dump())
    return _accepted(rt, key, fingerprint, lambda job_id: submit_input_url(
        rt, source, options, owner=principal().owner, job_id=job_id))


def _create_from_upload(rt: Services, key: str | None) -> Response:
    limit_body(rt.settings.max_upload_bytes, "TABSERVE_MAX_UPLOAD_BYTES")
    check_upload_room(rt, request.content_length or 0)  # 507 before a byte is staged
    try:
        try:
            staged, fmt, filename, hashed, arrived = _stage_upload(
                None if key else _arriving_options(rt))
        except TabserveError:
            end_body()  # refused before its end (a too wide CSV header): read no more of it
            raise
        if arrived is not None:  # queued while it arrived: scored already, maybe done
            return json_response(arrived.public(), status=202,
                                 headers={"Location": f"/jobs/{arrived.id}"})
        values = {**request.args.to_dict(), **request.form.to_dict()}
        options = parse_options(values)
        if options.validate_only:
            return json_response(validation_report(
                rt, options.model, lambda: inspect_upload(rt, staged, fmt, options)))
        fingerprint = hashed.finish(format=fmt, options=options.model_dump()) if hashed else ""
        return _accepted(rt, key, fingerprint, lambda job_id: submit_job(
            rt, staged, fmt, filename, options, owner=principal().owner, job_id=job_id))
    finally:
        for path in getattr(request, "staged", []):
            Path(path).unlink(missing_ok=True)  # already adopted into the store when accepted


def _accepted(rt: Services, key: str | None, fingerprint: str,
              submit: Callable[[str | None], Job]) -> Response:
    """202 and the job: a new one, or with an Idempotency-Key seen before, the job it made."""
    if key is None:
        job, replayed = submit(None), False
    else:
        job, replayed = submit_once(rt, principal().owner, key, fingerprint, submit)
    headers = {"Location": f"/jobs/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(job.public(), status=202, headers=headers)


def _arriving_options(rt: Services) -> JobOptions | None:
    """The options of a raw-body CSV upload large enough to be scored as it arrives
    (shared.jobs.arrival); None for any other (bad options are refused as before, once the
    body is in)."""
    size = request.content_length or 0
    least = rt.settings.stream_upload_min_bytes
    if not least or size < least or request.mimetype not in CSV_TYPES \
            or not is_local(rt.settings):
        return None
    try:
        options = parse_options(request.args.to_dict())
    except TabserveError:
        return None
    return None if options.validate_only else options


def _stage_upload(arriving: JobOptions | None = None
                  ) -> tuple[Path, InputFormat, str | None, Fingerprint | None, Job | None]:
    """The staged file, its format and name, its fingerprint when one was asked for, and
    the job when it was queued while the file arrived (`arriving`: its options)."""
    storage = runtime().storage
    if request.mimetype == "multipart/form-data":
        part = request.files.get("file")
        if part is None or not part.filename and part.content_length == 0:
            raise ValidationError('the multipart upload needs a "file" field',
                                  details=[{"field": "file", "message": "missing"}])
        part.stream.close()
        fmt = format_of(part.mimetype if part.mimetype != "application/octet-stream" else None,
                        part.filename)
        return (Path(part.stream.name), fmt, part.filename or None,
                getattr(part.stream, "fingerprint", None), None)
    fmt = format_of(request.mimetype, None)
    filename = _body_filename()
    path, fh = storage.staging_file()
    request.staged = [path]  # type: ignore[attr-defined]
    hashed = Fingerprint() if IDEMPOTENCY_HEADER in request.headers else None
    guarded = guard_header(fh, request.mimetype)
    out = cast(IO[bytes], HashingWriter(guarded, hashed)) if hashed else guarded
    limit = runtime().settings.max_upload_bytes
    if arriving is None:
        with out:
            copy_limited(request.stream, out, limit, expected=request.content_length)
        return path, fmt, filename, hashed, None
    upload = ArrivingUpload(storage, path, fh, request.content_length or 0)
    with out:
        job = stage_arriving(runtime(), upload, request.stream, out, limit, arriving,
                             filename, principal().owner)
    return path, fmt, filename, hashed, job


def _body_filename() -> str | None:
    """The file's name a raw body gives in `Content-Disposition: attachment;
    filename="big.csv"` (RFC 6266; `filename*` decoded), as the Python client sends it."""
    _, params = parse_options_header(request.headers.get("Content-Disposition", ""))
    name = "".join(c for c in params.get("filename", "") if c.isprintable())
    return Path(name.replace("\\", "/")).name[:255] or None


@bp.get("/jobs")
def list_jobs() -> Response:
    limit_raw = request.args.get("limit", "50")
    status_raw = request.args.get("status") or None
    statuses = [s.value for s in JobStatus]
    details = []
    if not (limit_raw.isascii() and limit_raw.isdigit() and len(limit_raw) <= 4) \
            or not 1 <= int(limit_raw) <= 1000:  # isdigit() alone accepts "²"
        details.append({"field": "limit", "message": "must be an integer from 1 to 1000"})
    if status_raw is not None and status_raw not in statuses:
        details.append({"field": "status", "message": f"must be one of {', '.join(statuses)}"})
    if details:
        raise ValidationError("invalid query: " + ", ".join(d["field"] for d in details),
                              details=details)
    status = JobStatus(status_raw) if status_raw else None
    jobs = visible_jobs(runtime(), principal(), limit=int(limit_raw), status=status)
    return json_response({"jobs": [j.public() for j in jobs]})


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    return json_response(visible_job(runtime(), job_id, principal()).public())


@bp.get("/jobs/<job_id>/result")
def get_result(job_id: str) -> Response:
    job = visible_job(runtime(), job_id, principal())
    key = finished_file(job, "result")
    output = job.output or {}
    fmt = output["format"]
    name = f"{_stem(job)}-predictions.{fmt}"
    if key is None:  # a split job's result: its parts, end to end, in input order
        return _send_parts(output["parts"], output["size_bytes"], CONTENT_TYPES[fmt], name)
    return _send_stored(key, CONTENT_TYPES[fmt], name, conditional=True)


@bp.get("/jobs/<job_id>/errors")
def get_errors(job_id: str) -> Response:
    job = visible_job(runtime(), job_id, principal())
    key = finished_file(job, "errors")
    assert key is not None
    return _send_stored(key, "text/csv", f"{_stem(job)}-errors.csv")


def _stem(job: Job) -> str:
    return Path(job.input["name"]).stem or "input"


def _send_stored(key: str, mimetype: str, name: str, conditional: bool = False) -> Response:
    """A stored file as an attachment: sendfile from a directory, streamed from a bucket."""
    storage = runtime().storage
    _check_stored(storage, [key])
    path = storage.local_path(key)
    if path is not None:
        return send_file(path, mimetype=mimetype, as_attachment=True, download_name=name,
                         conditional=conditional, etag=False)
    return _streamed(storage.iter_bytes(key), storage.size(key), mimetype, name)


def _send_parts(keys: list[str], size: int, mimetype: str, name: str) -> Response:
    """Stored files streamed one after another as one attachment."""
    storage = runtime().storage
    _check_stored(storage, keys)
    return _streamed((piece for key in keys for piece in storage.iter_bytes(key)), size,
                     mimetype, name)


def _check_stored(storage: Storage, keys: list[str]) -> None:
    # Checked before the answer starts: a missing file found mid-stream would cut it short.
    if not all(storage.exists(key) for key in keys):
        raise ResultGoneError("the job's file is no longer in storage (removed after the job "
                              "ended); submit the job again")


def _streamed(pieces: Iterator[bytes], size: int, mimetype: str, name: str) -> Response:
    response = Response(pieces, mimetype=mimetype, direct_passthrough=True)
    response.content_length = size
    response.headers.set("Content-Disposition", "attachment", **_filename_params(name))
    return response


def _filename_params(name: str) -> dict[str, str]:
    # As send_file does: an ASCII fallback, and RFC 5987 UTF-8 for other names.
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        simple = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
        return {"filename": simple, "filename*": f"UTF-8''{quote(name, safe='!#$&+^`|~')}"}
    return {"filename": name}


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str) -> Response:
    job = cancel_or_delete(runtime(), job_id, principal())
    return Response(status=204) if job is None else json_response(job.public())
