"""Signed job callbacks against a live stack (gunicorn, redis-server, a Celery worker) with
TABSERVE_CALLBACK_HOSTS set, and a local HTTP receiver that checks each signature with the
secret: one signed POST of the job's record when it ends, retried with backoff, its delivery
in the record; a URL outside the allow-list, or callbacks off, is a 422."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from shared import keys
from shared.config import Settings
from shared.errors import ConfigError
from shared.jobs.mirror import RecordMirror, restore_lost
from shared.services import Services
from tests.jobclient import file_bytes, submit, wait_job
from tests.servers import ApiServer, WorkerProcess, tabserve_env, wait_until

SECRET = b"callback-test-secret-0123456789abcdef"


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST, whether its signature verifies,
    and answers with the next status code planned for its path (200 once none are left)."""

    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self.plans: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stamp = self.headers.get("X-Tabserve-Timestamp", "")
                expected = "sha256=" + hmac.new(SECRET, stamp.encode() + b"." + body,
                                                hashlib.sha256).hexdigest()
                given = self.headers.get("X-Tabserve-Signature", "")
                with receiver.lock:
                    receiver.deliveries.append({
                        "path": self.path, "body": body, "timestamp": stamp,
                        "verified": hmac.compare_digest(expected, given),
                        "at": time.time()})
                    plan = receiver.plans.get(self.path, [])
                    code = plan.pop(0) if plan else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def to(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [d for d in self.deliveries if d["path"] == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def callback_settings(base_settings, redis_server, receiver, tmp_path_factory) -> Settings:
    """Redis database 7, queue "callbacks", callbacks to the receiver allowed."""
    secret = tmp_path_factory.mktemp("cbsecret") / "callback.key"
    secret.write_bytes(SECRET + b"\n")
    return base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/7", queue_name="callbacks",
        data_dir=str(tmp_path_factory.mktemp("cb-data")),
        callback_hosts=f"127.0.0.1:{receiver.port}", callback_secret_file=secret)


@pytest.fixture(scope="module")
def callback_stack(callback_settings, receiver, tmp_path_factory):
    """A receiver, and an API and a worker of their own that may call it back."""
    env = tabserve_env(callback_settings.as_env())
    api = ApiServer(env, tmp_path_factory.mktemp("cb-logs"), workers=1)
    worker = WorkerProcess(env, tmp_path_factory.mktemp("cb-wlogs"), "callbacks")
    yield api, receiver
    worker.stop()
    api.stop()


def _record(url: str, job_id: str) -> dict[str, Any]:
    r = requests.get(f"{url}/jobs/{job_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _wait_callback(url: str, job_id: str, state: str, timeout: float) -> dict[str, Any]:
    wait_until(lambda: (_record(url, job_id).get("callback") or {}).get("state") == state,
               timeout, f"callback {state}", interval=0.2)
    return _record(url, job_id)["callback"]


def test_a_succeeded_job_calls_back_once_signed_with_its_record(callback_stack,
                                                                 customer_frame):
    api, receiver = callback_stack
    hook = f"http://127.0.0.1:{receiver.port}/hook/once"
    r = submit(api.url, file_bytes(customer_frame.iloc[:30], "csv"), callback_url=hook)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert wait_job(api.url, job_id)["status"] == "succeeded"
    state = _wait_callback(api.url, job_id, "delivered", 30)
    assert state["attempts"] == 1 and state["last_status"] == 200
    assert state["url"] == hook and state["delivered_at"]
    time.sleep(1.5)  # no second delivery follows
    [delivery] = receiver.to("/hook/once")
    assert delivery["verified"], "the signature does not verify with the secret"
    assert abs(int(delivery["timestamp"]) - time.time()) < 60
    sent = json.loads(delivery["body"])
    record = _record(api.url, job_id)
    record.pop("callback")
    assert sent == record
    assert sent["status"] == "succeeded" and sent["options"]["callback_url"] == hook


def test_a_failing_receiver_is_retried_until_it_answers(callback_stack, customer_frame):
    api, receiver = callback_stack
    receiver.plans["/hook/flaky"] = [500, 500]
    hook = f"http://127.0.0.1:{receiver.port}/hook/flaky"
    r = submit(api.url, file_bytes(customer_frame.iloc[:30], "csv"), callback_url=hook)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert wait_job(api.url, job_id)["status"] == "succeeded"
    state = _wait_callback(api.url, job_id, "delivered", 60)
    deliveries = receiver.to("/hook/flaky")
    assert len(deliveries) == 3 and all(d["verified"] for d in deliveries)
    assert state["attempts"] == 3 and state["last_status"] == 200
    # with backoff: 2 s, then 4 s
    gaps = [b["at"] - a["at"] for a, b in zip(deliveries, deliveries[1:], strict=False)]
    assert gaps[0] >= 1.5 and gaps[1] >= 3.5, gaps


def test_the_delivery_survives_a_redis_that_lost_the_record(callback_stack, callback_settings,
                                                             customer_frame):
    api, receiver = callback_stack
    receiver.plans["/hook/lost"] = [503]
    hook = f"http://127.0.0.1:{receiver.port}/hook/lost"
    r = submit(api.url, file_bytes(customer_frame.iloc[:30], "csv"), callback_url=hook)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert wait_job(api.url, job_id)["status"] == "succeeded"
    state = _wait_callback(api.url, job_id, "delivered", 60)
    assert state["attempts"] == 2 and state["last_status"] == 200 and state["delivered_at"]
    before = _record(api.url, job_id)

    # Redis forgets the record (a write it never made durable): the copy answers meanwhile,
    # and the reaper's restore puts it back, each with the delivery as it ended.
    rt = Services(callback_settings)
    rt.redis.delete(keys.job(job_id))
    rt.redis.zrem(keys.jobs_index(), job_id)
    assert _record(api.url, job_id) == before
    assert RecordMirror(rt.storage).load(job_id).callback == state
    assert restore_lost(rt) == 1
    assert _record(api.url, job_id)["callback"] == state
    assert len(receiver.to("/hook/lost")) == 2  # restoring it sends nothing again


def test_a_failed_job_calls_back_too(callback_stack, customer_frame):
    api, receiver = callback_stack
    hook = f"http://127.0.0.1:{receiver.port}/hook/failed"
    bad = customer_frame.iloc[:30].copy()
    bad["mean radius"] = bad["mean radius"].astype(object)
    bad.iloc[3, 1] = "not a number"
    r = submit(api.url, file_bytes(bad, "csv"), callback_url=hook)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert wait_job(api.url, job_id)["status"] == "failed"
    _wait_callback(api.url, job_id, "delivered", 30)
    [delivery] = receiver.to("/hook/failed")
    assert delivery["verified"]
    assert json.loads(delivery["body"])["status"] == "failed"


def test_a_cancelled_job_calls_back_too(callback_stack, customer_frame):
    import pandas as pd

    api, receiver = callback_stack
    # The worker (one process) is busy with a big job, so the next one waits in the queue.
    busy = submit(api.url, file_bytes(pd.concat([customer_frame] * 60), "csv"))
    assert busy.status_code == 202, busy.text
    hook = f"http://127.0.0.1:{receiver.port}/hook/cancelled"
    r = submit(api.url, file_bytes(customer_frame.iloc[:30], "csv"), callback_url=hook)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    cancel = requests.delete(f"{api.url}/jobs/{job_id}", timeout=10)
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled", cancel.text
    _wait_callback(api.url, job_id, "delivered", 60)
    [delivery] = receiver.to("/hook/cancelled")
    assert delivery["verified"]
    assert json.loads(delivery["body"])["status"] == "cancelled"
    assert wait_job(api.url, busy.json()["id"])["status"] == "succeeded"


@pytest.mark.parametrize("url", ["http://127.0.0.2:{port}/hook", "http://127.0.0.1:1/hook",
                                 "http://evil.example/hook", "ftp://127.0.0.1:{port}/hook",
                                 "not a url"])
def test_a_callback_url_outside_the_allow_list_is_422(callback_stack, customer_frame, url):
    api, receiver = callback_stack
    r = submit(api.url, file_bytes(customer_frame.iloc[:30], "csv"),
               callback_url=url.format(port=receiver.port))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["details"][0]["field"] == "callback_url"


def test_callbacks_off_is_422_naming_the_setting(api_server, customer_frame):
    r = submit(api_server.url, file_bytes(customer_frame.iloc[:30], "csv"),
               callback_url="http://127.0.0.1:9/hook")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "TABSERVE_CALLBACK_HOSTS" in error["message"]
    assert error["details"][0]["field"] == "callback_url"


def test_hosts_without_a_secret_file_is_refused_at_start(tmp_path):
    with pytest.raises(ConfigError, match="TABSERVE_CALLBACK_SECRET_FILE"):
        Settings.from_env({"TABSERVE_CALLBACK_HOSTS": "hooks.example"})
    short = tmp_path / "short.key"
    short.write_text("abc")
    with pytest.raises(ConfigError, match="TABSERVE_CALLBACK_SECRET_FILE.*16 bytes"):
        Settings.from_env({"TABSERVE_CALLBACK_HOSTS": "hooks.example",
                           "TABSERVE_CALLBACK_SECRET_FILE": str(short)})
