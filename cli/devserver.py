"""`tabserve run`: Redis (when not already up), the API and one worker, for development.

The children run in their own sessions, so a Ctrl-C at the terminal reaches this supervisor
alone; it then sends each child one SIGTERM. (A gunicorn worker that got the terminal's SIGINT
as well, while it was still importing the app, died with tracebacks on the way out.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from shared.config import Settings
from shared.errors import ConfigError, ServiceUnavailableError

STATE_DIR = Path(".tabserve")
START_SECONDS = 120
STOP_SECONDS = 30


def redis_reachable(url: str) -> bool:
    """True when a Redis server answers PING at url."""
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:  # any failure means "not reachable"
        return False


def start_local_redis(url: str) -> subprocess.Popen | None:
    """Start redis-server for a loopback URL; None when it is already up."""
    if redis_reachable(url):
        return None
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        raise ServiceUnavailableError(f"Redis at {url} is not reachable and is not local: "
                                      "start it first")
    if not shutil.which("redis-server"):
        raise ServiceUnavailableError("redis-server is not installed: run 'make setup' "
                                      "or 'apt-get install redis-server'")
    workdir = STATE_DIR / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([
        "redis-server", "--bind", "127.0.0.1", "--port", str(parsed.port or 6379),
        "--dir", str(workdir), "--appendonly", "yes", "--save", "",
    ], stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while not redis_reachable(url):
        if time.monotonic() > deadline or proc.poll() is not None:
            _stop([proc])
            raise ServiceUnavailableError("redis-server did not start")
        time.sleep(0.1)
    return proc


def split_bind(bind: str) -> tuple[str, int]:
    """HOST:PORT (or [V6HOST]:PORT) as a (host, port) pair."""
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit() or bind.startswith("unix:"):
        raise ConfigError(f"TABSERVE_BIND={bind!r}: tabserve run needs HOST:PORT")
    return host.strip("[]"), int(port)


def ensure_port_free(bind: str) -> None:
    """Refuse to start when something already listens on bind (gunicorn would fail later)."""
    host, port = split_bind(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As gunicorn does, so a port left in TIME_WAIT by the last run counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {bind}: {exc.strerror} (another tabserve "
                              "running?); choose another with TABSERVE_BIND or --port") from None


def run_all(settings: Settings) -> int:
    """Run everything until Ctrl-C or SIGTERM, then stop what was started; 0 on such a stop."""
    ensure_port_free(settings.bind)
    stop = _stop_on_signals()
    with _terminal_to_self():
        return _run(settings, stop)


def _run(settings: Settings, stop: threading.Event) -> int:
    _ensure_model(settings)
    if stop.is_set():
        return 0
    redis_proc = start_local_redis(settings.redis_url)
    env = {**os.environ, **settings.as_env()}
    tabserve = [sys.executable, "-m", "cli"]
    procs = {"the API": _spawn([*tabserve, "api"], env),
             "the worker": _spawn([*tabserve, "worker", "--concurrency", "1"], env)}
    try:
        if _wait_listening(settings.bind, procs, stop):
            host, port = split_bind(settings.bind)
            print(f"tabserve is running at http://{host}:{port}  (Ctrl-C stops it)", flush=True)
            while not stop.is_set() and _exited(procs) is None:
                stop.wait(0.5)
        if stop.is_set():
            return 0
        name, code = _exited(procs) or ("a process", 1)
        raise ServiceUnavailableError(f"{name} exited with status {code}; its log is above")
    finally:
        _stop(list(procs.values()))
        if redis_proc:
            _stop([redis_proc])


def _ensure_model(settings: Settings) -> None:
    from shared.models.store import ModelStore

    store = ModelStore.from_settings(settings)
    if not store.list_models(fresh=True):
        from shared.models.training import train_demo

        print("no models in", settings.artifacts_dir, "- training the demo model", flush=True)
        train_demo(store)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, handle)
    return stop


@contextlib.contextmanager
def _terminal_to_self() -> Iterator[None]:
    # Under `make run`, make leads the terminal's foreground group: the terminal's Ctrl-C
    # would reach make too, and make reports "*** [run] Interrupt" however cleanly this
    # process stops. So this process takes the terminal's foreground for its run, as a shell
    # does for a job, and hands it back at the end.
    try:
        fd = sys.stdin.fileno()
        before = os.tcgetpgrp(fd)
    except (OSError, ValueError):  # no terminal
        yield
        return
    if before != os.getpgrp() or os.getpgrp() == os.getpid():
        yield  # in the background, or already leading its group (started by a shell)
        return
    os.setpgid(0, 0)
    _set_foreground(fd, os.getpid())
    # Ctrl-Z would now stop this process alone while make waits for it, and the shell,
    # waiting for make, could not resume it.
    previous = signal.signal(signal.SIGTSTP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTSTP, previous)
        _set_foreground(fd, before)


def _set_foreground(fd: int, pgrp: int) -> None:
    # A process outside the foreground group gets SIGTTOU when it calls tcsetpgrp.
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(fd, pgrp)
    except OSError:  # the terminal went away: nothing to hand back
        pass
    finally:
        signal.signal(signal.SIGTTOU, previous)


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    # Own session: the terminal's Ctrl-C goes to this supervisor only (see the docstring).
    return subprocess.Popen(args, env=env, start_new_session=True)


def _wait_listening(bind: str, procs: dict[str, subprocess.Popen],
                    stop: threading.Event) -> bool:
    """True once the API accepts connections; False if stopped or a child exited first."""
    host, port = split_bind(bind)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    deadline = time.monotonic() + START_SECONDS
    while not stop.is_set() and _exited(procs) is None:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(f"the API did not listen on {bind} "
                                              f"within {START_SECONDS} s") from None
        stop.wait(0.2)
    return False


def _exited(procs: dict[str, subprocess.Popen]) -> tuple[str, int] | None:
    for name, proc in procs.items():
        code = proc.poll()
        if code is not None:
            return name, code
    return None


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
