"""A raw-body CSV upload is scored while it arrives (shared.jobs.arrival), and every way it
can break ends in a clear state: the job succeeds with every row exactly once, or fails with
`upload_interrupted` and keeps no half-written result.

Real processes throughout (redis-server, gunicorn, Celery workers); the uploads are sent by
hand over a socket so that a test can pause one half-way, or drop it.
"""

from __future__ import annotations

import http.client
import io
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import psutil
import pytest
import requests

from shared.jobs.arrival import ArrivingFile, UploadInterruptedError, marker_path
from tests.jobclient import wait_job
from tests.jobstack import LEASE, Stack, _csv, _ledger, _pool_children
from tests.servers import wait_until

REDIS_DB, QUEUE = 2, "arrival"  # the job_stack fixtures' own database and queue
ROWS = 40_000  # ~22 MB of CSV: past TABSERVE_STREAM_UPLOAD_MIN_BYTES (8 MiB)


@pytest.fixture
def body(demo_data) -> bytes:
    return _csv(demo_data, ROWS)


class Upload:
    """POST /jobs with a Content-Length, its body sent in pieces when the test says."""

    def __init__(self, url: str, body: bytes, query: str = "id_column=key") -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        self.conn.putrequest("POST", f"/jobs?{query}")
        self.conn.putheader("Content-Type", "text/csv")
        self.conn.putheader("Content-Length", str(len(body)))
        self.conn.endheaders()
        self.body, self.sent = body, 0

    def send(self, upto: int) -> None:
        self.conn.send(self.body[self.sent:upto])
        self.sent = upto

    def answer(self) -> tuple[int, dict]:
        self.send(len(self.body))
        response = self.conn.getresponse()
        return response.status, orjson.loads(response.read())

    def drop(self) -> None:
        self.conn.close()


def _arriving_job(s: Stack) -> dict:
    """The job the upload made before its answer: the only one of the module's."""
    found: list[dict] = []

    def listed() -> bool:
        found[:] = requests.get(s.api.url + "/jobs", timeout=10).json()["jobs"]
        return len(found) == 1
    wait_until(listed, 30, "the job to be queued while its upload arrives")
    return found[0]


