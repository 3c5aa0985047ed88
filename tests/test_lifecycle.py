"""A model's life without restarts: aliases, promote, rollback.

The store and the per-process cache in process (a real artifacts directory in tmp_path), the
CLI as a subprocess, the admin routes through create_app's test client with keys on, and the
hot promotion through a real two-worker gunicorn under load, with a real Celery worker for
the job pinned before the promotion.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from shared.config import Settings
from shared.errors import ConflictError, ModelNotFoundError, ValidationError
from shared.models.aliases import ALIASES_FILE
from shared.models.loading import ModelCache
from shared.models.store import ModelStore
from shared.models.training import train_demo
from shared.monitoring.metrics import MODEL_SWITCH_FAILURES
from shared.security.keyfile import create_key
from tests.artifacts import copy_demo
from tests.inprocess import inprocess_app
from tests.jobclient import file_bytes, submit, wait_job
from tests.servers import ROOT, ApiServer, WorkerProcess, tabserve_env, wait_until

NAME = "breast-cancer"


@pytest.fixture(scope="module")
def trained(artifacts_dir, tmp_path_factory) -> Path:
    """An artifacts directory with the demo model's version 1 (the session's, copied)."""
    return copy_demo(artifacts_dir, tmp_path_factory.mktemp("lifecycle") / "artifacts")


def copy_artifacts(trained: Path, into: Path) -> Path:
    shutil.copytree(trained, into)
    return into


def add_version(store: ModelStore, version: int, corrupt: bool = False) -> None:
    """A copy of version 1 written as `version` (what `train` would add, without training)."""
    target = store.root / NAME / str(version)
    shutil.copytree(store.version_dir(NAME, 1), target)
    data = json.loads((target / "manifest.json").read_text())
    data["version"] = version
    (target / "manifest.json").write_text(json.dumps(data))
    if corrupt:
        model_file = target / data["model_file"]
        model_file.write_bytes(model_file.read_bytes()[:-10])
    store.list_models(fresh=True)


@pytest.fixture
def store(trained, tmp_path) -> ModelStore:
    return ModelStore(copy_artifacts(trained, tmp_path / "artifacts"), refresh_seconds=0)


# --- the store ---

def test_a_first_version_is_live_and_recorded(store):
    assert store.resolve(None) == (NAME, 1)
    assert json.loads((store.root / NAME / ALIASES_FILE).read_text())["aliases"] == {"live": 1}
    assert store.lifecycle(NAME) == {"aliases": {"live": 1}, "live": 1}


def test_a_new_version_waits_for_promote_and_rollback_promotes_the_old_one(store):
    train_demo(store)
    assert store.list_models(fresh=True)[NAME] == [1, 2]
    assert store.resolve(NAME) == (NAME, 1) and store.resolve(f"{NAME}:2") == (NAME, 2)
    assert store.promote(NAME, 2, "tester") == 1
    assert store.resolve(None) == (NAME, 2) and store.resolve(f"{NAME}@live") == (NAME, 2)
    assert store.promote(NAME, 1) == 2  # rollback
    assert store.resolve(NAME) == (NAME, 1)
    assert store.list_models(fresh=True)[NAME] == [1, 2]  # nothing deleted
    history = store.alias_history(NAME)
    assert [(h["version"], h["previous"]) for h in history[-2:]] == [(2, 1), (1, 2)]
    assert history[-2]["by"] == "tester"


@pytest.mark.parametrize("how", ["flag", "setting"])
def test_promote_on_save_keeps_the_old_behaviour(store, how):
    if how == "setting":
        store.auto_promote = True
        train_demo(store)
    else:
        train_demo(store, promote=True)
    assert store.resolve(NAME) == (NAME, 2)


def test_a_directory_without_aliases_serves_its_latest_until_a_save(store):
    (store.root / NAME / ALIASES_FILE).unlink()
    add_version(store, 2)  # copied in by hand, as before aliases
    assert store.resolve(NAME) == (NAME, 2) and store.resolve(f"{NAME}@live") == (NAME, 2)
    train_demo(store)  # version 3: not live; version 2, live so far, stays live
    assert store.resolve(NAME) == (NAME, 2)
    assert store.aliases(NAME) == {"live": 2}


def test_named_aliases(store):
    add_version(store, 2)
    assert store.set_alias(NAME, "champion", 1) is None
    assert store.set_alias(NAME, "challenger", 2) is None
    assert store.resolve(f"{NAME}@challenger") == (NAME, 2)
    assert store.resolve(f"{NAME}@champion") == (NAME, 1)
    assert store.resolve(NAME) == (NAME, 1)  # only `live` decides an unpinned request
    assert store.set_alias(NAME, "challenger", None) == 2
    with pytest.raises(ModelNotFoundError, match="no alias 'challenger'"):
        store.resolve(f"{NAME}@challenger")


@pytest.mark.parametrize("alias,version,error,message", [
    ("Champion", 1, ValidationError, "invalid alias"),
    ("1", 1, ValidationError, "invalid alias"),
    ("a" * 40, 1, ValidationError, "invalid alias"),
    ("champion", 9, ModelNotFoundError, "no version 9"),
    ("live", None, ConflictError, "cannot be removed"),
])
def test_bad_alias_changes_are_refused(store, alias, version, error, message):
    with pytest.raises(error, match=message):
        store.set_alias(NAME, alias, version)
    assert store.aliases(NAME, fresh=True) == {"live": 1}


def test_an_unknown_model_cannot_be_promoted(store):
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        store.promote("nope", 1)


def test_a_damaged_aliases_file_keeps_the_last_good_read(store):
    add_version(store, 2)
    store.promote(NAME, 2)
    assert store.resolve(NAME) == (NAME, 2)
    (store.root / NAME / ALIASES_FILE).write_text("{not json")
    assert store.resolve(NAME) == (NAME, 2)
    fresh = ModelStore(store.root)  # a process that never read it: a 503, not the latest
    with pytest.raises(Exception, match="aliases file cannot be read") as info:
        fresh.resolve(NAME)
    assert getattr(info.value, "status", None) == 503


# --- the per-process cache ---

def test_the_cache_switches_after_loading_and_keeps_pinned_versions(store):
    cache = ModelCache(store)
    assert cache.resolve(None).manifest.version == 1
    add_version(store, 2)
    store.promote(NAME, 2)
    # The first request after the promote is answered by version 1 while 2 loads.
    wait_until(lambda: cache.resolve(NAME).manifest.version == 2, 30, "the switch to 2")
    assert cache.serving() == {(NAME, "live"): 2}
    assert cache.resolve(f"{NAME}:1").manifest.version == 1
    store.promote(NAME, 1)  # rollback: version 1 is still loaded, the switch is immediate
    assert cache.resolve(NAME).manifest.version == 1


def test_a_version_that_fails_to_load_leaves_the_old_one_served(store, caplog):
    cache = ModelCache(store, retry_seconds=60)
    assert cache.resolve(NAME).manifest.version == 1
    add_version(store, 2, corrupt=True)
    failures = MODEL_SWITCH_FAILURES.labels(NAME, "2")
    before = failures._value.get()
    store.promote(NAME, 2)
    with caplog.at_level(logging.ERROR, logger="shared.models.loading"):
        # Requests start the background load; it fails, and they keep getting version 1.
        wait_until(lambda: cache.resolve(NAME).manifest.version == 1
                   and failures._value.get() > before, 30, "the failed load")
        for _ in range(20):
            assert cache.resolve(NAME).manifest.version == 1
    assert "still serving the version before it" in caplog.text
    with pytest.raises(Exception, match="checksum mismatch") as info:
        cache.resolve(f"{NAME}:2")  # pinned: its own error
    assert getattr(info.value, "status", None) == 503


# --- the CLI ---

def tabserve(args: list[str], artifacts: Path, **env: str) -> subprocess.CompletedProcess:
    variables = tabserve_env({"TABSERVE_ARTIFACTS_DIR": str(artifacts), **env})
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=variables,
                          capture_output=True, text=True, timeout=300, check=False)


def test_cli_alias_promote_and_models(store):
    add_version(store, 2)
    promoted = tabserve(["promote", NAME, "2"], store.root)
    assert promoted.returncode == 0, promoted.stderr
    assert "live version 2 (was 1)" in promoted.stdout
    assert f"tabserve promote {NAME} 1" in promoted.stdout  # how to roll back
    assert tabserve(["alias", NAME, "champion", "1"], store.root).returncode == 0
    listed = tabserve(["models"], store.root)
    assert listed.stdout.strip() == f"{NAME}: versions 1, 2; live 2; aliases champion=1, live=2"
    removed = tabserve(["alias", NAME, "champion", "--remove"], store.root)
    assert removed.returncode == 0 and "removed (was 1)" in removed.stdout
    assert store.aliases(NAME, fresh=True) == {"live": 2}


@pytest.mark.parametrize("args,message", [
    (["promote", NAME, "7"], "has no version 7"),
    (["promote", "nope", "1"], "unknown model 'nope'"),
    (["alias", NAME, "Bad!", "1"], "invalid alias"),
    (["alias", NAME, "live", "--remove"], "cannot be removed"),
])
def test_cli_refuses_bad_changes_in_one_line(store, args, message):
    result = tabserve(args, store.root)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_train_does_not_serve_a_new_version_unless_asked(store):
    trained = tabserve(["train"], store.root)
    assert trained.returncode == 0, trained.stderr
    assert f"run 'tabserve promote {NAME} 2' to serve it" in trained.stdout
    assert store.resolve(NAME) == (NAME, 1)
    again = tabserve(["train", "--promote"], store.root)
    assert again.returncode == 0 and "not live" not in again.stdout
    assert store.resolve(NAME) == (NAME, 3)
    auto = tabserve(["train"], store.root, TABSERVE_AUTO_PROMOTE="1")
    assert auto.returncode == 0 and store.resolve(NAME) == (NAME, 4)
    bad = tabserve(["models"], store.root, TABSERVE_AUTO_PROMOTE="maybe")
    assert bad.returncode != 0 and "TABSERVE_AUTO_PROMOTE" in bad.stderr


# --- the admin routes ---

@pytest.fixture
def admin_app(store, tmp_path):
    keys = tmp_path / "keys" / "keys.json"
    keys.parent.mkdir()
    tokens = {role: create_key(keys, role, role) for role in ("admin", "predict", "read")}
    settings = Settings(artifacts_dir=store.root, data_dir=str(tmp_path / "data"),
                        api_keys_file=keys, worker_metrics_port=0, preload_model=False)
    client = inprocess_app(settings).test_client()
    return client, {role: {"Authorization": f"Bearer {t}"} for role, t in tokens.items()}


def test_admin_routes_need_an_admin_key(admin_app, store):
    client, auth = admin_app
    add_version(store, 2)
    calls = [("put", f"/models/{NAME}/aliases/champion", {"version": 2}),
             ("delete", f"/models/{NAME}/aliases/champion", None),
             ("post", f"/models/{NAME}/promote", {"version": 2})]
    for method, path, body in calls:
        assert getattr(client, method)(path, json=body).status_code == 401
        for role in ("predict", "read"):
            r = getattr(client, method)(path, json=body, headers=auth[role])
            assert r.status_code == 403, (method, path, role)
    assert store.aliases(NAME, fresh=True) == {"live": 1}


def test_promote_and_aliases_over_http(admin_app, store):
    client, auth = admin_app
    add_version(store, 2)
    admin = auth["admin"]
    r = client.post(f"/models/{NAME}/promote", json={"version": 2}, headers=admin)
    assert r.status_code == 200, r.json
    assert r.json["previous"] == 1 and r.json["live"] == 2
    r = client.put(f"/models/{NAME}/aliases/champion", json={"version": 1}, headers=admin)
    assert r.status_code == 200 and r.json["aliases"] == {"champion": 1, "live": 2}
    shown = client.get(f"/models/{NAME}", headers=auth["read"]).json
    assert (shown["live"], shown["latest"], shown["aliases"]) == (2, 2, {"champion": 1, "live": 2})
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    assert shown["history"][-1]["by"] == "admin"
    listed = client.get("/models", headers=auth["read"]).json["models"][0]
    assert listed["live"] == 2 and listed["aliases"]["champion"] == 1
    r = client.post("/predict", query_string={"model": f"{NAME}@champion"},
                    json={"features": _row(store)}, headers=auth["predict"])
    assert r.status_code == 200 and r.json["model"]["version"] == 1
    assert r.headers["X-Model-Version"] == f"{NAME}:1"
    r = client.delete(f"/models/{NAME}/aliases/champion", headers=admin)
    assert r.status_code == 200 and r.json["previous"] == 1


@pytest.mark.parametrize("path,body,status,code", [
    (f"/models/{NAME}/promote", {"version": 9}, 404, "model_not_found"),
    (f"/models/{NAME}/promote", {"version": "2"}, 422, "validation_error"),
    (f"/models/{NAME}/promote", [2], 422, "validation_error"),
    (f"/models/{NAME}/promote", {}, 422, "validation_error"),
    ("/models/nope/promote", {"version": 1}, 404, "model_not_found"),
    (f"/models/{NAME}/aliases/Bad", {"version": 1}, 422, "validation_error"),
    ("/models/a@b/promote", {"version": 1}, 422, "validation_error"),
])
def test_bad_admin_requests_are_clear_4xx(admin_app, path, body, status, code):
    client, auth = admin_app
    method = client.put if "/aliases/" in path else client.post
    r = method(path, json=body, headers=auth["admin"])
    assert r.status_code == status, r.json
    assert r.json["error"]["code"] == code


def test_aliases_that_cannot_be_written_are_a_409_naming_the_way_out(admin_app, store):
    # As root, permissions do not stop a write: a directory where the lock file goes does.
    lock = store.root / NAME / ".aliases.lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()
    client, auth = admin_app
    r = client.post(f"/models/{NAME}/promote", json={"version": 1}, headers=auth["admin"])
    assert r.status_code == 409, r.json
    message = r.json["error"]["message"]
    assert "cannot write its aliases" in message and "tabserve promote" in message
    assert str(store.root) not in message  # no server path in an answer


def test_removing_live_over_http_is_a_409(admin_app):
    client, auth = admin_app
    r = client.delete(f"/models/{NAME}/aliases/live", headers=auth["admin"])
    assert r.status_code == 409 and "promote" in r.json["error"]["message"]


def test_an_unknown_alias_is_a_404_on_every_protocol(admin_app):
    client, auth = admin_app
    ref = f"{NAME}@nope"
    predict = client.post("/predict", query_string={"model": ref}, json={"features": {}},
                          headers=auth["predict"])
    assert predict.status_code == 404 and "no alias 'nope'" in predict.json["error"]["message"]
    v2 = client.get(f"/v2/models/{ref}", headers=auth["read"])
    assert v2.status_code == 404 and "no alias" in v2.json["error"]
    mlflow = client.post("/invocations", query_string={"model": ref},
                         json={"instances": [[1.0]]}, headers=auth["predict"])
    assert mlflow.status_code == 404


def _row(store: ModelStore) -> dict[str, float]:
    manifest = store.manifest(NAME, 1)
    return {f.name: (f.min + f.max) / 2 for f in manifest.features}


# --- under load, with real processes ---

class Load:
    """Threads that send unpinned /predict requests until stopped, noting each answer's
    time, version and serving process, and every failure."""

    def __init__(self, url: str, row: dict[str, float], threads: int = 3) -> None:
        self.url, self.row = url, row
        self.answers: list[tuple[float, int, int]] = []  # (wall time, version, pid)
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._session()

    def _session(self, requests_per_connection: int = 25) -> None:
        # A kept-alive connection stays with one gunicorn worker: a new one every few
        # requests lets either worker take it, so both answer throughout.
        with requests.Session() as session:
            for _ in range(requests_per_connection):
                if self._stop.is_set():
                    return
                try:
                    started = time.monotonic()
                    r = session.post(self.url + "/predict", json={"features": self.row},
                                     timeout=10)
                    self.latencies.append(time.monotonic() - started)
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    version = r.json()["model"]["version"]
                    self.answers.append((time.time(), version,
                                         int(r.headers["X-Served-By"])))
                except Exception as exc:  # noqa: BLE001 - every failure is counted
                    self.failures.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=20)

    def pids(self) -> set[int]:
        return {pid for _, _, pid in self.answers}

    def since(self, start: float) -> list[tuple[float, int, int]]:
        return [a for a in list(self.answers) if a[0] >= start]

    def all_serve(self, version: int, since: float, pids: set[int]) -> bool:
        """Every process has answered `version` after `since`, and its latest answer is it."""
        latest: dict[int, int] = {}
        for _, v, pid in self.since(since):
            latest[pid] = v
        return all(latest.get(pid) == version for pid in pids)

    def last_other(self, version: int, since: float, pid: int) -> float:
        """When `pid` last answered something other than `version` after `since`."""
        return max((t for t, v, p in self.since(since) if p == pid and v != version),
                   default=since)


def _run_cli(args: list[str], settings: Settings) -> str:
    result = subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT,
                            env=tabserve_env(settings.as_env()), capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _written_at(artifacts: Path) -> float:
    return (artifacts / NAME / ALIASES_FILE).stat().st_mtime


def _switch(load: Load, version: int, since: float, pids: set[int]) -> list[float]:
    """Wait for every worker to serve `version`; each worker's seconds from `since` (when
    the aliases file was written) to its last answer with another version."""
    wait_until(lambda: load.all_serve(version, since, pids), 10,
               f"every worker serving version {version}", interval=0.1)
    delays = [load.last_other(version, since, pid) - since for pid in sorted(pids)]
    assert max(delays) < 10, delays
    return delays


def test_hot_promotion_under_load(trained, tmp_path, base_settings, redis_client, demo_rows,
                                  customer_frame):
    artifacts = copy_artifacts(trained, tmp_path / "artifacts")
    settings = base_settings.with_overrides(
        artifacts_dir=artifacts, data_dir=str(tmp_path / "data"), queue_name="lifecycle",
        web_threads=8)
    server = ApiServer(tabserve_env(settings.as_env()), tmp_path, workers=2)
    load = Load(server.url, demo_rows[0])
    worker = None
    try:
        wait_until(lambda: len(load.pids()) == 2, 30, "answers from both gunicorn workers")
        pids = load.pids()
        assert {v for _, v, _ in load.answers} == {1}
        # A job submitted now pins version 1; no worker runs it until after the promote.
        job = submit(server.url, file_bytes(customer_frame.head(200), "csv"),
                     id_column="customer")
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]

        out = _run_cli(["train"], settings)  # version 2, not served
        assert "is not live" in out
        trained_at = time.time()
        # Past the store's refresh interval, both workers still answer version 1.
        wait_until(lambda: {p for t, _, p in load.answers if t > trained_at + 3} == pids, 20,
                   "answers after the new version was written")
        assert {v for _, v, _ in load.since(trained_at)} == {1}

        _run_cli(["promote", NAME, "2"], settings)
        promote_delays = _switch(load, 2, _written_at(artifacts), pids)

        worker = WorkerProcess(tabserve_env(settings.as_env(), {"TABSERVE_QUEUE_NAME":
                                                                "lifecycle"}),
                               tmp_path, "lifecycle")
        done = wait_job(server.url, job_id, timeout=120)
        assert done["status"] == "succeeded", done
        assert done["model"] == {"name": NAME, "version": 1}

        _run_cli(["promote", NAME, "1"], settings)
        rollback_delays = _switch(load, 1, _written_at(artifacts), pids)
    finally:
        load.stop()
        if worker is not None:
            worker.stop()
        server.stop()
    assert not load.failures, load.failures[:5]
    assert load.pids() == pids  # the same two processes throughout: no restart
    assert len(load.answers) > 100
    latencies = sorted(load.latencies)
    print(f"\nhot promotion: {len(latencies)} requests, none failed; p50 "
          f"{latencies[len(latencies) // 2] * 1000:.1f} ms, p99 "
          f"{latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, max "
          f"{latencies[-1] * 1000:.1f} ms; last old answer per worker after the promote "
          f"{[round(d, 2) for d in promote_delays]} s, after the "
          f"rollback {[round(d, 2) for d in rollback_delays]} s")
