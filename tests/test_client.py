"""tabserve_client against a live stack: a real gunicorn, a real Celery worker, real Redis."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

import tabserve_client
from shared.jobs.record import FINAL, JobStatus
from tabserve_client import (
    AuthenticationError,
    Client,
    ConflictError,
    JobCancelledError,
    JobFailedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RowsRunAsJobError,
    ServiceUnavailableError,
    TabserveConnectionError,
    UnsupportedMediaTypeError,
    ValidationError,
    WaitTimeoutError,
)
from tests.servers import ROOT, ApiServer, free_port, tabserve_env

SERVER_PACKAGES = ("flask", "celery", "werkzeug", "kombu", "pandas", "pyarrow")


@pytest.fixture
def client(api_server, worker, redis_client):
    with Client(api_server.url, timeout=30) as c:
        yield c


@pytest.fixture
def csv_file(customer_frame, tmp_path):
    path = tmp_path / "customers.csv"
    customer_frame.to_csv(path, index=False)
    return path


def _counting(client: Client) -> list[str]:
    """The method and status of every response the client's session receives."""
    seen: list[str] = []
    client.session.hooks["response"].append(
        lambda r, *a, **k: seen.append(f"{r.request.method} {r.status_code}"))
    return seen


def test_the_client_imports_without_server_or_dataframe_packages():
    code = ("import sys, tabserve_client; tabserve_client.Client('http://127.0.0.1:1'); "
            f"print(sorted(m for m in {SERVER_PACKAGES!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_the_clients_job_statuses_are_the_servers():
    assert tabserve_client.STATUSES == tuple(s.value for s in JobStatus)
    assert tabserve_client.FINAL == {s.value for s in FINAL}


def test_predict_one_row_many_rows_and_a_dataframe(client, demo_rows, customer_frame):
    one = client.predict(demo_rows[0])
    assert one["prediction"] in (0, 1) and set(one["probabilities"]) == {"0", "1"}
    assert one["model"] == {"name": "breast-cancer", "version": 1} and one["prediction_id"]

    many = client.predict(demo_rows[:50], model="breast-cancer:1")
    assert len(many["predictions"]) == len(many["prediction_ids"]) == 50
    assert many["predictions"][0] == one["prediction"]

    frame = customer_frame.drop(columns=["customer"]).head(50)
    assert client.predict(frame)["predictions"] == many["predictions"]


def test_models_and_one_model(client):
    listed = client.models()
    assert "breast-cancer" in {m["name"] for m in listed["models"]}
    model = client.model("breast-cancer")
    assert model["latest"] == 1 and len(model["versions"][0]["features"]) == 30


def test_submit_a_path_wait_with_progress_and_download_to_a_path(client, csv_file, demo_rows,
                                                               tmp_path):
    sent: list[tuple[int, int | None]] = []
    job = client.submit_job(csv_file, id_column="customer", progress=lambda *a: sent.append(a))
    assert job.status == "queued" and job.model_ref == "breast-cancer:1"
    body_bytes = sent[-1][1]
    # A CSV file is the body itself (scored as it arrives when large): no form around it.
    assert body_bytes == csv_file.stat().st_size and sent[-1][0] == body_bytes
    assert [s for s, _ in sent] == sorted(s for s, _ in sent)

    seen = []
    done = client.wait(job.id, timeout=120, progress=seen.append, interval=0.05)
    assert done.succeeded and seen[-1].status == "succeeded" and seen[-1].fraction == 1.0
    assert done.rows_done == len(demo_rows)

    saved = client.download(job.id, tmp_path / "out.csv")
    result = pd.read_csv(saved)
    expected = client.predict(demo_rows)
    assert result["customer"].tolist() == [f"c{i:04d}" for i in range(len(demo_rows))]
    assert result["prediction"].tolist() == expected["predictions"]
    np.testing.assert_allclose(result["probability_1"],
                               [p["1"] for p in expected["probabilities"]], rtol=1e-6)
    # a directory: the server's file name
    assert client.download(job.id, tmp_path).name == "customers-predictions.csv"
    assert not list(tmp_path.glob("*.part"))


def test_a_large_file_goes_out_in_1_mib_pieces(client, customer_frame, tmp_path):
    """urllib3 sends a file body 16 KiB at a time unless told otherwise: the client's
    connections send 1 MiB pieces (read from the file as they go, never whole)."""
    path = tmp_path / "large.csv"
    rows = customer_frame.to_csv(index=False).split("\n", 1)
    copies = (3 << 20) // len(rows[1]) + 1
    path.write_text(rows[0] + "\n" + rows[1] * copies)
    sent: list[int] = []
    job = client.submit_job(path, progress=lambda done, total: sent.append(done))
    pieces = np.diff([0, *sent])
    assert sent[-1] == path.stat().st_size
    assert set(pieces[:-1].tolist()) == {1 << 20} and 0 < pieces[-1] <= 1 << 20
    assert client.wait(job.id, timeout=120, interval=0.05).rows_done == \
        len(customer_frame) * copies


def test_submit_a_file_object_and_download_a_dataframe(client, customer_frame, tmp_path):
    path = tmp_path / "rows.parquet"
    customer_frame.to_parquet(path, index=False)
    with open(path, "rb") as fh:
        job = client.submit_job(fh, output_format="parquet", id_column="customer")
    client.wait(job.id, timeout=120, interval=0.05)
    frame = client.download(job.id)
    assert isinstance(frame, pd.DataFrame) and len(frame) == len(customer_frame)
    assert frame["customer"].tolist() == customer_frame["customer"].tolist()

    unnamed = io.BytesIO(path.read_bytes())  # no name: the format comes from `filename`
    job = client.submit_job(unnamed, filename="upload.parquet")
    assert client.wait(job.id, timeout=120, interval=0.05).rows_done == len(customer_frame)


def test_submit_a_dataframe(client, customer_frame, demo_rows):
    job = client.submit_job(customer_frame.head(100), id_column="customer",
                            output_format="jsonl")
    assert job.raw["input"]["name"] == "dataframe.parquet"
    client.wait(job.id, timeout=120, interval=0.05)
    frame = client.download(job.id)
    assert frame["customer"].tolist() == customer_frame["customer"].head(100).tolist()
    assert frame["prediction"].tolist() == client.predict(demo_rows[:100])["predictions"]


def test_list_jobs(client, csv_file):
    first = client.submit_job(csv_file)
    second = client.submit_job(csv_file)
    client.wait(second.id, timeout=120, interval=0.05)
    client.wait(first.id, timeout=120, interval=0.05)
    listed = client.list_jobs(limit=10)
    assert {first.id, second.id} <= {j.id for j in listed}
    assert all(j.succeeded for j in client.list_jobs(status="succeeded"))


def test_a_failed_job_raises_with_the_jobs_error(client, customer_frame, tmp_path):
    bad = customer_frame.head(20).copy().astype({"mean radius": object})
    bad.loc[7, "mean radius"] = "seven"
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    job = client.submit_job(path)
    with pytest.raises(JobFailedError) as caught:
        client.wait(job.id, timeout=120, interval=0.05)
    assert caught.value.job.status == "failed"
    assert "mean radius" in caught.value.message and caught.value.code

    skipped = client.submit_job(path, on_error="skip")
    client.wait(skipped.id, timeout=120, interval=0.05)
    errors = client.errors(skipped.id)
    assert errors["row"].tolist() == [7] and errors["field"].tolist() == ["mean radius"]


def test_cancel_a_queued_job_and_delete_a_finished_one(idle_server, redis_client, csv_file,
                                                      client):
    server, tokens = idle_server
    with Client(server.url, api_key=tokens["submit"]) as idle:
        job = idle.submit_job(csv_file)
        with pytest.raises(WaitTimeoutError) as caught:
            idle.wait(job.id, timeout=0.3, interval=0.05)
        assert caught.value.job.status == "queued"
        with pytest.raises(ConflictError) as conflict:
            idle.download(job.id)
        assert conflict.value.status == 409
        cancelled = idle.cancel(job.id)
        assert cancelled is not None and cancelled.status == "cancelled"
        with pytest.raises(JobCancelledError):
            idle.wait(job.id, timeout=10)

    finished = client.submit_job(csv_file)
    client.wait(finished.id, timeout=120, interval=0.05)
    assert client.cancel(finished.id) is None  # a finished job is deleted
    with pytest.raises(NotFoundError):
        client.get_job(finished.id)


def test_typed_errors_carry_the_servers_code_message_and_status(client, demo_rows, tmp_path):
    with pytest.raises(NotFoundError) as unknown:
        client.get_job("no-such-job")
    assert (unknown.value.status, unknown.value.code) == (404, "job_not_found")
    assert "no-such-job" in unknown.value.message

    row = dict(demo_rows[0])
    del row["mean radius"]
    with pytest.raises(ValidationError) as invalid:
        client.predict(row)
    assert invalid.value.status == 422 and invalid.value.code == "validation_error"
    assert any(d.get("field") == "mean radius" for d in invalid.value.details)

    sheet = tmp_path / "rows.xlsx"
    sheet.write_bytes(b"PK\x03\x04 not a CSV or Parquet file")
    with pytest.raises(UnsupportedMediaTypeError) as media:
        client.submit_job(sheet)
    assert media.value.status == 415

    with pytest.raises(PayloadTooLargeError) as too_many:
        client.predict(demo_rows * 2)  # 1138 rows: over TABSERVE_MAX_ONLINE_ROWS
    assert isinstance(too_many.value, RowsRunAsJobError)  # the server runs them as a job
    assert client.wait(too_many.value.job_id, timeout=120).status == "succeeded"

    with pytest.raises(NotFoundError) as model:
        client.predict(demo_rows[0], model="no-such-model")
    assert model.value.code == "model_not_found"


def test_an_upload_over_the_servers_limit_is_413(idle_server, customer_frame, tmp_path):
    server, tokens = idle_server
    path = tmp_path / "large.csv"
    pd.concat([customer_frame] * 12).to_csv(path, index=False)
    assert path.stat().st_size > 1024 * 1024
    with Client(server.url, api_key=tokens["submit"]) as c:
        with pytest.raises(PayloadTooLargeError) as caught:
            c.submit_job(path)
    assert caught.value.status == 413 and "TABSERVE_MAX_UPLOAD_BYTES" in caught.value.message


def test_a_missing_key_is_401_and_a_keys_role_403(idle_server, redis_client):
    server, tokens = idle_server
    with Client(server.url, api_key="") as anonymous:
        with pytest.raises(AuthenticationError) as caught:
            anonymous.list_jobs()
    assert caught.value.status == 401 and caught.value.code == "unauthorized"
    with Client(server.url, api_key="tsk_wrong") as wrong, pytest.raises(AuthenticationError):
        wrong.models()
    with Client(server.url, api_key=tokens["read"]) as reader:
        assert "models" in reader.models()
        with pytest.raises(PermissionDeniedError) as denied:
            reader.list_jobs()
    assert denied.value.status == 403
    with Client(server.url, api_key=tokens["submit"]) as submitter:
        assert isinstance(submitter.list_jobs(), list)


@pytest.fixture(scope="module")
def redisless_server(base_settings, tmp_path_factory):
    """An API whose Redis is not running: /jobs answers 503, /predict still answers."""
    settings = base_settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0",
                                            preload_model=False)
    server = ApiServer(tabserve_env(settings.as_env()), tmp_path_factory.mktemp("nore-logs"),
                       workers=1)
    yield server
    server.stop()


