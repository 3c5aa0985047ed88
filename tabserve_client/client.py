"""Client: the tabserve HTTP API as Python calls."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote

import requests

from tabserve_client import frames
from tabserve_client.errors import (
    JobCancelledError,
    JobFailedError,
    RowsRunAsJobError,
    WaitTimeoutError,
)
from tabserve_client.jobs import CANCELLED, FAILED, Job
from tabserve_client.transport import Transport
from tabserve_client.uploads import FileBody, MultipartBody, content_disposition

DEFAULT_URL = "http://127.0.0.1:8000"
DOWNLOAD_PIECE = 1024 * 1024
BytesProgress = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)
JobProgress = Callable[[Job], None]
Source = str | os.PathLike[str] | IO[bytes] | Any  # a path, a binary file object, a DataFrame


class Client:
    """A client of one tabserve server.

    `url` and `api_key` default to TABSERVE_URL and TABSERVE_API_KEY (then
    http://127.0.0.1:8000, no key). `timeout` is seconds per request (connect, and each
    wait for the server's bytes); `retries` how often a GET is retried on a 503 or a
    connection error. One HTTP session is kept: close() it, or use `with Client() as c:`.
    """

    def __init__(self, url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5) -> None:
        url = url or os.environ.get("TABSERVE_URL") or DEFAULT_URL
        key = api_key if api_key is not None else os.environ.get("TABSERVE_API_KEY")
        self._http = Transport(url, key or None, timeout, retries, backoff)

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def session(self) -> requests.Session:
        """The requests.Session every call goes through."""
        return self._http.session

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session's connections."""
        self._http.close()

    # --- online predictions and models ---

    def predict(self, rows: Mapping[str, Any] | list[Mapping[str, Any]] | Any,
                model: str | None = None) -> dict[str, Any]:
        """Predictions for one row (a dict), many rows (a list of dicts) or a DataFrame.

        One row answers `prediction`, `probabilities`, `prediction_id`; many answer
        `predictions`, `probabilities` and `prediction_ids` in input order; both `model`."""
        if frames.is_frame(rows):
            body: dict[str, Any] = {"instances": frames.frame_rows(rows)}
        elif isinstance(rows, Mapping):
            body = {"features": dict(rows)}
        else:
            body = {"instances": list(rows)}
        params = {"model": model} if model else None
        response = self._http.request("POST", "/predict", json=body, params=params)
        if response.status_code == 202:  # over the online limit: the server queued a job
            raise RowsRunAsJobError(response.json()["id"])
        return response.json()

    def models(self) -> dict[str, Any]:
        """GET /models: every model's manifests (and those that cannot be read)."""
        return self._http.request("GET", "/models").json()

    def model(self, name: str) -> dict[str, Any]:
        """GET /models/<name>: one model's versions, with their feature schemas."""
        return self._http.request("GET", f"/models/{quote(name, safe='')}").json()

    # --- batch jobs ---

    def submit_job(self, source: Source, model: str | None = None,
                   output_format: str | None = None, id_column: str | None = None,
                   include_input: bool | None = None, on_error: str | None = None,
                   delimiter: str | None = None, encoding: str | None = None,
                   decimal: str | None = None, time_limit_seconds: int | None = None,
                   filename: str | None = None, progress: BytesProgress | None = None) -> Job:
        """Upload a CSV or Parquet file (a path, a binary file object, or a DataFrame, sent
        as a temporary Parquet file) and queue a job; the file is streamed, never read
        whole. `progress(sent, total)` is called as the upload's bytes go out."""
        options = {"model": model, "output_format": output_format, "id_column": id_column,
                   "include_input": include_input, "on_error": on_error,
                   "delimiter": delimiter, "encoding": encoding, "decimal": decimal,
                   "time_limit_seconds": time_limit_seconds}
        fields = {k: _form_value(v) for k, v in options.items() if v is not None}
        if frames.is_frame(source):
            temp = frames.frame_to_parquet(source)
            try:
                return self.submit_job(temp, filename=filename or "dataframe.parquet",
                                       progress=progress, **options)  # type: ignore[arg-type]
            finally:
                temp.unlink(missing_ok=True)
        if isinstance(source, str | os.PathLike):
            with open(source, "rb") as fh:
                return self._upload(fh, filename or Path(source).name, fields, progress)
        name = filename or Path(str(getattr(source, "name", "") or "input")).name
        return self._upload(source, name, fields, progress)

    def _upload(self, fh: IO[bytes], filename: str, fields: dict[str, str],
                progress: BytesProgress | None) -> Job:
        content_type = _content_type(filename)
        if content_type == frames.CONTENT_TYPES["csv"]:
            # The file as the body, its options in the query: the server starts scoring a
            # large CSV file while the rest of it is still arriving.
            raw = FileBody(fh, content_type, progress)
            response = self._http.request("POST", "/jobs", data=raw, params=fields, headers={
                "Content-Type": content_type,
                "Content-Disposition": content_disposition(filename)})
            return Job.from_json(response.json())
        body = MultipartBody(fh, filename, content_type, fields, progress)
        response = self._http.request("POST", "/jobs", data=body,
                                      headers={"Content-Type": body.content_type})
        return Job.from_json(response.json())

    def get_job(self, job_id: str) -> Job:
        """GET /jobs/<id>: the job's status, progress and error."""
        return Job.from_json(self._http.request("GET", _job_path(job_id)).json())

    def list_jobs(self, limit: int = 50, status: str | None = None) -> list[Job]:
        """The most recent jobs (those this key may see), newest first."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        body = self._http.request("GET", "/jobs", params=params).json()
        return [Job.from_json(j) for j in body["jobs"]]

    def wait(self, job_id: str, timeout: float | None = None,
             progress: JobProgress | None = None, interval: float = 0.5) -> Job:
        """Poll the job every `interval` seconds until it ends; `progress(job)` sees each
        record. Returns the succeeded job; raises JobFailedError, JobCancelledError, or
        WaitTimeoutError after `timeout` seconds (the job goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if progress is not None:
                progress(job)
            if job.finished:
                if job.status == FAILED:
                    raise JobFailedError(job)
                if job.status == CANCELLED:
                    raise JobCancelledError(job)
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(job, timeout or 0.0)
            pause = interval if deadline is None else min(interval, deadline - time.monotonic())
            time.sleep(max(pause, 0.0))

    def download(self, job_id: str, path: str | os.PathLike[str] | None = None,
                 progress: BytesProgress | None = None) -> Any:
        """A succeeded job's result: streamed to `path` (a file, or a directory for the
        server's file name), returning the Path; or with no path, as a DataFrame."""
        return self._fetch(_job_path(job_id) + "/result", path, progress)

    def errors(self, job_id: str, path: str | os.PathLike[str] | None = None,
               progress: BytesProgress | None = None) -> Any:
        """The rows a job with on_error=skip left out (row, field, message): to `path`, or
        as a DataFrame."""
        return self._fetch(_job_path(job_id) + "/errors", path, progress)

    def cancel(self, job_id: str) -> Job | None:
        """DELETE /jobs/<id>: a queued or running job is cancelled (its record returned);
        a finished job is deleted with its files (None)."""
        response = self._http.request("DELETE", _job_path(job_id))
        return None if response.status_code == 204 else Job.from_json(response.json())

    def _fetch(self, url_path: str, path: str | os.PathLike[str] | None,
               progress: BytesProgress | None) -> Any:
        with self._http.request("GET", url_path, stream=True) as response:
            content_type = response.headers.get("Content-Type", "")
            if path is None:
                temp = frames.temp_path(content_type)
                try:
                    _save(response, temp, progress)
                    return frames.read_frame(temp, content_type)
                finally:
                    temp.unlink(missing_ok=True)
            target = Path(path)
            if target.is_dir():
                target = target / _attachment_name(response, url_path)
            _save(response, target, progress)
            return target


def _save(response: requests.Response, target: Path, progress: BytesProgress | None) -> None:
    """Stream the body into target, through a .part file moved into place when complete."""
    total = int(response.headers["Content-Length"]) if "Content-Length" in response.headers \
        else None
    partial = target.with_name(target.name + ".part")
    done = 0
    try:
        with open(partial, "wb") as fh:
            for piece in response.iter_content(DOWNLOAD_PIECE):
                fh.write(piece)
                done += len(piece)
                if progress is not None:
                    progress(done, total)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _attachment_name(response: requests.Response, url_path: str) -> str:
    header = response.headers.get("Content-Disposition", "")
    utf8 = re.search(r"filename\*=UTF-8''([^;]+)", header)
    plain = re.search(r'filename="?([^";]+)"?', header)
    name = unquote(utf8.group(1)) if utf8 else plain.group(1) if plain else ""
    return Path(name).name or url_path.strip("/").replace("/", "-")


def _job_path(job_id: str) -> str:
    return f"/jobs/{quote(job_id, safe='')}"


def _content_type(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    return {".csv": frames.CONTENT_TYPES["csv"], ".parquet": frames.CONTENT_TYPES["parquet"],
            ".pq": frames.CONTENT_TYPES["parquet"]}.get(suffix, "application/octet-stream")


def _form_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
