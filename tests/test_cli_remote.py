"""The remote commands (`tabserve predict`, `score`, `jobs`, `cancel`) as subprocesses against
a live stack: a real gunicorn, a real Celery worker, real Redis."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import numpy as np
import pandas as pd
import pytest

from shared.models.loading import load_model
from shared.models.store import ModelStore
from tabserve_client import Client
from tests.servers import ROOT, tabserve_env

FEATURES_OF = slice(1, None)  # customer_frame: the id column, then the features


def cli_env(url: str, key: str | None = None) -> dict[str, str]:
    # A server setting that would not validate: the remote commands must not read any.
    env = tabserve_env({"TABSERVE_URL": url, "TABSERVE_MAX_ONLINE_ROWS": "many"})
    if key:
        env["TABSERVE_API_KEY"] = key
    return env


def tabserve(args: list[str], url: str, key: str | None = None,
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=cli_env(url, key),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def stack(api_server, worker, redis_client):
    return api_server.url


@pytest.fixture
def csv_file(customer_frame, tmp_path):
    path = tmp_path / "customers.csv"
    customer_frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def model_output(artifacts_dir, customer_frame):
    """The demo model's own predict and predict_proba on the demo rows."""
    loaded = load_model(ModelStore(artifacts_dir), "breast-cancer", 1)
    X = customer_frame.iloc[:, FEATURES_OF]
    return loaded.model.predict(X), loaded.model.predict_proba(X)


def test_score_writes_the_models_own_predictions_beside_the_input(stack, csv_file,
                                                                 model_output):
    result = tabserve(["score", str(csv_file), "--id-column", "customer"], stack)
    assert result.returncode == 0, result.stderr
    saved = csv_file.with_name("customers-predictions.csv")
    assert result.stdout.strip() == str(saved)
    assert "569 rows scored by breast-cancer:1" in result.stderr
    frame = pd.read_csv(saved)
    labels, proba = model_output
    assert frame["prediction"].tolist() == labels.tolist()
    np.testing.assert_allclose(frame[["probability_0", "probability_1"]], proba, rtol=1e-6)
    assert frame["customer"].iloc[0] == "c0000"


def test_score_to_parquet_is_exactly_the_models_output(stack, csv_file, model_output, tmp_path):
    out = tmp_path / "scores.parquet"
    result = tabserve(["score", str(csv_file), "-o", str(out), "--format", "parquet",
                       "--model", "breast-cancer:1"], stack)
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(out)
    labels, proba = model_output
    np.testing.assert_array_equal(frame["prediction"], labels)
    np.testing.assert_array_equal(frame[["probability_0", "probability_1"]].to_numpy(), proba)
    assert frame["row"].tolist() == list(range(len(labels)))


def test_score_json_output_parses(stack, csv_file, tmp_path):
    out = tmp_path / "scores.jsonl"
    result = tabserve(["score", str(csv_file), "-o", str(out), "--format", "jsonl", "--json"],
                      stack)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded" and record["saved_to"] == str(out)
    assert record["progress"]["rows_done"] == 569
    assert len(out.read_text().splitlines()) == 569


def test_a_failed_job_exits_1_with_the_servers_message(stack, customer_frame, tmp_path):
    bad = customer_frame.head(30).astype({"worst area": object})
    bad.loc[12, "worst area"] = "huge"
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    result = tabserve(["score", str(path)], stack)
    assert result.returncode == 1
    assert "failed" in result.stderr and "worst area" in result.stderr
    assert "row 12" in result.stderr
    assert not path.with_name("bad-predictions.csv").exists()

    missing = customer_frame.drop(columns=["mean radius"]).head(5)
    path = tmp_path / "missing.csv"
    missing.to_csv(path, index=False)
    result = tabserve(["score", str(path), "--json"], stack)
    assert result.returncode == 1
    assert "error: " in result.stderr and "mean radius" in result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["status"] == 422 and "mean radius" in error["message"]


def test_no_wait_prints_the_id_and_returns_at_once(idle_server, redis_client, csv_file):
    server, tokens = idle_server
    result = tabserve(["score", str(csv_file), "--no-wait"], server.url, tokens["submit"])
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    with Client(server.url, api_key=tokens["submit"]) as client:
        assert client.get_job(job_id).status == "queued"  # no worker here: it returned at once


