"""A small client for the jobs API, used by the tests."""

from __future__ import annotations

import io
import time

import orjson
import pandas as pd
import pyarrow.parquet as pq
import requests

CONTENT_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def submit(url: str, data: bytes, fmt: str = "csv", multipart: bool = True,
           headers: dict[str, str] | None = None, **options):
    """POST /jobs; returns the response."""
    if multipart:
        files = {"file": (f"input.{fmt}", data, CONTENT_TYPES[fmt])}
        return requests.post(url + "/jobs", files=files, data=options, timeout=120,
                             headers=headers)
    return requests.post(url + "/jobs", data=data, params=options, timeout=120,
                         headers={"Content-Type": CONTENT_TYPES[fmt], **(headers or {})})


def wait_job(url: str, job_id: str, timeout: float = 120, until=("succeeded", "failed",
                                                                  "cancelled"),
             interval: float = 0.05, headers: dict[str, str] | None = None):
    """Poll GET /jobs/<id> every `interval` seconds until its status is one of `until`."""
    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{url}/jobs/{job_id}", timeout=10, headers=headers).json()
        if job["status"] in until:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s: {job}")
        time.sleep(interval)


def read_result(url: str, job_id: str,
                headers: dict[str, str] | None = None) -> tuple[pd.DataFrame, requests.Response]:
    """Download a job's result and parse it by its content type."""
    r = requests.get(f"{url}/jobs/{job_id}/result", timeout=120, headers=headers)
    assert r.status_code == 200, r.text
    kind = r.headers["Content-Type"].split(";")[0]
    if kind == "text/csv":
        return pd.read_csv(io.BytesIO(r.content)), r
    if kind == "application/vnd.apache.parquet":
        return pq.read_table(io.BytesIO(r.content)).to_pandas(), r
    assert kind == "application/x-ndjson", kind
    return pd.DataFrame([orjson.loads(line) for line in r.content.splitlines()]), r


def file_bytes(frame: pd.DataFrame, fmt: str, row_group_size: int | None = None) -> bytes:
    """A DataFrame as the bytes of a CSV or Parquet file."""
    buf = io.BytesIO()
    if fmt == "csv":
        frame.to_csv(buf, index=False)
    else:
        frame.to_parquet(buf, index=False, row_group_size=row_group_size)
    return buf.getvalue()
