"""The limits on what a client sends, each a setting named by its refusal: body sizes (an
honest Content-Length and a chunked body, through a real gunicorn), multipart parts, JSON
depth and number length, a job's rows and columns, Parquet footers and row groups."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from tests.inprocess import inprocess_app
from tests.servers import ApiServer, tabserve_env

QUEUE = "limitstest"  # no worker process consumes it


def _files_in(folder: str) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.is_file()]


@pytest.fixture
def make_client(base_settings, redis_client, tmp_path):
    def make(**changes):
        settings = base_settings.with_overrides(data_dir=str(tmp_path / "data"),
                                                queue_name=QUEUE, **changes)
        return inprocess_app(settings).test_client(), settings
    return make


def _parquet(demo_data, rows: int, row_group_size: int | None = None) -> bytes:
    names, X = demo_data
    # One row repeated: dictionary and run-length encoding keep the file small.
    table = pa.table({n: pa.array(np.full(rows, X[0, i])) for i, n in enumerate(names)})
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=row_group_size)
    return out.getvalue()


def _error(r) -> tuple[int, str, str]:
    body = r.get_json()
    return r.status_code, body["error"]["code"], body["error"]["message"]


def test_a_small_parquet_file_of_many_rows_is_refused_at_submit(make_client, demo_data):
    client, settings = make_client(max_job_rows=100_000)
    data = _parquet(demo_data, 300_000)
    assert len(data) < 200_000  # small on the wire, many rows inside
    r = client.post("/jobs", data=data, content_type="application/vnd.apache.parquet")
    status, code, message = _error(r)
    assert (status, code) == (413, "payload_too_large")
    assert "300000 rows" in message and "TABSERVE_MAX_JOB_ROWS" in message
    assert _files_in(settings.data_dir) == []
    ok = client.post("/jobs", data=_parquet(demo_data, 1000),
                     content_type="application/vnd.apache.parquet")
    assert ok.status_code == 202, ok.get_data(as_text=True)


def test_a_parquet_row_group_over_the_budget_is_refused(make_client, demo_data):
    client, settings = make_client(max_parquet_row_group_bytes=1_000_000)
    names, _ = demo_data
    # A small compression bomb: zeros, plain encoded (no dictionary), zstd: the pages say
    # they hold 30 x 20,000 x 8 bytes uncompressed.
    table = pa.table({n: pa.array(np.zeros(20_000)) for n in names})
    out = io.BytesIO()
    pq.write_table(table, out, use_dictionary=False, compression="zstd")
    assert len(out.getvalue()) < 100_000
    r = client.post("/jobs", data=out.getvalue(), content_type="application/vnd.apache.parquet")
    status, _, message = _error(r)
    assert status == 413 and "row group 0" in message
    assert "TABSERVE_MAX_PARQUET_ROW_GROUP_BYTES" in message
    assert _files_in(settings.data_dir) == []


def test_a_parquet_footer_over_the_budget_is_refused_before_it_is_parsed(make_client,
                                                                         demo_data):
    client, _ = make_client(max_parquet_metadata_bytes=1024)
    r = client.post("/jobs", data=_parquet(demo_data, 10),
                    content_type="application/vnd.apache.parquet")
    status, _, message = _error(r)
    assert status == 413 and "TABSERVE_MAX_PARQUET_METADATA_BYTES" in message


def test_a_csv_header_over_the_column_limit_names_the_setting(make_client, demo_data):
    client, _ = make_client(max_input_columns=10)
    names, X = demo_data
    frame = pd.concat([pd.DataFrame(X[:5], columns=names),
                       pd.DataFrame(0, index=range(5), columns=[f"x{i}" for i in range(300)])],
                      axis=1)
    r = client.post("/jobs", data=frame.to_csv(index=False).encode(), content_type="text/csv")
    status, _, message = _error(r)
    assert status == 422 and "TABSERVE_MAX_INPUT_COLUMNS" in message


def test_too_many_multipart_parts_is_413_and_leaves_nothing(make_client, demo_data):
    client, settings = make_client(max_form_parts=8)
    names, X = demo_data
    csv = pd.DataFrame(X[:5], columns=names).to_csv(index=False).encode()
    fields = {f"f{i}": "x" for i in range(20)}
    r = client.post("/jobs", data={"file": (io.BytesIO(csv), "in.csv", "text/csv"), **fields},
                    content_type="multipart/form-data")
    status, _, message = _error(r)
    assert status == 413 and "more than 8 parts" in message
    assert "TABSERVE_MAX_FORM_PARTS" in message
    assert _files_in(settings.data_dir) == []


def test_a_body_over_its_limit_names_the_setting(make_client, demo_rows):
    client, _ = make_client(max_body_bytes=1000)
    r = client.post("/predict", data=b" " * 2000, content_type="application/json")
    status, _, message = _error(r)
    assert status == 413 and "limit of 1000 bytes (TABSERVE_MAX_BODY_BYTES)" in message


@pytest.mark.parametrize("path", ["/predict", "/feedback", "/jobs"])
def test_json_nesting_depth_is_a_setting(make_client, path):
    client, _ = make_client(max_json_depth=4)
    r = client.post(path, data=b'{"a": [[[[1]]]]}', content_type="application/json")
    status, code, message = _error(r)
    assert (status, code) == (400, "invalid_json")
    assert "more than 4 levels (TABSERVE_MAX_JSON_DEPTH)" in message


def test_json_number_length_is_a_setting(make_client):
    client, _ = make_client(max_json_number_chars=30)
    # NaN sends the body to the lenient parser, which reads integers of any length.
    r = client.post("/predict", data=b'{"features": {"a": NaN, "b": 1' + b"0" * 40 + b"}}",
                    content_type="application/json")
    status, _, message = _error(r)
    assert status == 400 and "longer than 30 characters" in message
    assert "TABSERVE_MAX_JSON_NUMBER_CHARS" in message
    # The same digits in a string are text, not a number.
    r = client.post("/predict", data=b'{"features": {"a": NaN, "b": "1' + b"0" * 40 + b'"}}',
                    content_type="application/json")
    assert r.status_code == 422, r.get_data(as_text=True)


# --- through a real gunicorn: honest and chunked bodies over the upload limit ---

UPLOAD_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def small_upload_server(base_settings, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("limits-data")
    settings = base_settings.with_overrides(data_dir=str(data_dir), queue_name=QUEUE,
                                            max_upload_bytes=UPLOAD_LIMIT)
    server = ApiServer(tabserve_env(settings.as_env()), tmp_path_factory.mktemp("limits-logs"))
    yield server, str(data_dir)
    server.stop()


def _chunks(data: bytes, size: int = 64 * 1024):
    for start in range(0, len(data), size):
        yield data[start:start + size]


def _big_csv(demo_data) -> bytes:
    names, X = demo_data
    frame = pd.DataFrame(np.tile(X, (20, 1)), columns=names)
    data = frame.to_csv(index=False).encode()
    assert len(data) > 2 * UPLOAD_LIMIT
    return data


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "limitsboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.csv\"\r\nContent-Type: text/csv\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("multipart", [False, True], ids=["raw", "multipart"])
def test_an_upload_over_the_limit_is_413_and_leaves_nothing_on_disk(small_upload_server,
                                                                    demo_data, chunked,
                                                                    multipart):
    server, data_dir = small_upload_server
    body, content_type = _multipart(_big_csv(demo_data)) if multipart else (
        _big_csv(demo_data), "text/csv")
    r = requests.post(server.url + "/jobs", data=_chunks(body) if chunked else body,
                      headers={"Content-Type": content_type}, timeout=60)
    assert r.status_code == 413, r.text[:300]
    message = r.json()["error"]["message"]
    assert f"limit of {UPLOAD_LIMIT} bytes" in message
    assert "TABSERVE_MAX_UPLOAD_BYTES" in message
    assert _files_in(data_dir) == []
