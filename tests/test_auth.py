"""API keys, roles and job ownership: in process (`create_app(settings).test_client()`, the
real Redis fixture, jobs run by the in-process runner) for the matrix, and through a real
gunicorn with two workers for the rate limit and the job cap that the processes share."""

from __future__ import annotations

import logging
import re
import threading
import uuid

import pandas as pd
import pytest
import requests
from flask import Blueprint

from api.views import ROUTE_ACTIONS
from shared import keys
from shared.config import Settings
from shared.jobs.coordinator import run_job
from shared.jobs.store import new_job_id
from shared.security.keyfile import create_key, revoke_key
from shared.security.keystore import hash_key
from shared.security.roles import PUBLIC_PATHS, ROLE_ACTIONS, Action, Role
from tests.inprocess import inprocess_app
from tests.servers import ApiServer, tabserve_env

QUEUE = "authtest"  # no worker process consumes it: jobs here are run in process or stay queued
ROLES = {"root": "admin", "alice": "submit", "bob": "submit", "pred": "predict",
         "reader": "read"}


def _app(settings: Settings, blueprint: Blueprint | None = None):
    app = inprocess_app(settings)
    if blueprint is not None:
        app.register_blueprint(blueprint)
    return app


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def tokens(keys_dir) -> dict[str, str]:
    path = keys_dir / "keys.json"
    return {name: create_key(path, name, role) for name, role in ROLES.items()}


@pytest.fixture(scope="module")
def settings(base_settings, keys_dir, tokens, tmp_path_factory) -> Settings:
    return base_settings.with_overrides(
        data_dir=str(tmp_path_factory.mktemp("auth-data")), queue_name=QUEUE,
        api_keys_file=keys_dir / "keys.json", rate_limit_requests=0)


def _protocol_stand_ins() -> Blueprint:
    # The protocol endpoints (KServe V2, SageMaker's /invocations) are not built yet; these
    # routes stand where they will, declaring nothing, as a new route does.
    bp = Blueprint("protocol", __name__)
    bp.add_url_rule("/v2/models/<name>/infer", "infer", lambda name: {"ok": name},
                    methods=["POST"])
    bp.add_url_rule("/v2/models/<name>", "metadata", lambda name: {"ok": name})
    bp.add_url_rule("/invocations", "invocations", lambda: {"ok": True}, methods=["POST"])
    bp.add_url_rule("/undeclared", "undeclared", lambda: {"ok": True})
    return bp


@pytest.fixture(scope="module")
def app(settings):
    return _app(settings, _protocol_stand_ins())


@pytest.fixture
def client(app, redis_client):
    return app.test_client()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _csv(demo_data, bad_row: bool = False) -> bytes:
    names, X = demo_data
    frame = pd.DataFrame(X[:20], columns=names)
    if bad_row:
        frame = frame.astype(object)
        frame.iloc[3, 0] = "oops"
    return frame.to_csv(index=False).encode()


def _submit(client, token: str, data: bytes) -> str:
    r = client.post("/jobs?on_error=skip", data=data, content_type="text/csv",
                    headers=_auth(token))
    assert r.status_code == 202, r.get_data(as_text=True)
    return r.get_json()["id"]


def _finished_job(app, client, token: str, demo_data) -> str:
    job_id = _submit(client, token, _csv(demo_data, bad_row=True))
    run_job(app.extensions["tabserve"], job_id, QUEUE)
    record = client.get(f"/jobs/{job_id}", headers=_auth(token)).get_json()
    assert record["status"] == "succeeded", record
    return job_id


def _route_paths(app) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, its variables filled in."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<[^>]+>", "x", rule.rule)
        out += [(m, path) for m in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return out


def test_without_a_key_every_route_but_health_answers_401(app, client):
    public = PUBLIC_PATHS
    checked = 0
    for method, path in _route_paths(app):
        r = client.open(path, method=method)
        if path in public:
            assert r.status_code in (200, 503), (method, path)
            continue
        checked += 1
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="tabserve"'
        body = r.get_json()
        if path == "/v2" or path.startswith(("/v2/", "/v1/")):  # V2's and V1's error shape
            assert "valid API key" in body["error"], (method, path)
        else:  # MLflow's routes answer in MLflow's error shape
            assert body.get("error", {}).get("code", body.get("error_code")) in (
                "unauthorized", "UNAUTHENTICATED")
    assert checked >= 12  # jobs (6), predict, feedback, models (2), metrics, the stand-ins
    assert client.get("/no/such/route").status_code == 401  # not even a 404 without a key


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer nope", "Basic abc",
                                    "bearer tsk_" + "A" * 43])
def test_a_missing_or_wrong_key_is_401(client, header):
    r = client.get("/models", headers={"Authorization": header} if header else {})
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers


