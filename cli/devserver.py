"""`tabserve run`: Redis (when not already up), the API and one worker, for development."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from shared.config import Settings
from shared.models.store import ModelStore

STATE_DIR = Path(".tabserve")


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
        sys.exit(f"Redis at {url} is not reachable and is not local: start it first")
    if not shutil.which("redis-server"):
        sys.exit("redis-server is not installed: run 'make setup' "
                 "or 'apt-get install redis-server'")
    workdir = STATE_DIR / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([
        "redis-server", "--bind", "127.0.0.1", "--port", str(parsed.port or 6379),
        "--dir", str(workdir), "--appendonly", "yes", "--save", "",
    ], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not redis_reachable(url):
        if time.monotonic() > deadline or proc.poll() is not None:
            sys.exit("redis-server did not start")
        time.sleep(0.1)
    return proc


def run_all(settings: Settings, port: int) -> int:
    """Run everything until Ctrl-C, then stop what was started."""
    store = ModelStore(settings.artifacts_dir)
    if not store.list_models(fresh=True):
        from shared.models.training import train_demo

        print("no models in", settings.artifacts_dir, "- training the demo model", flush=True)
        train_demo(store)
    procs: list[subprocess.Popen] = []
    redis_proc = start_local_redis(settings.redis_url)
    if redis_proc:
        procs.append(redis_proc)
    tabserve = [sys.executable, "-m", "cli"]
    procs.append(subprocess.Popen(tabserve + ["api", "--bind", f"127.0.0.1:{port}"]))
    procs.append(subprocess.Popen(tabserve + ["worker", "--concurrency", "1"]))
    print(f"tabserve is running at http://127.0.0.1:{port}  (Ctrl-C stops it)", flush=True)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
