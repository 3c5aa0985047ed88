"""What the soak puts on tabserve and watches: a steady /predict load, a stream of jobs (each
checked against its ledger), and memory samples of every process and of Redis."""

from __future__ import annotations

import io
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import redis
import requests
from sklearn.datasets import load_breast_cancer

from bench.common import demo_table
from shared.keys import PREFIX

TIMEOUT = 10.0  # seconds a /predict answer may take before it counts as failed


def _reason(exc_or_response: Any) -> str:
    if isinstance(exc_or_response, requests.Response):
        return f"HTTP {exc_or_response.status_code}: {exc_or_response.text[:160]!r}"
    return f"{type(exc_or_response).__name__}: {str(exc_or_response)[:160]}"


@dataclass
class Answer:
    at: float  # seconds since the soak started
    seconds: float
    ok: bool
    reason: str = ""


class PredictLoad:
    """`rate` /predict requests/s, open loop, from `threads` keep-alive sessions; every answer
    must be 200 with a prediction in it."""

    def __init__(self, url: str, rate: float, threads: int, t0: float) -> None:
        data = load_breast_cancer()
        self.bodies = [{"features": dict(zip(map(str, data.feature_names), row.tolist(),
                                             strict=True))} for row in data.data]
        self.url, self.rate, self.n, self.t0 = url + "/predict", rate, threads, t0
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(k,), daemon=True)
                         for k in range(threads)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=TIMEOUT + 5)

    def _client(self, k: int) -> None:
        session = requests.Session()
        interval = self.n / self.rate
        start = time.monotonic() + k * interval / self.n
        i = 0
        while not self.stop.is_set():
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            body = self.bodies[(i * self.n + k) % len(self.bodies)]
            sent = time.monotonic()
            answer = self._one(session, body, sent)
            with self._lock:
                self.answers.append(answer)
            i += 1

    def _one(self, session: requests.Session, body: dict, sent: float) -> Answer:
        try:
            r = session.post(self.url, json=body, timeout=TIMEOUT)
            took = time.monotonic() - sent
            ok = r.status_code == 200 and "prediction" in r.json()
            return Answer(sent - self.t0, took, ok, "" if ok else _reason(r))
        except (requests.RequestException, ValueError) as exc:
            return Answer(sent - self.t0, time.monotonic() - sent, False, _reason(exc))


@dataclass
class Job:
    id: str
    rows: int
    submitted: float
    status: str = "queued"
    attempts: int = 0
    retry: dict | None = None
    parts: int = 0
    finished: float | None = None
    ledger: str = ""  # "ok", or what was wrong
    error: dict | None = None
    deleted: bool = False


def job_csv(rows: int) -> bytes:
    """`rows` demo rows with a `key` column 0..rows-1: the ledger."""
    frame = demo_table(rows).to_pandas()
    frame.insert(0, "key", range(rows))
    return frame.to_csv(index=False).encode()


@dataclass
class JobStream:
    """A job every `interval` seconds, sizes in turn; a checker follows each to its end,
    downloads its result, checks its ledger (every key once, in order), then deletes it."""

    url: str
    sizes: list[int]
    interval: float
    t0: float
    jobs: dict[str, Job] = field(default_factory=dict)
    refused: Counter = field(default_factory=Counter)  # submissions not accepted, by reason
    poll_errors: Counter = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.files = {n: job_csv(n) for n in set(self.sizes)}
        self._lock = threading.Lock()
        self._submitter = threading.Thread(target=self._submit_loop, daemon=True)
        self._checker = threading.Thread(target=self._check_loop, daemon=True)

    def start(self) -> None:
        self._submitter.start()
        self._checker.start()

    def stop_submitting(self) -> None:
        self.stop.set()
        self._submitter.join()

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.5)
        self._checker_stop = True

    def pending(self) -> list[Job]:
        with self._lock:
            return [j for j in self.jobs.values() if not j.deleted]

    def _submit_loop(self) -> None:
        session = requests.Session()
        k = 0
        while not self.stop.wait(0 if k == 0 else self.interval):
            rows = self.sizes[k % len(self.sizes)]
            k += 1
            while not self.stop.is_set():  # a refused submission is retried, and counted
                try:
                    r = session.post(self.url + "/jobs", timeout=120, data={"id_column": "key"},
                                     files={"file": ("in.csv", self.files[rows], "text/csv")})
                    if r.status_code == 202:
                        job = Job(r.json()["id"], rows, time.monotonic() - self.t0)
                        with self._lock:
                            self.jobs[job.id] = job
                        break
                    self.refused[_reason(r)] += 1
                except requests.RequestException as exc:
                    self.refused[_reason(exc)] += 1
                time.sleep(1.0)

    def _check_loop(self) -> None:
        session = requests.Session()
        self._checker_stop = False
        while not self._checker_stop:
            for job in self.pending():
                try:
                    self._check(session, job)
                except (requests.RequestException, ValueError, KeyError) as exc:
                    self.poll_errors[_reason(exc)] += 1
            time.sleep(0.5)

    def _check(self, session: requests.Session, job: Job) -> None:
        if job.ledger:  # checked; its deletion failed before (Redis away): again
            self._delete(session, job)
            return
        r = session.get(f"{self.url}/jobs/{job.id}", timeout=30)
        if r.status_code != 200:
            self.poll_errors[_reason(r)] += 1
            return
        body = r.json()
        job.status, job.attempts = body["status"], body["attempts"]
        job.retry, job.error = body.get("retry"), body.get("error")
        job.parts = body.get("parts", {}).get("total", 0)
        if job.status not in ("succeeded", "failed", "cancelled"):
            return
        job.finished = job.finished or time.monotonic() - self.t0
        if job.status != "succeeded":
            job.ledger = f"{job.status}: {job.error}"
            job.deleted = True  # kept, to be looked at
            return
        result = session.get(f"{self.url}/jobs/{job.id}/result", timeout=120)
        if result.status_code != 200:
            self.poll_errors[_reason(result)] += 1
            return
        keys = pd.read_csv(io.BytesIO(result.content), usecols=["key"])["key"]
        job.ledger = "ok" if keys.tolist() == list(range(job.rows)) else (
            f"{len(keys)} rows for {job.rows}, {keys.nunique()} distinct, "
            f"{'in' if keys.is_monotonic_increasing else 'out of'} order")
        if job.ledger != "ok":
            job.deleted = True  # kept, to be looked at
            return
        self._delete(session, job)

    def _delete(self, session: requests.Session, job: Job) -> None:
        deleted = session.delete(f"{self.url}/jobs/{job.id}", timeout=30)
        job.deleted = deleted.status_code in (200, 204)
        if not job.deleted:
            self.poll_errors[f"delete: {_reason(deleted)}"] += 1