def test_every_role_gets_exactly_its_actions(app, client, tokens):
    # One request per route for each key: 403 exactly when the role lacks the route's
    # action, and never 401 for a valid key.
    actions = {**ROUTE_ACTIONS, "protocol.infer": Action.PREDICT,
               "protocol.invocations": Action.PREDICT, "protocol.metadata": Action.READ_MODELS,
               "protocol.undeclared": Action.ADMIN}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "health.healthz", "health.readyz"):
            continue
        path = re.sub(r"<[^>]+>", "x", rule.rule)
        for name, role in ROLES.items():
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                r = client.open(path, method=method, headers=_auth(tokens[name]))
                allowed = actions[rule.endpoint] in ROLE_ACTIONS[Role(role)]
                assert (r.status_code == 403) is not allowed, (name, method, path, r.status_code)
                assert r.status_code != 401


def test_roles_in_practice(client, tokens, demo_rows):
    row = {"features": demo_rows[0]}
    assert client.post("/predict", json=row, headers=_auth(tokens["pred"])).status_code == 200
    assert client.post("/predict", json=row, headers=_auth(tokens["reader"])).status_code == 403
    assert client.get("/models", headers=_auth(tokens["reader"])).status_code == 200
    assert client.get("/metrics", headers=_auth(tokens["reader"])).status_code == 200
    assert client.get("/metrics", headers=_auth(tokens["pred"])).status_code == 403
    r = client.post("/jobs", data=b"a\n1\n", content_type="text/csv",
                    headers=_auth(tokens["pred"]))
    assert r.status_code == 403
    assert "role predict" in r.get_json()["error"]["message"]
    names = list(demo_rows[0])
    infer = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, len(names)],
                         "data": [demo_rows[0][n] for n in names]}]}
    r = client.post("/v2/models/breast-cancer/infer", json=infer, headers=_auth(tokens["pred"]))
    assert r.status_code == 200
    r = client.post("/v2/models/breast-cancer/infer", json=infer,
                    headers=_auth(tokens["reader"]))
    assert r.status_code == 403 and "role read" in r.get_json()["error"]
    assert client.post("/invocations", headers=_auth(tokens["reader"])).status_code == 403
    assert client.get("/undeclared", headers=_auth(tokens["alice"])).status_code == 403
    assert client.get("/undeclared", headers=_auth(tokens["root"])).status_code == 200


def _same_404(a, b, id_a: str, id_b: str) -> None:
    assert a.status_code == b.status_code == 404
    assert a.get_data().replace(id_a.encode(), b"ID") == b.get_data().replace(id_b.encode(),
                                                                              b"ID")
    assert a.headers["Content-Type"] == b.headers["Content-Type"]


def test_another_keys_job_is_exactly_an_unknown_job(app, client, tokens, demo_data):
    job_id = _finished_job(app, client, tokens["alice"], demo_data)
    unknown = new_job_id()
    bob = _auth(tokens["bob"])
    for method, suffix in [("GET", ""), ("GET", "/result"), ("GET", "/errors"),
                           ("DELETE", "")]:
        theirs = client.open(f"/jobs/{job_id}{suffix}", method=method, headers=bob)
        missing = client.open(f"/jobs/{unknown}{suffix}", method=method, headers=bob)
        _same_404(theirs, missing, job_id, unknown)
    listed = client.get("/jobs", headers=bob).get_json()["jobs"]
    assert job_id not in {j["id"] for j in listed}
    # The owner and an admin still see it whole: bob's DELETE changed nothing.
    alice, root = _auth(tokens["alice"]), _auth(tokens["root"])
    for headers in (alice, root):
        assert job_id in {j["id"] for j in client.get("/jobs", headers=headers).get_json()["jobs"]}
        assert client.get(f"/jobs/{job_id}/result", headers=headers).status_code == 200
        assert client.get(f"/jobs/{job_id}/errors", headers=headers).status_code == 200
    assert client.delete(f"/jobs/{job_id}", headers=alice).status_code == 204


def test_a_live_job_is_cancelled_only_by_its_owner_or_an_admin(client, tokens, demo_data):
    job_id = _submit(client, tokens["alice"], _csv(demo_data))
    r = client.delete(f"/jobs/{job_id}", headers=_auth(tokens["bob"]))
    assert r.status_code == 404
    assert client.get(f"/jobs/{job_id}", headers=_auth(tokens["alice"])).get_json()[
        "status"] == "queued"
    r = client.delete(f"/jobs/{job_id}", headers=_auth(tokens["root"]))
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"


def test_the_record_keeps_the_key_name_never_the_key(app, client, tokens, demo_data,
                                                      redis_client):
    job_id = _submit(client, tokens["alice"], _csv(demo_data))
    assert app.extensions["tabserve"].jobs.get(job_id).owner == "alice"
    record = redis_client.hgetall(keys.job(job_id))
    assert record[b"owner"] == b"alice"
    assert tokens["alice"].encode() not in b"".join(record.values())
    assert "owner" not in client.get(f"/jobs/{job_id}", headers=_auth(tokens["alice"])).get_json()


def test_downloads_are_attachments_and_responses_carry_security_headers(app, client, tokens,
                                                                        demo_data):
    job_id = _finished_job(app, client, tokens["alice"], demo_data)
    r = client.get(f"/jobs/{job_id}/result", headers=_auth(tokens["alice"]))
    assert r.headers["Content-Disposition"].startswith("attachment")
    assert r.headers["Cache-Control"] == "no-store"
    for response in (r, client.get("/healthz"), client.get("/models")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]