def test_predict_a_row_a_json_file_and_a_csv_file(stack, demo_rows, customer_frame, tmp_path):
    result = tabserve(["predict", json.dumps(demo_rows[0])], stack)
    assert result.returncode == 0, result.stderr
    header, first = result.stdout.splitlines()[:2]
    assert header.split() == ["row", "prediction", "p(0)", "p(1)", "prediction_id"]
    with Client(stack) as client:
        expected = client.predict(demo_rows[:3])
    assert first.split()[:2] == ["0", str(expected["predictions"][0])]

    rows_json = tmp_path / "rows.json"
    rows_json.write_text(json.dumps({"instances": demo_rows[:3]}))  # or a bare list
    result = tabserve(["predict", "--file", str(rows_json), "--json", "--model", "breast-cancer"],
                      stack)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["predictions"] == expected["predictions"]

    rows_csv = tmp_path / "rows.csv"
    customer_frame.iloc[:3, FEATURES_OF].to_csv(rows_csv, index=False)
    result = tabserve(["predict", "--file", str(rows_csv)], stack)
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()[1:]] == \
        [str(p) for p in expected["predictions"]]

    bad = dict(demo_rows[0], **{"mean radius": "big"})
    result = tabserve(["predict", json.dumps(bad)], stack)
    assert result.returncode == 1 and "mean radius" in result.stderr


def test_jobs_lists_and_shows_and_cancel_cancels(stack, idle_server, csv_file):
    done = tabserve(["score", str(csv_file), "--no-wait"], stack).stdout.strip()
    with Client(stack) as client:
        client.wait(done, timeout=120, interval=0.05)
    listed = tabserve(["jobs"], stack)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split()[:2] == ["id", "status"]
    assert any(line.startswith(done) and "succeeded" in line
               for line in listed.stdout.splitlines())
    shown = tabserve(["jobs", done], stack)
    assert "status:" in shown.stdout and "succeeded" in shown.stdout
    assert json.loads(tabserve(["jobs", done, "--json"], stack).stdout)["id"] == done
    assert done in [j["id"] for j in json.loads(tabserve(["jobs", "--json"], stack).stdout)]

    server, tokens = idle_server
    queued = tabserve(["score", str(csv_file), "--no-wait"], server.url,
                      tokens["submit"]).stdout.strip()
    result = tabserve(["cancel", queued], server.url, tokens["submit"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"job {queued}: cancelled"
    shown = json.loads(tabserve(["jobs", queued, "--json"], server.url, tokens["submit"]).stdout)
    assert shown["status"] == "cancelled"

    unknown = tabserve(["jobs", "no-such-job"], stack)
    assert unknown.returncode == 1 and "error: no job 'no-such-job'" in unknown.stderr
    denied = tabserve(["jobs"], server.url, tokens["read"])
    assert denied.returncode == 1 and "error: " in denied.stderr


def _read_until(fd: int, text: str, timeout: float) -> str:
    """What the pty shows until `text` appears (fail after timeout seconds)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text!r} in {seen.decode(errors='replace')!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
    return seen.decode(errors="replace")


def _default_sigint() -> None:
    # As a terminal starts it: a test run launched in the background (`cmd &` in a script)
    # ignores SIGINT, the child would inherit that, and Python then never raises
    # KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _terminal() -> tuple[int, int]:
    """A pty of 24 rows of 100 columns, as a terminal window has (a new pty has 0 by 0)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    return master, slave


def test_ctrl_c_asks_then_cancels_the_job(idle_server, redis_client, csv_file):
    server, tokens = idle_server
    master, slave = _terminal()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "score", str(csv_file)], cwd=ROOT,
                            env=cli_env(server.url, tokens["submit"]), stdin=slave,
                            stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=_default_sigint)
    os.close(slave)
    try:
        shown = _read_until(master, "scoring", 60)  # waiting, the rows bar on the terminal
        job_id = shown.split("job ", 1)[1].split(" queued (")[0]
        proc.send_signal(signal.SIGINT)
        _read_until(master, f"cancel job {job_id}? [y/N]", 20)
        os.write(master, b"y\n")
        tail = _read_until(master, "cancelled", 20)
        assert proc.wait(timeout=20) == 130, tail
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    with Client(server.url, api_key=tokens["submit"]) as client:
        assert client.get_job(job_id).status == "cancelled"


def test_ctrl_c_answered_no_leaves_the_job_running(idle_server, redis_client, csv_file):
    server, tokens = idle_server
    master, slave = _terminal()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "score", str(csv_file)], cwd=ROOT,
                            env=cli_env(server.url, tokens["submit"]), stdin=slave,
                            stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=_default_sigint)
    os.close(slave)
    try:
        shown = _read_until(master, "scoring", 60)  # waiting, the rows bar on the terminal
        job_id = shown.split("job ", 1)[1].split(" queued (")[0]
        proc.send_signal(signal.SIGINT)
        _read_until(master, "[y/N]", 20)
        os.write(master, b"\n")
        _read_until(master, "goes on", 20)
        assert proc.wait(timeout=20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    with Client(server.url, api_key=tokens["submit"]) as client:
        assert client.get_job(job_id).status == "queued"
