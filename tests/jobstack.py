"""The real-process job stack the fault tests share (tests/test_job_reliability.py,
tests/test_job_resume.py, tests/test_record_mirror.py): one API per module on its own Redis
database and queue, workers started per test, and a ledger of rows for each job.

The fixtures (a plugin of tests/conftest.py) read the module's `REDIS_DB` and `QUEUE`."""

from __future__ import annotations

import functools
import os
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import redis

from shared.jobs.store import JobStore
from tests.jobclient import read_result
from tests.servers import ApiServer, Process, WorkerProcess, tabserve_env, wait_until

LEASE = 3


def _csv(demo_data, n: int) -> bytes:
    """n demo rows (repeated) as CSV, with a leading `key` column 0..n-1: the bytes pandas
    writes for that frame, made from the demo's own lines (a 300,000-row frame took pandas
    13 s to write on a loaded machine; this takes well under one)."""
    names, X = demo_data
    lines = _demo_lines(tuple(names), X.tobytes(), X.shape)
    m = len(lines)
    rows = [f"key,{','.join(names)}", *(f"{i},{lines[i % m]}" for i in range(n))]
    return ("\n".join(rows) + "\n").encode()


@functools.lru_cache(maxsize=4)
def _demo_lines(names: tuple[str, ...], data: bytes, shape: tuple[int, ...]) -> list[str]:
    X = np.frombuffer(data).reshape(shape)
    return pd.DataFrame(X, columns=list(names)).to_csv(index=False, header=False).splitlines()


def _ledger(api_url: str, job_id: str, n: int) -> None:
    result, _ = read_result(api_url, job_id)
    assert result["key"].tolist() == list(range(n))  # every row exactly once, in order


def _pool_children(worker: WorkerProcess) -> list[psutil.Process]:
    return psutil.Process(worker.pid).children()


class Stack:
    """An API and workers on the test's settings; everything stopped at the end."""

    def __init__(self, settings, tmp_path: Path, api: ApiServer | None = None) -> None:
        self.settings, self.tmp = settings, tmp_path
        self.env = tabserve_env(settings.as_env())
        self.procs: list[Process] = []
        self.api = api or self.add(ApiServer(self.env, tmp_path, workers=1))
        self.jobs = JobStore(redis.Redis.from_url(settings.redis_url), 60)

    def add(self, proc):
        self.procs.append(proc)
        return proc

    def worker(self, name: str, concurrency: int = 1) -> WorkerProcess:
        return self.add(WorkerProcess(self.env, self.tmp, name, concurrency))

    def workers(self, *names: str) -> list[WorkerProcess]:
        """Workers started side by side (each start waits for Celery to be ready)."""
        with ThreadPoolExecutor(len(names)) as pool:
            return list(pool.map(self.worker, names))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.alive():
                os.kill(proc.pid, signal.SIGCONT)  # a test that failed while it was stopped
            proc.stop()

    def logged(self, text: str) -> int:
        """How many times the workers' whole logs say text."""
        return sum(Path(p.log_path).read_text(errors="replace").count(text)
                   for p in self.procs if isinstance(p, WorkerProcess))

    def record(self, job_id: str):
        return self.jobs.get(job_id)

    def wait_succeeded(self, ids: list[str], timeout: float, what: str) -> None:
        """Wait for every job of `ids` to succeed; else fail naming each one's state."""
        def state(job_id: str) -> object:
            try:
                job = self.record(job_id)
            except Exception as exc:  # noqa: BLE001 - no record: say so
                return type(exc).__name__
            return (job.status.value, f"attempt {job.attempt}", f"rows {job.rows_done}")

        try:
            wait_until(lambda: all(self.record(i).status == "succeeded" for i in ids), timeout,
                       what)
        except TimeoutError as exc:
            states = {i: state(i) for i in ids}
            late = {i: v for i, v in states.items() if v[0] != "succeeded"}
            exited = [p.name for p in self.procs
                      if isinstance(p, WorkerProcess) and not p.alive()]
            raise AssertionError(f"{exc}: {late}; workers exited: {exited or 'none'}; "
                                 f"logs in {self.tmp}") from None

    def wait_rows(self, job_id: str, what: str = "the job to make progress") -> None:
        wait_until(lambda: self.record(job_id).rows_done > 0, 60, what)

    def job_files(self, job_id: str) -> list[str]:
        root = Path(self.settings.data_dir) / "jobs" / job_id
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def job_stack_settings(request, base_settings, redis_server, tmp_path_factory):
    """The module's own Redis database and queue (its REDIS_DB and QUEUE), so that no other
    module's worker takes these jobs; a short lease and small chunks."""
    queue = request.module.QUEUE
    return base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + f"/{request.module.REDIS_DB}",
        queue_name=queue, job_lease_seconds=LEASE, chunk_rows=2000, part_rows=0,
        worker_threads=1, data_dir=str(tmp_path_factory.mktemp(queue) / "data"))


@pytest.fixture(scope="module")
def job_stack_api(job_stack_settings, tmp_path_factory):
    """One API for the module's tests: what they vary is the workers' settings."""
    server = ApiServer(tabserve_env(job_stack_settings.as_env()),
                       tmp_path_factory.mktemp("api"), workers=1)
    yield server
    server.stop()


@pytest.fixture
def job_stack(job_stack_settings, job_stack_api, tmp_path):
    """make(**overrides): a Stack over the module's API, on its settings with overrides;
    the module's Redis database is emptied first and its jobs' files removed (else the
    reaper puts their records back); the Stack's workers are stopped after the test."""
    client = redis.Redis.from_url(job_stack_settings.redis_url)
    client.flushdb()
    client.close()
    shutil.rmtree(Path(job_stack_settings.data_dir) / "jobs", ignore_errors=True)
    made: list[Stack] = []

    def make(**overrides) -> Stack:
        made.append(Stack(job_stack_settings.with_overrides(**overrides), tmp_path,
                          job_stack_api))
        return made[-1]

    yield make
    for s in made:
        s.stop()