def test_keys_are_rotated_without_a_restart(app, client, keys_dir, tokens):
    path = keys_dir / "keys.json"
    temp = create_key(path, "temp", "read")
    assert client.get("/models", headers=_auth(temp)).status_code == 200
    revoke_key(path, "temp")
    assert client.get("/models", headers=_auth(temp)).status_code == 401
    assert client.get("/models", headers=_auth(tokens["reader"])).status_code == 200


def test_a_key_is_never_logged(app, client, tokens, caplog):
    caplog.set_level(logging.DEBUG)
    client.get("/models", headers=_auth(tokens["reader"]))
    client.get("/models", headers=_auth(tokens["reader"] + "x"))
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert tokens["reader"] not in text


def test_keys_from_the_setting(base_settings, redis_client):
    token = "tsk_" + uuid.uuid4().hex
    settings = base_settings.with_overrides(api_keys=f"ci:predict:{hash_key(token)}")
    client = _app(settings).test_client()
    assert client.get("/models", headers=_auth(token)).status_code == 200
    assert client.get("/jobs", headers=_auth(token)).status_code == 403
    assert client.get("/models").status_code == 401


def test_job_ids_hold_128_random_bits():
    ids = [uuid.UUID(new_job_id()) for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    # uuid4 fixes 6 bits (version and variant); these ids fix none.
    assert len({u.version for u in ids}) > 1 and len({u.int >> 62 & 0b11 for u in ids}) == 4


# --- across processes: a real gunicorn with two workers ---

@pytest.fixture(scope="module")
def limited_server(base_settings, tmp_path_factory):
    token = "tsk_" + uuid.uuid4().hex
    settings = base_settings.with_overrides(
        data_dir=str(tmp_path_factory.mktemp("limited-data")), queue_name="authlimits",
        api_keys=f"limited:submit:{hash_key(token)}",
        # An hour's window: a test of a few seconds does not straddle two windows.
        rate_limit_requests=30, rate_limit_window_seconds=3600, max_live_jobs_per_key=3)
    server = ApiServer(tabserve_env(settings.as_env()), tmp_path_factory.mktemp("auth-logs"),
                       workers=2)
    yield server, token
    server.stop()


def _in_threads(count: int, call) -> list[requests.Response]:
    out: list[requests.Response] = []
    lock = threading.Lock()

    def run() -> None:
        r = call()
        with lock:
            out.append(r)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def test_the_job_cap_and_the_rate_limit_hold_across_two_workers(limited_server, redis_client,
                                                                 demo_data):
    server, token = limited_server
    assert server.log().count("Booting worker") == 2
    headers = {**_auth(token), "Content-Type": "text/csv"}
    body = _csv(demo_data)
    answers = _in_threads(8, lambda: requests.post(server.url + "/jobs", data=body,
                                                   headers=headers, timeout=60))
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] * 3 + [429] * 5, [r.text[:200] for r in answers]
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["error"]["code"] == "too_many_jobs"
    assert "TABSERVE_MAX_LIVE_JOBS_PER_KEY" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    # A cancelled job frees its slot.
    job_id = next(r.json()["id"] for r in answers if r.status_code == 202)
    assert requests.delete(f"{server.url}/jobs/{job_id}", headers=_auth(token),
                           timeout=30).status_code == 200
    assert requests.post(server.url + "/jobs", data=body, headers=headers,
                         timeout=60).status_code == 202

    # 10 requests so far; the window allows 30 in all, whichever worker answers.
    answers = _in_threads(40, lambda: requests.get(server.url + "/models",
                                                   headers=_auth(token), timeout=60))
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 30 - 10 and codes.count(429) == 40 - 20, codes
    limited = next(r for r in answers if r.status_code == 429)
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 3600
    assert "TABSERVE_RATE_LIMIT_REQUESTS" in limited.json()["error"]["message"]
    # One count in Redis for both processes, every request in it; health checks uncounted.
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    counters = redis_client.keys(keys.rate_window("limited", 0).rsplit(":", 1)[0] + ":*")
    assert [int(redis_client.get(k)) for k in counters] == [50]
    assert redis_client.zcard(keys.owner_jobs("limited")) == 3


def test_the_keys_command_creates_lists_and_revokes(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli.main import main

    path = tmp_path / "cli-keys.json"
    monkeypatch.setenv("TABSERVE_API_KEYS_FILE", str(path))
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "ops", "--role", "admin"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("tsk_") and token not in path.read_text()
    assert hash_key(token) in path.read_text()
    listed = runner.invoke(main, ["keys", "list"])
    assert listed.stdout.startswith("ops\tadmin\t") and token not in listed.stdout
    assert runner.invoke(main, ["keys", "revoke", "ops"]).exit_code == 0
    assert runner.invoke(main, ["keys", "list"]).stdout == ""
    again = runner.invoke(main, ["keys", "revoke", "ops"])
    assert again.exit_code == 2 and "no key named 'ops'" in again.output
