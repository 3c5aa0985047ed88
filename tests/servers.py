"""Real processes for tests: redis-server, gunicorn (`tabserve api`), Celery (`tabserve worker`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` different TCP ports on 127.0.0.1, free right now: each is held while the next
    is drawn (ports drawn one by one and let go can repeat: a SeaweedFS started on such a set
    failed to bind its volume port twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05):
    """Poll check() until it is true; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Process:
    """A child process in its own process group, stopped (and its children) by stop()."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path = ROOT):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.logged()

    def logged(self) -> str:
        """The end of the log as it is on disk (also after stop())."""
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.kill(signal.SIGKILL)  # any grandchild left in the group
        self._log.close()


class RedisServer(Process):
    """redis-server on a free loopback port (or the given one, to stand in for a stopped
    one). With `aof`, an append-only file in workdir keeps what was written across a
    restart; without, a restart comes back empty."""

    def __init__(self, workdir: Path, port: int | None = None, aof: bool = False,
                 timeout: float = 10):
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not installed: run 'make setup'")
        self.workdir, self.port, self.aof = workdir, port or free_port(), aof
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "yes" if aof else "no", "--dir", str(workdir)],
            dict(os.environ), workdir / "redis.log",
        )
        import redis

        client = redis.Redis.from_url(self.url)
        wait_until(lambda: client.ping(), timeout, "redis-server")
        client.close()

    def restarted(self, timeout: float = 10) -> RedisServer:
        """A new redis-server on this one's port and directory (stop or kill this one first)."""
        return RedisServer(self.workdir, self.port, self.aof, timeout)


def tabserve_env(settings_env: dict[str, str], extra: dict[str, str] | None = None):
    """A child environment: the parent's, minus TABSERVE_*, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TABSERVE_")}
    env.update(settings_env)
    env.update(extra or {})
    return env


class ApiServer(Process):
    """`tabserve api` (gunicorn) on a free loopback port."""

    def __init__(self, env: dict[str, str], log_dir: Path, workers: int = 2, cwd: Path = ROOT):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, "-m", "cli", "api", "--bind", f"127.0.0.1:{self.port}",
             "--workers", str(workers)],
            env, log_dir / f"api-{self.port}.log", cwd,
        )
        try:
            wait_until(lambda: requests.get(self.url + "/healthz", timeout=1).ok, 60, "gunicorn")
        except TimeoutError:
            self.stop()  # closes the log file: read it from disk
            raise RuntimeError("gunicorn did not start in 60 s:\n" + self.logged()) from None


class WorkerProcess(Process):
    """`tabserve worker` (a real Celery worker) with one pool process."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str, concurrency: int = 1,
                 cwd: Path = ROOT):
        self.name = name
        super().__init__(
            [sys.executable, "-m", "cli", "worker", "--concurrency", str(concurrency),
             "--hostname", f"{name}@%h", "--loglevel", "INFO"],
            env, log_dir / f"worker-{name}-{os.getpid()}.log", cwd,
        )
        try:
            wait_until(lambda: "ready" in self.log(), 60, f"worker {name}", interval=0.1)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"worker {name} did not start in 60 s:\n" + self.logged()) \
                from None