def test_a_503_is_retried_for_get_and_never_for_post(redisless_server, csv_file):
    with Client(redisless_server.url, retries=2, backoff=0.05) as c:
        seen = _counting(c)
        with pytest.raises(ServiceUnavailableError) as caught:
            c.get_job("x")
        assert seen == ["GET 503"] * 3  # the first try and two retries
        assert caught.value.code == "queue_unavailable" and caught.value.status == 503

        seen.clear()
        with pytest.raises(ServiceUnavailableError):
            c.submit_job(csv_file)
        assert seen == ["POST 503"]


def test_connection_errors_are_retried_for_get_only():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    with Client(url, retries=2, backoff=0.2, timeout=2) as c:
        started = time.monotonic()
        with pytest.raises(TabserveConnectionError) as caught:
            c.list_jobs()
        assert time.monotonic() - started >= 0.2 + 0.4  # two backoffs: 0.2 s, then 0.4 s
        assert "refused" in caught.value.message
        started = time.monotonic()
        with pytest.raises(TabserveConnectionError):
            c.predict({"x": 1})
        assert time.monotonic() - started < 0.2


class _BusyThenReady(BaseHTTPRequestHandler):
    """A stand-in server: 503 with Retry-After: 1 to the first GET, then a job."""

    answers: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        first = not self.answers
        self.answers.append(self.path)
        body = (b'{"error": {"code": "queue_unavailable", "message": "busy"}}' if first else
                b'{"id": "x", "status": "queued", "model": {}, "progress": {}}')
        self.send_response(503 if first else 200)
        if first:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_retry_waits_as_long_as_retry_after_says():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BusyThenReady)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}", retries=1, backoff=0.01) as c:
            started = time.monotonic()
            assert c.get_job("x").id == "x"
            assert time.monotonic() - started >= 1.0
        assert _BusyThenReady.answers == ["/jobs/x", "/jobs/x"]
    finally:
        server.shutdown()
        server.server_close()
