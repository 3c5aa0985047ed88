"""Bad files are refused at submit with 4xx JSON; bad rows are handled per on_error."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
import requests

from shared.models.store import ModelStore
from shared.models.training import train_from_file
from tests.jobclient import read_result, submit, wait_job


@pytest.fixture(scope="module")
def frame(demo_data) -> pd.DataFrame:
    names, X = demo_data
    return pd.DataFrame(X[:40], columns=names)


def csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _post_raw(url, data, content_type, **params):
    return requests.post(url + "/jobs", data=data, params=params, timeout=120,
                         headers={"Content-Type": content_type})


def bad_files(frame):
    header_only = ",".join(frame.columns).encode() + b"\n"
    wrong_types = frame.astype({"mean radius": str})
    return [
        # id, (data, format or content type, options), status, code, message fragment
        ("binary garbage", (os.urandom(4096) + b"\x00", "csv", {}), 400, "bad_request",
         "binary"),
        ("latin-1 text", ("mean radius\n\xe9t\xe9\n".encode("latin-1") * 10, "csv", {}), 400,
         "bad_request", "not UTF-8"),
        ("not a CSV table", (b"hello world, this is a letter\nregards\n", "csv", {}), 422,
         "validation_error", "lacks 30 feature column(s)"),
        ("empty", (b"", "csv", {}), 400, "bad_request", "empty"),
        ("header only", (header_only, "csv", {}), 400, "bad_request", "no data rows"),
        ("missing columns", (csv_bytes(frame.drop(columns=["mean radius", "worst area"])), "csv",
                             {}), 422, "validation_error", "mean radius, worst area"),
        ("duplicate columns", (b"a,a\n1,2\n", "csv", {}), 422, "validation_error", "duplicate"),
        ("garbage parquet", (os.urandom(2048), "parquet", {}), 400, "bad_request",
         "not a readable Parquet file"),
        ("parquet wrong types", (parquet_bytes(wrong_types), "parquet", {}), 422,
         "validation_error", "mean radius"),
        ("csv sent as parquet", (csv_bytes(frame), "parquet", {}), 400, "bad_request",
         "Parquet"),
        ("unknown output format", (csv_bytes(frame), "csv", {"output_format": "xml"}), 422,
         "validation_error", "output_format"),
        ("unknown option", (csv_bytes(frame), "csv", {"colour": "red"}), 422,
         "validation_error", "colour"),
        ("bad on_error", (csv_bytes(frame), "csv", {"on_error": "ignore"}), 422,
         "validation_error", "on_error"),
        ("unknown model", (csv_bytes(frame), "csv", {"model": "nope"}), 404, "model_not_found",
         "nope"),
        ("id column absent", (csv_bytes(frame), "csv", {"id_column": "customer"}), 422,
         "validation_error", "customer"),
    ]


@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "raw"])
def test_bad_files_are_refused_at_submit(api_server, worker, base_settings, frame, multipart):
    for name, (data, fmt, options), status, code, text in bad_files(frame):
        r = submit(api_server.url, data, fmt, multipart=multipart, **options)
        assert r.status_code == status, (name, r.text)
        error = r.json()["error"]
        assert error["code"] == code, (name, error)
        assert text in error["message"] + str(error["details"]), (name, error)
    # nothing was queued, nothing was left in staging, and everything still works
    staging = os.path.join(base_settings.data_dir, "staging")
    assert not os.path.isdir(staging) or not os.listdir(staging)
    assert requests.get(api_server.url + "/jobs?limit=1000", timeout=10).json()["jobs"] == [] \
        or all(j["status"] != "queued" for j in requests.get(
            api_server.url + "/jobs?limit=1000", timeout=10).json()["jobs"])
    ok = submit(api_server.url, csv_bytes(frame), "csv").json()
    assert wait_job(api_server.url, ok["id"])["status"] == "succeeded"


def test_staging_is_clean_after_refusals(api_server, worker, base_settings, frame):
    submit(api_server.url, b"", "csv")
    submit(api_server.url, b"a,b\n1,2\n", "csv", multipart=False)
    staging = os.path.join(base_settings.data_dir, "staging")
    assert not os.path.isdir(staging) or os.listdir(staging) == []


@pytest.mark.parametrize("content_type,status,code", [
    ("image/png", 415, "unsupported_media_type"),
    ("application/json", 400, "invalid_json"),  # JSON is an input_url request
])
def test_wrong_content_types(api_server, frame, content_type, status, code):
    r = _post_raw(api_server.url, csv_bytes(frame), content_type)
    assert r.status_code == status and r.json()["error"]["code"] == code
    if status == 415:
        assert "text/csv" in r.json()["error"]["message"]


def test_multipart_without_file_field(api_server):
    r = requests.post(api_server.url + "/jobs", files={"upload": ("x.csv", b"a\n1\n")},
                      timeout=10)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "file"


def test_upload_over_the_limit_is_413(api_server, base_settings):
    line = b"1.0," * 29 + b"1.0\n"
    body = line * (base_settings.max_upload_bytes // len(line) + 10)
    for multipart in (True, False):
        r = submit(api_server.url, body, "csv", multipart=multipart)
        assert r.status_code == 413, r.text[:300]
        assert r.json()["error"]["code"] in ("payload_too_large", "request_entity_too_large")
    assert requests.get(api_server.url + "/healthz", timeout=10).ok


def _with_bad_rows(frame: pd.DataFrame) -> bytes:
    text = frame.astype(object)
    text.loc[3, "mean area"] = "abc"
    text.loc[7, "worst radius"] = None
    text.loc[10, "mean texture"] = "inf"
    return text.to_csv(index=False).encode()


def test_bad_row_fails_the_job_naming_row_and_column(api_server, worker, frame):
    job = submit(api_server.url, _with_bad_rows(frame), "csv").json()
    done = wait_job(api_server.url, job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "invalid_row"
    assert done["error"]["row"] == 3 and done["error"]["field"] == "mean area"
    assert "row 3, column 'mean area': not a number" in done["error"]["message"]
    assert requests.get(f"{api_server.url}/jobs/{job['id']}/result", timeout=10).status_code == 409


def test_bad_rows_are_skipped_into_an_errors_file(api_server, worker, frame):
    job = submit(api_server.url, _with_bad_rows(frame), "csv", on_error="skip").json()
    done = wait_job(api_server.url, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["rows_failed"] == 3
    assert done["links"]["errors"] == f"/jobs/{job['id']}/errors"
    result, _ = read_result(api_server.url, job["id"])
    assert result["row"].tolist() == [i for i in range(40) if i not in (3, 7, 10)]
    errors = requests.get(f"{api_server.url}/jobs/{job['id']}/errors", timeout=10)
    assert errors.status_code == 200 and errors.headers["Content-Type"].startswith("text/csv")
    table = pd.read_csv(io.BytesIO(errors.content))
    assert table.to_dict(orient="records") == [
        {"row": 3, "field": "mean area", "message": "not a number"},
        {"row": 7, "field": "worst radius", "message": "missing value"},
        {"row": 10, "field": "mean texture", "message": "not a finite number"},
    ]


def test_errors_file_of_a_fail_job_is_409(api_server, worker, frame):
    job = submit(api_server.url, csv_bytes(frame), "csv").json()
    wait_job(api_server.url, job["id"])
    r = requests.get(f"{api_server.url}/jobs/{job['id']}/errors", timeout=10)
    assert r.status_code == 409


@pytest.fixture(scope="module")
def shops_model(private_artifacts, tmp_path_factory):
    rng = np.random.default_rng(1)
    n = 300
    df = pd.DataFrame({"city": rng.choice(["paris", "rome", "oslo"], n),
                       "size": rng.normal(100, 20, n).round(1)})
    df["busy"] = np.where((df["city"] == "rome") | (df["size"] > 110), "yes", "no")
    path = tmp_path_factory.mktemp("shops") / "shops.csv"
    df.to_csv(path, index=False)
    manifest = train_from_file(ModelStore(private_artifacts), path, "busy", name="shops")
    # the demo-style trainer allows unknown categories; pin this copy to refuse them
    return manifest


def test_categorical_rows_and_unknown_categories(private_api_server, private_worker,
                                                 shops_model):
    api_server = private_api_server  # the shops model is in the module's own artifacts
    assert shops_model.features[0].allow_unknown is True
    data = b"shop,city,size\n=HYPERLINK(\"x\"),rome,120\n+2,lima,90\nc,,80\n"
    job = submit(api_server.url, data, "csv", model="shops", id_column="shop",
                 on_error="skip").json()
    done = wait_job(api_server.url, job["id"])
    assert done["status"] == "succeeded", done
    out = requests.get(f"{api_server.url}/jobs/{job['id']}/result", timeout=10).text
    # spreadsheet formulas in text cells are defused in CSV output
    assert out.splitlines()[1].startswith("\"'=HYPERLINK(\"\"x\"\")\"")
    assert out.splitlines()[2].startswith('"\'+2",')
    errors = requests.get(f"{api_server.url}/jobs/{job['id']}/errors", timeout=10).text
    assert "2,city,missing value" in errors
    online = requests.post(api_server.url + "/predict?model=shops", timeout=10,
                           json={"features": {"city": "lima", "size": 90.0}}).json()
    result = pd.read_csv(io.StringIO(out))
    assert result["prediction"][1] == online["prediction"]
    assert result["probability_yes"][1] == online["probabilities"]["yes"]