def succeeded_lines(log_dir: Path, job_id: str) -> int:
    """How many times the workers' logs say this job succeeded."""
    text = f"job {job_id}: succeeded"
    return sum(p.read_text(errors="replace").count(text) for p in log_dir.glob("worker-*.log"))


def tree_rss(pid: int | None) -> int:
    """Resident bytes of a process and its descendants (0 when it is gone)."""
    if pid is None:
        return 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


@dataclass
class Sample:
    at: float
    rss: dict[str, int]  # process (tree) name -> bytes
    redis_used: int | None
    kinds: dict[str, int] | None  # bytes of tabserve's keys by kind (`predb`, `jobpred`, ...)
    keys: int | None
    load: float

    @property
    def kept(self) -> int | None:
        return sum(self.kinds.values()) if self.kinds is not None else None


def redis_memory(url: str) -> tuple[int | None, dict[str, int] | None, int | None]:
    """used_memory, the bytes of tabserve's keys by kind, how many keys in all."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        used = int(client.info("memory")["used_memory"])
        names = list(client.scan_iter(match=PREFIX + "*", count=1000))
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.memory_usage(name, samples=0)
        kinds: Counter = Counter()
        for name, size in zip(names, pipe.execute(), strict=True):
            kinds[name.decode()[len(PREFIX):].split(":")[0]] += size or 0
        return used, dict(kinds), int(client.dbsize())
    except redis.RedisError:
        return None, None, None
    finally:
        client.close()


LOG_LINES = {  # what the processes' logs say about the faults, and errors
    "job attempts lost with their worker, re-sent": r"job \S+: attempt \d+ lost its worker",
    "part attempts lost with their worker, re-sent": r"part \d+: attempt \d+ lost its worker",
    "attempts abandoned, Redis lost": r"abandoned, Redis lost",
    "messages dropped (duplicate or late)": r"message for attempt \S+ dropped",
    "reaper saw Redis restarted": r"reaper: Redis restarted",
    "lines at level error": r'"level":"(error|critical)"',
    "lines with a traceback": r"Traceback",
}
LOST = re.compile(r'"time":"([^"]+)".*?"message":"job (\S+?)( part \d+)?: attempt (\d+) '
                  r'(lost its worker|abandoned, Redis lost)')


@dataclass
class Lost:
    at: float  # seconds since the soak started
    job_id: str
    part: str  # "" or " part N"
    attempt: int
    why: str


def lost_attempts(log_dir: Path, wall0: float) -> list[Lost]:
    """Every attempt the workers' logs say was lost (reaper) or abandoned (Redis), in time."""
    found = []
    for path in log_dir.glob("worker-*.log"):
        for m in LOST.finditer(path.read_text(errors="replace")):
            at = datetime.fromisoformat(m.group(1)).timestamp() - wall0
            found.append(Lost(at, m.group(2), m.group(3) or "", int(m.group(4)), m.group(5)))
    return sorted(found, key=lambda lost: lost.at)


def write_samples(samples: list[Sample], path: Path) -> None:
    """Every sample as a CSV row (MB), for a closer look than the report's three."""
    names = list(samples[0].rss)
    rows = ["s,load," + ",".join(f"{n} RSS" for n in names) + ",redis used,tabserve keys,keys"]
    for s in samples:
        mb = [f"{s.rss[n] / (1 << 20):.1f}" for n in names]
        used = f"{s.redis_used / (1 << 20):.2f}" if s.redis_used is not None else ""
        kept = f"{s.kept / (1 << 20):.2f}" if s.kept is not None else ""
        rows.append(f"{s.at:.0f},{s.load:.2f},{','.join(mb)},{used},{kept},{s.keys or ''}")
    path.write_text("\n".join(rows) + "\n")


def log_counts(log_dir: Path) -> dict[str, dict[str, int]]:
    """For the API's logs and the workers': how many lines say each of LOG_LINES."""
    out: dict[str, dict[str, int]] = {}
    for who, pattern in (("API", "api-*.log"), ("workers", "worker-*.log")):
        text = "".join(p.read_text(errors="replace") for p in log_dir.glob(pattern))
        lines = text.splitlines()
        out[who] = {what: sum(1 for line in lines if re.search(regex, line))
                    for what, regex in LOG_LINES.items()}
    return out