def _scoring_before_the_end(s: Stack, up: Upload) -> dict:
    """Send 40% of the body, and wait until the job has scored rows of it."""
    up.send(len(up.body) * 2 // 5)
    job = _arriving_job(s)
    wait_until(lambda: s.record(job["id"]).rows_done > 0, 60, "rows scored before the end")
    assert s.record(job["id"]).status == "running"
    return job


def test_a_csv_upload_is_scored_while_it_arrives(job_stack, body):
    s = job_stack()
    s.worker("w1")
    up = Upload(s.api.url, body)
    job = _scoring_before_the_end(s, up)
    assert job["input"]["streamed"] is True
    assert job["input"]["size_bytes"] == len(body)
    done_early = s.record(job["id"]).rows_done
    assert 0 < done_early < ROWS
    status, answer = up.answer()
    assert status == 202 and answer["id"] == job["id"], answer
    done = wait_job(s.api.url, job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    _ledger(s.api.url, job["id"], ROWS)
    assert s.job_files(job["id"]) == ["input.csv", "job.json", "result.csv"]
    stored = Path(s.settings.data_dir) / "jobs" / job["id"] / "input.csv"
    assert stored.read_bytes() == body


def test_a_client_gone_mid_upload_fails_its_job_and_keeps_nothing(job_stack, body):
    s = job_stack()
    s.worker("w1")
    up = Upload(s.api.url, body)
    job = _scoring_before_the_end(s, up)
    up.drop()
    done = wait_job(s.api.url, job["id"], timeout=60)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "upload_interrupted", done
    assert "the client went away" in done["error"]["message"] \
        or "upload ended after" in done["error"]["message"], done
    assert requests.get(f"{s.api.url}/jobs/{job['id']}/result", timeout=10).status_code == 409
    # The partial input and its marker are gone; the worker's files are removed as it stops.
    wait_until(lambda: s.job_files(job["id"]) == ["job.json"], 30,
               f"only the record left, not {s.job_files(job['id'])}")


def test_a_worker_killed_while_it_follows_an_upload_is_resumed_exactly_once(job_stack, body):
    s = job_stack()
    worker = s.worker("w1")
    up = Upload(s.api.url, body)
    job = _scoring_before_the_end(s, up)
    for child in _pool_children(worker):
        child.kill()
    status, answer = up.answer()  # the upload completes while no attempt runs
    assert status == 202, answer
    done = wait_job(s.api.url, job["id"], timeout=LEASE + 90)
    assert done["status"] == "succeeded" and done["attempts"] >= 2, done
    _ledger(s.api.url, job["id"], ROWS)


def test_an_api_process_killed_mid_upload_fails_the_job_once_the_file_stops_growing(
        job_stack, body):
    s = job_stack(upload_stall_seconds=3)  # the worker's setting
    s.worker("w1")
    up = Upload(s.api.url, body)
    job = _scoring_before_the_end(s, up)
    for child in psutil.Process(s.api.pid).children():  # gunicorn's workers; it starts anew
        child.kill()
    done = wait_job(s.api.url, job["id"], timeout=60)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "upload_interrupted", done
    assert "stopped arriving" in done["error"]["message"], done
    assert requests.get(f"{s.api.url}/jobs/{job['id']}/result", timeout=10).status_code == 409
    up.drop()


def test_small_parquet_and_idempotent_uploads_wait_for_their_whole_file(job_stack, body,
                                                                         demo_data):
    s = job_stack()
    s.worker("w1")
    small = _csv(demo_data, 2_000)  # under TABSERVE_STREAM_UPLOAD_MIN_BYTES
    for data, headers in ((small, {}), (body, {"Idempotency-Key": "whole-file"})):
        r = requests.post(s.api.url + "/jobs?id_column=key", data=data, timeout=120,
                          headers={"Content-Type": "text/csv", **headers})
        assert r.status_code == 202, r.text
        assert "streamed" not in r.json()["input"]
        assert wait_job(s.api.url, r.json()["id"])["status"] == "succeeded"


# --- the reader, in process ---------------------------------------------------------------


def _writer(path: Path, data: bytes, pieces: int, pause: float, finish: bool = True) -> None:
    with open(path, "ab") as fh:
        step = len(data) // pieces + 1
        for i in range(0, len(data), step):
            time.sleep(pause)
            fh.write(data[i:i + step])
            fh.flush()
    if finish:
        marker_path(path).unlink()


def _arriving(tmp_path: Path, data: bytes, stall: float = 5.0) -> tuple[Path, io.BufferedReader]:
    path = tmp_path / "input.csv"
    path.write_bytes(b"")
    marker_path(path).touch()
    return path, io.BufferedReader(ArrivingFile(path, len(data), stall), buffer_size=1 << 16)


def test_a_read_past_the_written_bytes_waits_for_them(tmp_path):
    data = bytes(range(256)) * 4000
    path, fh = _arriving(tmp_path, data)
    writer = threading.Thread(target=_writer, args=(path, data, 20, 0.01))
    writer.start()
    assert fh.seek(0, io.SEEK_END) == len(data)  # its announced size, before it is there
    fh.seek(0)
    assert fh.read() == data
    writer.join()
    fh.close()


def test_a_file_whose_marker_goes_before_its_end_is_an_interrupted_upload(tmp_path):
    data = b"x" * 100_000
    path, fh = _arriving(tmp_path, data)
    _writer(path, data[:40_000], 2, 0)  # and the marker removed: the upload broke
    with pytest.raises(UploadInterruptedError, match="ended after 40000 of its 100000"):
        fh.read()


def test_a_file_that_stops_growing_is_an_interrupted_upload(tmp_path):
    data = b"x" * 100_000
    path, fh = _arriving(tmp_path, data, stall=0.3)
    _writer(path, data[:10_000], 1, 0, finish=False)
    started = time.monotonic()
    with pytest.raises(UploadInterruptedError, match="stopped arriving after 10000"):
        fh.read()
    assert time.monotonic() - started >= 0.3


# --- the Python client sends CSV files so, and names them --------------------------------


def test_the_client_sends_a_csv_file_as_the_body_and_it_is_scored_as_it_arrives(
        job_stack, body, tmp_path):
    from tabserve_client import Client

    s = job_stack()
    s.worker("w1")
    source = tmp_path / "déjà vu.csv"
    source.write_bytes(body)
    sent: list[int] = []
    client = Client(s.api.url)
    job = client.submit_job(source, id_column="key", output_format="csv",
                            progress=lambda done, total: sent.append(total))
    assert job.raw["input"]["streamed"] is True and job.raw["input"]["name"] == "déjà vu.csv"
    assert job.raw["options"]["output_format"] == "csv" and sent[-1] == len(body)
    client.wait(job.id, timeout=120, interval=0.1)
    saved = client.download(job.id, tmp_path)
    assert saved.name == "déjà vu-predictions.csv"
    _ledger(s.api.url, job.id, ROWS)


def test_a_raw_body_names_its_file_in_content_disposition(job_stack, demo_data):
    s = job_stack()
    s.worker("w1")
    r = requests.post(s.api.url + "/jobs", data=_csv(demo_data, 50), timeout=60, headers={
        "Content-Type": "text/csv",
        "Content-Disposition": 'attachment; filename="../../etc/march.csv"'})
    assert r.status_code == 202, r.text
    assert r.json()["input"]["name"] == "march.csv"


def test_a_large_body_refused_on_its_first_bytes_leaves_no_job_behind(job_stack, body):
    s = job_stack()
    header, rest = body.split(b"\n", 1)
    wrong = header.replace(b"mean radius", b"mean radios") + b"\n" + rest
    r = requests.post(s.api.url + "/jobs?id_column=key", data=wrong, timeout=120,
                      headers={"Content-Type": "text/csv"})
    assert r.status_code == 422 and "mean radius" in r.json()["error"]["message"], r.text
    jobs_dir = Path(s.settings.data_dir) / "jobs"
    assert not jobs_dir.exists() or not any(jobs_dir.iterdir())
    assert requests.get(s.api.url + "/jobs", timeout=10).json()["jobs"] == []
