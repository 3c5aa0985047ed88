"""Safe retries and async promotion against the live stack (gunicorn, redis-server, a Celery
worker): Idempotency-Key on POST /jobs, validate_only, and /predict or /invocations rows run
as a job (Prefer: respond-async, or more rows than TABSERVE_MAX_ONLINE_ROWS)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import requests

from tests.inprocess import inprocess_app
from tests.jobclient import file_bytes, read_result, submit, wait_job


def _post_job(url: str, data: bytes, key: str | None, multipart: bool = True, **options):
    headers = {} if key is None else {"Idempotency-Key": key}
    if multipart:
        return requests.post(url + "/jobs", files={"file": ("input.csv", data, "text/csv")},
                             data=options, headers=headers, timeout=60)
    return requests.post(url + "/jobs", data=data, params=options, timeout=60,
                         headers={**headers, "Content-Type": "text/csv"})


def _job_ids(url: str) -> list[str]:
    return [j["id"] for j in requests.get(url + "/jobs", timeout=10).json()["jobs"]]


def _stored_files(data_dir: str) -> list[Path]:
    return [p for p in (Path(data_dir) / "jobs").rglob("*") if p.is_file()] \
        if (Path(data_dir) / "jobs").exists() else []


@pytest.mark.parametrize("multipart", [True, False])
def test_same_key_same_body_is_the_same_job(api_server, worker, redis_client, customer_frame,
                                            multipart):
    data = file_bytes(customer_frame.iloc[:40], "csv")
    first = _post_job(api_server.url, data, "retry-1", multipart, output_format="jsonl")
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = _post_job(api_server.url, data, "retry-1", multipart, output_format="jsonl")
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == f"/jobs/{first.json()['id']}"
    assert _job_ids(api_server.url) == [first.json()["id"]]
    assert wait_job(api_server.url, first.json()["id"])["status"] == "succeeded"
    # Without the header, the same upload is a new job.
    other = _post_job(api_server.url, data, None, multipart, output_format="jsonl")
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


@pytest.mark.parametrize("change", ["file", "options"])
def test_same_key_different_body_is_422(api_server, worker, redis_client, customer_frame,
                                        change):
    data = file_bytes(customer_frame.iloc[:40], "csv")
    first = _post_job(api_server.url, data, "retry-2")
    assert first.status_code == 202, first.text
    if change == "file":
        r = _post_job(api_server.url, file_bytes(customer_frame.iloc[:41], "csv"), "retry-2")
    else:
        r = _post_job(api_server.url, data, "retry-2", output_format="parquet")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert "Idempotency-Key" in error["message"]
    assert error["details"][0]["field"] == "Idempotency-Key"
    assert _job_ids(api_server.url) == [first.json()["id"]]


def test_concurrent_requests_with_one_key_make_one_job(api_server, worker, redis_client,
                                                       customer_frame):
    data = file_bytes(pd.concat([customer_frame] * 20), "csv")  # 11,380 rows
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _post_job(api_server.url, data, "race"), range(6)))
    assert [r.status_code for r in answers] == [202] * 6, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert sorted(r.headers.get("Idempotent-Replayed", "") for r in answers) \
        == [""] + ["true"] * 5
    assert len(_job_ids(api_server.url)) == 1


def test_keys_are_scoped_to_their_owner_and_freed_by_a_deleted_job(api_server, worker,
                                                                  redis_client,
                                                                  customer_frame):
    data = file_bytes(customer_frame.iloc[:10], "csv")
    first = _post_job(api_server.url, data, "k").json()["id"]
    assert wait_job(api_server.url, first)["status"] == "succeeded"
    assert requests.delete(f"{api_server.url}/jobs/{first}", timeout=10).status_code == 204
    again = _post_job(api_server.url, data, "k")
    assert again.status_code == 202 and again.json()["id"] != first
    assert "Idempotent-Replayed" not in again.headers


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "caf\u00e9"])
def test_a_bad_key_is_400(api_server, redis_client, customer_frame, key):
    r = requests.post(api_server.url + "/jobs", data=b"a,b\n1,2\n", timeout=10,
                      headers={"Idempotency-Key": key.encode("utf-8").decode("latin-1"),
                               "Content-Type": "text/csv"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["details"][0]["field"] == "Idempotency-Key"
    assert _job_ids(api_server.url) == []


@pytest.mark.parametrize("multipart", [True, False])
def test_validate_only_good_file(api_server, redis_client, base_settings, customer_frame,
                                 multipart):
    data = file_bytes(customer_frame, "csv")
    r = _post_job(api_server.url, data, None, multipart, validate_only="true",
                  id_column="customer")
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["valid"] is True and report["problems"] == []
    assert report["model"] == {"name": "breast-cancer", "version": 1}
    assert report["format"] == "csv" and report["columns"] == list(customer_frame.columns)
    assert report["size_bytes"] == len(data)
    assert report["rows_estimate"] is None or abs(report["rows_estimate"] - 569) < 60
    assert _job_ids(api_server.url) == []
    assert _stored_files(base_settings.data_dir) == []


def test_validate_only_bad_file(api_server, redis_client, base_settings, customer_frame):
    data = file_bytes(customer_frame.drop(columns=["mean radius"]), "csv")
    r = _post_job(api_server.url, data, "also-ignored", validate_only="true")
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["valid"] is False
    [problem] = report["problems"]
    assert problem["code"] == "validation_error" and "mean radius" in problem["message"]
    assert _job_ids(api_server.url) == []
    assert _stored_files(base_settings.data_dir) == []
    # The same file submitted for real is refused with that problem.
    r = submit(api_server.url, data)
    assert r.status_code == 422 and r.json()["error"]["message"] == problem["message"]


def _online(url: str, rows: list[dict]) -> dict:
    answers: dict = {"predictions": [], "probabilities": []}
    for first in range(0, len(rows), 1000):
        r = requests.post(url + "/predict", json={"instances": rows[first:first + 1000]},
                          timeout=60)
        assert r.status_code == 200, r.text
        answers["predictions"] += r.json()["predictions"]
        answers["probabilities"] += r.json()["probabilities"]
    return answers


def _job_predictions(url: str, response: requests.Response) -> pd.DataFrame:
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.headers["Location"] == f"/jobs/{job_id}"
    done = wait_job(url, job_id)
    assert done["status"] == "succeeded", done
    result, _ = read_result(url, job_id)
    return result


@pytest.mark.parametrize("how", ["prefer", "oversize"])
def test_predict_runs_as_a_job(api_server, worker, redis_client, demo_rows, how):
    rows = demo_rows if how == "prefer" else demo_rows * 2  # 1138 rows: over 1000
    headers = {"Prefer": "respond-async, wait=5"} if how == "prefer" else {}
    r = requests.post(api_server.url + "/predict", json={"instances": rows}, headers=headers,
                      timeout=60)
    if how == "prefer":
        assert r.headers["Preference-Applied"] == "respond-async"
    else:
        assert "Preference-Applied" not in r.headers
    result = _job_predictions(api_server.url, r)
    expected = _online(api_server.url, rows)
    assert len(result) == len(rows)
    assert result["prediction"].tolist() == expected["predictions"]
    assert result["probability_1"].tolist() == [p["1"] for p in expected["probabilities"]]


def test_invocations_run_as_a_job(api_server, worker, redis_client, customer_frame,
                                  demo_rows):
    frame = customer_frame.drop(columns=["customer"])
    r = requests.post(api_server.url + "/invocations", data=frame.to_csv(index=False),
                      headers={"Content-Type": "text/csv", "Prefer": "respond-async"},
                      timeout=60)
    assert r.headers["Preference-Applied"] == "respond-async"
    result = _job_predictions(api_server.url, r)
    assert result["prediction"].tolist() == _online(api_server.url, demo_rows)["predictions"]


def test_async_rows_are_validated_first(api_server, redis_client, demo_rows):
    bad = [{**demo_rows[0], "mean radius": "wide"}] * 1001
    r = requests.post(api_server.url + "/predict", json={"instances": bad}, timeout=60)
    assert r.status_code == 422, r.text
    assert _job_ids(api_server.url) == []
    ok = requests.post(api_server.url + "/predict", json={"instances": demo_rows[:3]},
                       headers={"Prefer": "return=minimal"}, timeout=60)
    assert ok.status_code == 200 and "Preference-Applied" not in ok.headers


def test_the_job_input_is_parquet_in_feature_order(api_server, worker, redis_client,
                                                   demo_rows):
    r = requests.post(api_server.url + "/predict", json={"features": demo_rows[0]},
                      headers={"Prefer": "respond-async"}, timeout=60)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["input"]["format"] == "parquet" and job["options"]["output_format"] == "jsonl"
    assert job["input"]["columns"] == list(demo_rows[0])
    assert wait_job(api_server.url, job["id"])["status"] == "succeeded"
    result, _ = read_result(api_server.url, job["id"])
    assert len(pd.read_json(io.StringIO(result.to_json(orient="records")))) == 1


# --- in process: keys per owner, and roles (create_app().test_client(), the real Redis) ---

@pytest.fixture(scope="module")
def keyed_client(base_settings, redis_server, tmp_path_factory):
    import uuid

    from shared.security.keystore import hash_key

    roles = {"alice": "submit", "bob": "submit", "pat": "predict"}
    tokens = {name: "tsk_" + uuid.uuid4().hex for name in roles}
    settings = base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/7", queue_name="idem-inproc",
        data_dir=str(tmp_path_factory.mktemp("idem-data")), rate_limit_requests=0,
        api_keys=",".join(f"{n}:{roles[n]}:{hash_key(t)}" for n, t in tokens.items()))
    app = inprocess_app(settings)
    yield app.test_client(), {n: {"Authorization": f"Bearer {t}"} for n, t in tokens.items()}
    app.extensions["tabserve"].predictions.flush()
    app.extensions["tabserve"].drift.drain()


def test_an_idempotency_key_belongs_to_its_owner(keyed_client, redis_client, customer_frame):
    client, auth = keyed_client
    data = file_bytes(customer_frame.iloc[:20], "csv")

    def post(who: str):
        return client.post("/jobs", data=data, content_type="text/csv",
                           headers={**auth[who], "Idempotency-Key": "shared-name"})

    alice, bob, alice_again = post("alice"), post("bob"), post("alice")
    assert [r.status_code for r in (alice, bob, alice_again)] == [202] * 3
    assert bob.get_json()["id"] != alice.get_json()["id"]
    assert alice_again.get_json()["id"] == alice.get_json()["id"]
    assert alice_again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in bob.headers


def test_async_needs_a_key_that_may_submit_jobs(keyed_client, redis_client, demo_rows):
    client, auth = keyed_client
    r = client.post("/predict", json={"instances": demo_rows[:2]},
                    headers={**auth["pat"], "Prefer": "respond-async"})
    assert r.status_code == 403, r.get_data(as_text=True)
    assert "respond-async" in r.get_json()["error"]["message"]
    ok = client.post("/predict", json={"instances": demo_rows[:2]}, headers=auth["pat"])
    assert ok.status_code == 200
    mine = client.post("/predict", json={"instances": demo_rows[:2]},
                       headers={**auth["alice"], "Prefer": "respond-async"})
    assert mine.status_code == 202 and mine.headers["Preference-Applied"] == "respond-async"
    listed = client.get("/jobs", headers=auth["alice"]).get_json()["jobs"]
    assert [j["id"] for j in listed] == [mine.get_json()["id"]]
