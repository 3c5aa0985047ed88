"""`tabserve train --data` and `tabserve import` produce models that /predict serves (a
gunicorn of the module's own over its private copy of the demo artifacts)."""

from __future__ import annotations

import os
import pickle
import pty
import select
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import requests
from sklearn.linear_model import LogisticRegression

from tests.inprocess import run_cli
from tests.servers import ROOT, free_port, tabserve_env


def tabserve(args, settings):
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT,
                          env=tabserve_env(settings.as_env()), capture_output=True, text=True,
                          timeout=180)


def _loans(n=400, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    region = rng.choice(["north", "south", "east"], size=n)
    income = rng.normal(50, 15, size=n).round(1)
    age = rng.integers(18, 80, size=n)
    score = income / 10 + (region == "north") * 2 + rng.normal(0, 1, size=n)
    return pd.DataFrame({"region": region, "income": income, "age": age,
                         "approved": np.where(score > 6, "yes", "no")})


def test_train_on_csv_with_a_categorical_column_is_served(private_api_server, private_settings,
                                                          tmp_path):
    path = tmp_path / "loans.csv"
    _loans().to_csv(path, index=False)
    result = tabserve(["train", "--data", str(path), "--target", "approved", "--name", "loans"],
                      private_settings)
    assert result.returncode == 0, result.stderr
    assert "trained loans:1" in result.stdout

    row = {"region": "north", "income": 61.5, "age": 40}
    r = requests.post(private_api_server.url + "/predict", params={"model": "loans"},
                      json={"features": row}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["prediction"] in ("yes", "no")
    assert set(r.json()["probabilities"]) == {"no", "yes"}
    bad = requests.post(private_api_server.url + "/predict", params={"model": "loans"},
                        json={"features": {**row, "region": 7}}, timeout=30)
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "region"
    manifest = requests.get(private_api_server.url + "/models/loans",
                            timeout=10).json()["versions"][0]
    types = {f["name"]: f["type"] for f in manifest["features"]}
    assert types == {"region": "category", "income": "number", "age": "integer"}


def test_import_a_pickled_model_is_served(private_api_server, private_settings, tmp_path,
                                          demo_data):
    names, X = demo_data
    frame = pd.DataFrame(X[:, :5], columns=names[:5])
    y = (X[:, 0] > 14).astype(int)
    model = LogisticRegression(max_iter=1000).fit(frame, y)
    model_path, sample_path = tmp_path / "mine.pkl", tmp_path / "sample.parquet"
    model_path.write_bytes(pickle.dumps(model))
    frame.assign(label=y).to_parquet(sample_path)
    result = tabserve(["import", str(model_path), "--name", "mine", "--sample", str(sample_path),
                       "--target", "label"], private_settings)
    assert result.returncode == 0, result.stderr

    rows = frame.iloc[:50]
    r = requests.post(private_api_server.url + "/predict", params={"model": "mine:1"},
                      json={"instances": rows.to_dict(orient="records")}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == model.predict(rows).tolist()
    got = [[p["0"], p["1"]] for p in r.json()["probabilities"]]
    assert got == model.predict_proba(rows).tolist()


def test_cli_errors_are_one_line(private_settings, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n")
    result = run_cli(["train", "--data", str(path), "--target", "zzz"], private_settings)
    assert result.returncode == 2
    assert result.stderr.startswith("error: target column 'zzz' not in")


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_import_of_a_file_that_is_not_a_pickle_is_one_line(private_settings, tmp_path):
    model_path, sample_path = tmp_path / "model.pkl", tmp_path / "sample.csv"
    model_path.write_text("this is a text file, not a pickle\n")
    sample_path.write_text("a,b\n1,2\n")
    result = run_cli(["import", str(model_path), "--name", "text", "--sample", str(sample_path)],
                      private_settings)
    assert f"{model_path}: not a pickled model" in _one_error_line(result)


def test_classification_on_a_continuous_target_is_one_line(private_settings, tmp_path):
    path = tmp_path / "prices.csv"
    rng = np.random.default_rng(0)
    pd.DataFrame({"size": rng.normal(100, 20, 60), "price": rng.normal(5, 1, 60)}).to_csv(
        path, index=False)
    result = run_cli(["train", "--data", str(path), "--target", "price",
                       "--task", "classification"], private_settings)
    message = _one_error_line(result)
    assert "target column 'price' is continuous" in message
    assert "--task regression" in message


def test_run_refuses_a_port_that_is_taken_before_saying_it_runs(private_settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = tabserve(["run", "--port", str(port)], private_settings)
        by_variable = tabserve(["run"], private_settings.with_overrides(bind=f"127.0.0.1:{port}"))
    for run in (result, by_variable):
        message = _one_error_line(run)
        assert f"cannot listen on 127.0.0.1:{port}" in message
        assert "running at" not in run.stdout


def test_run_stops_quietly_on_ctrl_c(private_settings, tmp_path):
    # As at a terminal: `tabserve run` in a pseudo-terminal's session, Ctrl-C typed into it.
    port = free_port()
    env = tabserve_env(private_settings.with_overrides(bind=f"127.0.0.1:{port}", web_workers=1,
                                                    data_dir=str(tmp_path / "data")).as_env(),
                       {"PYTHONUNBUFFERED": "1"})
    pid, fd = pty.fork()
    if pid == 0:  # the child: become `tabserve run`
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "cli", "run"], env)
    output = _PtyOutput(fd)
    try:
        output.wait_for(b"running at", 120)
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).ok
        os.write(fd, b"\x03")
        output.wait_for_end(90)
    finally:
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    text = output.data.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "Logging error" not in text and "Traceback" not in text, text
    assert "Shutting down: Master" in text


class _PtyOutput:
    """What a pseudo-terminal's child has written, read with deadlines."""

    def __init__(self, fd: int) -> None:
        self.fd, self.data, self.ended = fd, b"", False

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # the child side closed
                chunk = b""
            self.ended = not chunk
            self.data += chunk

    def wait_for(self, text: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.data:
            assert not self.ended and time.monotonic() < deadline, self.data.decode()
            self._read(0.5)

    def wait_for_end(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ended:
            assert time.monotonic() < deadline, self.data.decode()
            self._read(0.5)
