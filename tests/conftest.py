"""Shared fixtures: the demo model (trained once), a real redis-server, a real gunicorn."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from shared.config import Settings
from shared.models.store import ModelStore
from shared.models.training import train_demo
from tests.artifacts import copy_demo, model_files
from tests.servers import ApiServer, RedisServer, WorkerProcess, tabserve_env

# The real-process job stack of the fault tests (job_stack, job_stack_api, ...).
pytest_plugins = ["tests.jobstack"]


@pytest.fixture(scope="session")
def demo_data() -> tuple[list[str], np.ndarray]:
    """Feature names and rows of scikit-learn's bundled breast-cancer data."""
    data = load_breast_cancer()
    return [str(n) for n in data.feature_names], data.data


@pytest.fixture(scope="session")
def customer_frame(demo_data) -> pd.DataFrame:
    """The demo rows as a DataFrame with a leading `customer` id column (do not modify)."""
    names, X = demo_data
    df = pd.DataFrame(X, columns=names)
    df.insert(0, "customer", [f"c{i:04d}" for i in range(len(df))])
    return df


@pytest.fixture(scope="session")
def demo_rows(demo_data) -> list[dict[str, float]]:
    names, X = demo_data
    return [dict(zip(names, row.tolist(), strict=True)) for row in X]


# The session's artifacts directory and its files once trained (set by artifacts_dir).
_session_artifacts: dict[Path, list[str]] = {}


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory) -> Path:
    """An artifacts directory holding the demo model, trained once per test session. Read
    only: a test that trains, imports, promotes or deletes uses `private_artifacts` (or
    copy_demo) instead, since every later test of its process would see the change."""
    root = tmp_path_factory.mktemp("artifacts")
    train_demo(ModelStore(root))
    _session_artifacts[root] = model_files(root)
    return root


@pytest.fixture(scope="module", autouse=True)
def _session_artifacts_unchanged(request):
    """Fails the module that wrote into the session's artifacts directory (at its last
    test's teardown), naming what it wrote."""
    yield
    for root, trained in _session_artifacts.items():
        now = model_files(root)
        if now != trained:
            _session_artifacts[root] = now  # one report, for the module that wrote
            changed = sorted(set(now) ^ set(trained))
            pytest.fail(f"{request.module.__name__} changed the session's artifacts "
                        f"directory (use private_artifacts): {changed}", pytrace=False)


@pytest.fixture(scope="module")
def private_artifacts(artifacts_dir, tmp_path_factory) -> Path:
    """The demo model copied for one test module, which may add, promote or delete models
    in it without another module seeing the change."""
    return copy_demo(artifacts_dir, tmp_path_factory.mktemp("private") / "artifacts")


@pytest.fixture(scope="module")
def private_settings(base_settings, private_artifacts, redis_server, tmp_path_factory):
    """base_settings over the module's private_artifacts, with its own data directory,
    Redis database and queue (no session worker takes its jobs)."""
    return base_settings.with_overrides(
        artifacts_dir=private_artifacts, queue_name="private",
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/13",
        data_dir=str(tmp_path_factory.mktemp("private-data")))


@pytest.fixture(scope="module")
def private_api_server(private_settings, tmp_path_factory):
    """A real gunicorn (one worker) over the module's private_settings."""
    server = ApiServer(tabserve_env(private_settings.as_env()),
                       tmp_path_factory.mktemp("private-logs"), workers=1)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_worker(private_settings, tmp_path_factory):
    """A real Celery worker (one pool process) over the module's private_settings."""
    proc = WorkerProcess(tabserve_env(private_settings.as_env()),
                         tmp_path_factory.mktemp("private-wlogs"), "private")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server, base_settings):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    forget_jobs(client, base_settings.data_dir)
    yield client
    # Jobs a test left queued must not reach the session's worker (its reaper re-sends the
    # messages of queued jobs) after the test.
    forget_jobs(client, base_settings.data_dir)
    client.close()


def forget_jobs(client, data_dir: str) -> None:
    """Every Redis database emptied, and the session's job files removed with them: a job
    whose files outlive its record is one Redis lost, which the workers' reapers put back
    from its record's copy (shared.jobs.mirror) and run again."""
    client.flushall()
    shutil.rmtree(Path(data_dir) / "jobs", ignore_errors=True)


@pytest.fixture(scope="session")
def base_settings(artifacts_dir, redis_server, tmp_path_factory) -> Settings:
    return Settings(
        artifacts_dir=artifacts_dir,
        data_dir=str(tmp_path_factory.mktemp("data")),
        redis_url=redis_server.url,
        log_level="INFO",
        default_model="breast-cancer",
        chunk_rows=20_000,
        worker_metrics_port=0,
        drift_interval_seconds=0,
        max_upload_bytes=100 * 1024 * 1024,
    )


@pytest.fixture(scope="session")
def api_server(base_settings, tmp_path_factory):
    """A real gunicorn running the API with two workers, for the whole session."""
    server = ApiServer(tabserve_env(base_settings.as_env()), tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def worker(base_settings, tmp_path_factory):
    """A real Celery worker process (one pool process) for the whole session."""
    proc = WorkerProcess(tabserve_env(base_settings.as_env()), tmp_path_factory.mktemp("wlogs"),
                         "session")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def idle_server(base_settings, redis_server, tmp_path_factory):
    """A real gunicorn with API keys on whose jobs no worker takes (its own Redis database
    and queue): a job stays queued until it is cancelled. Uploads up to 1 MiB. Yields
    (server, {role: key}) with a `submit` and a `read` key."""
    import uuid

    from shared.security.keystore import hash_key

    tokens = {role: "tsk_" + uuid.uuid4().hex for role in ("submit", "read")}
    settings = base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/6", queue_name="idle",
        data_dir=str(tmp_path_factory.mktemp("idle-data")), rate_limit_requests=0,
        max_upload_bytes=1024 * 1024,
        api_keys=",".join(f"{role}-key:{role}:{hash_key(t)}" for role, t in tokens.items()))
    server = ApiServer(tabserve_env(settings.as_env()), tmp_path_factory.mktemp("idle-logs"),
                       workers=1)
    yield server, tokens
    server.stop()
