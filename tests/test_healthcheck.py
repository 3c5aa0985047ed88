"""`tabserve healthcheck`, the API image's HEALTHCHECK: it probes the address the running API
listens on (read from gunicorn's environment in /proc), so `serve` on SageMaker's port is as
healthy as `tabserve api` on 8000.

The end-to-end test runs the commands as the container does, in a PID namespace of their own
(`unshare --pid --mount-proc`, as root): there the check sees only the API it belongs to, as in
a container, where on this host it would see every test session's gunicorn.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.monitoring.probe import api_binds, local_address
from tests.servers import ROOT, free_port, tabserve_env


def _process(proc: Path, pid: int, argv: list[str], env: dict[str, str] | None,
             parent: int = 1) -> None:
    entry = proc / str(pid)
    entry.mkdir()
    (entry / "stat").write_bytes(f"{pid} (a (b) c) S {parent} {pid} {pid} 0".encode())
    (entry / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    if env is not None:
        (entry / "environ").write_bytes(
            b"\0".join(f"{k}={v}".encode() for k, v in env.items()) + b"\0")


def test_api_binds_reads_the_running_apis_address(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf",
                "api.wsgi:app"]
    _process(proc, 7, gunicorn, {"PATH": "/bin", "TABSERVE_BIND": "0.0.0.0:8080"})
    _process(proc, 9, gunicorn, {"TABSERVE_BIND": "0.0.0.0:8080"}, parent=7)  # its worker
    _process(proc, 10, gunicorn, {"TABSERVE_BIND": "127.0.0.1:7000"},
             parent=5)  # started from a shell or a test: not the container's API
    _process(proc, 12, [sys.executable, "-m", "celery", "worker"],
             {"TABSERVE_BIND": "127.0.0.1:9999"})  # not the API
    _process(proc, 13, ["gunicorn: master [api.wsgi:app]"],  # as setproctitle titles it
             {"TABSERVE_BIND": "unix:/tmp/api.sock"})
    _process(proc, 14, gunicorn, None)  # another user's: its environ cannot be read
    (proc / "self").mkdir()
    assert api_binds(proc) == ["0.0.0.0:8080", "unix:/tmp/api.sock"]
    assert api_binds(tmp_path / "no-proc") == []


@pytest.mark.parametrize(("bind", "address"), [
    ("0.0.0.0:8080", ("127.0.0.1", 8080)), (":8000", ("127.0.0.1", 8000)),
    ("[::]:8000", ("::1", 8000)), ("10.0.0.5:8000", ("10.0.0.5", 8000))])
def test_a_wildcard_bind_is_probed_on_loopback(bind, address):
    assert local_address(bind) == address


def test_a_bind_without_a_port_is_refused():
    with pytest.raises(ValueError, match="HOST:PORT"):
        local_address("localhost")


def _may_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    run = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                         capture_output=True, timeout=10, check=False)
    return run.returncode == 0


# PID 1 of the namespace, as tini is in the container: start the API command, wait for it,
# run the health check, stop the API, run it again; print both exit statuses. When it exits
# the kernel kills whatever is left in the namespace.
DRIVER = textwrap.dedent("""
    import json, signal, subprocess, sys, time, urllib.request
    command, port, check_env = json.loads(sys.argv[1])
    server = subprocess.Popen([sys.executable, "-m", "cli", *command],
                              stdout=open("server.log", "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90  # the image's start period, for a worker to boot
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("the API did not start")
            time.sleep(0.2)

    def check():
        run = subprocess.run([sys.executable, "-m", "cli", "healthcheck"], env=check_env,
                             capture_output=True, text=True, timeout=30)
        return [run.returncode, run.stdout + run.stderr]

    up = check()
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
    print(json.dumps({"up": up, "down": check()}))
""")


@pytest.mark.skipif(not _may_unshare(), reason="needs root and unshare for a PID namespace")
@pytest.mark.parametrize("mode", ["serve", "api"])
def test_the_healthcheck_finds_the_port_the_container_serves(base_settings, tmp_path, mode):
    port = free_port()
    env = tabserve_env(base_settings.as_env(), {"TABSERVE_WEB_WORKERS": "1"})
    env.pop("TABSERVE_BIND")
    if mode == "serve":  # SageMaker's contract: `serve`, its port from SageMaker's variable
        env["SAGEMAKER_BIND_TO_PORT"] = str(port)
        command = ["serve"]
    else:
        command = ["api", "--bind", f"0.0.0.0:{port}"]
    # The check's own settings name a port nothing listens on: it is healthy only by
    # finding the API's address.
    check_env = {**env, "TABSERVE_BIND": f"127.0.0.1:{free_port()}"}
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
         sys.executable, str(driver), json.dumps([command, port, check_env])],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False)
    log = (tmp_path / "server.log").read_text() if (tmp_path / "server.log").exists() else ""
    assert run.returncode == 0, run.stdout + run.stderr + log
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["up"][0] == 0, result
    wanted = f"0.0.0.0:{port}"
    assert f"healthy: {wanted}" in result["up"][1]
    assert result["down"][0] == 1 and "unhealthy" in result["down"][1], result


def test_the_healthcheck_with_an_explicit_bind(api_server):
    env = tabserve_env({})
    bind = api_server.url.removeprefix("http://")
    run = subprocess.run([sys.executable, "-m", "cli", "healthcheck", "--bind", bind,
                          "--timeout", "10"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=30,
                         check=False)
    assert run.returncode == 0 and f"healthy: {bind}" in run.stdout, run.stderr
    closed = f"127.0.0.1:{free_port()}"
    run = subprocess.run([sys.executable, "-m", "cli", "healthcheck", "--bind", closed],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=30,
                         check=False)
    assert run.returncode == 1 and f"unhealthy: {closed}" in run.stderr
