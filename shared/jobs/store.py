"""Job records in Redis: create, read, list, progress and status transitions.

A job is a Redis hash (shared.keys.job); an index sorted by creation time lists every job,
and a set per live status holds its ids, so queue depth is one SCARD. Status changes are
Lua scripts (shared.jobs.scripts), so the API's cancel and a worker's start or finish cannot
interleave. Each worker attempt carries a number; a stale attempt (superseded after its
worker was presumed dead) may no longer write.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import orjson
import redis

from shared import keys
from shared.errors import JobNotFoundError, QueueUnavailableError
from shared.jobs import scripts as jobscripts
from shared.jobs.record import (
    FINAL,
    Answer,
    Job,
    JobError,
    JobStatus,
    answer,
    decode,
    encode,
    job_fields,
    now,
)

WORKER_STALE_SECONDS = 30


class QueueCounts(NamedTuple):
    queued: int
    running: int
    workers: int
_QUEUED = keys.jobs_with_status(JobStatus.QUEUED)
_RUNNING = keys.jobs_with_status(JobStatus.RUNNING)


def new_job_id() -> str:
    # 128 random bits (uuid4 keeps 122), in the UUID's dashed form that clients know.
    return str(uuid.UUID(bytes=secrets.token_bytes(16)))


@contextmanager
def redis_errors() -> Iterator[None]:
    """Turn an unreachable Redis into a 503 with a clear message (a timeout, a refused
    connection, or the API's open circuit: shared.redisguard)."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise QueueUnavailableError(
            f"the job queue (Redis) is not reachable: {exc.__class__.__name__}; "
            "online /predict is unaffected"
        ) from None


class JobStore:
    """Job records in Redis."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.r: Any = client  # redis-py's own types are too loose to check against
        self.ttl = ttl_seconds
        self._start = client.register_script(jobscripts.START)
        self._finish = client.register_script(jobscripts.FINISH)
        self._progress = client.register_script(jobscripts.PROGRESS)
        self._part_start = client.register_script(jobscripts.PART_START)
        self._part_progress = client.register_script(jobscripts.PART_PROGRESS)
        self._part_done = client.register_script(jobscripts.PART_DONE)

    def create(self, job: Job) -> Job:
        """Store a new queued job."""
        with redis_errors():
            pipe = self.r.pipeline()
            pipe.hset(keys.job(job.id), mapping=encode(job_fields(job)))
            pipe.zadd(keys.jobs_index(), {job.id: job.created_at})
            pipe.sadd(_QUEUED, job.id)
            pipe.execute()
        return job

    def get(self, job_id: str) -> Job:
        """The job's record; JobNotFoundError when unknown or expired."""
        with redis_errors():
            raw = self.r.hgetall(keys.job(job_id))
        if not raw:
            raise JobNotFoundError(f"no job {job_id!r} (unknown, or expired)")
        return decode(raw)

    def exists(self, job_id: str) -> bool:
        """Whether the job still has a record."""
        return bool(self.r.exists(keys.job(job_id)))

    def recent(self, limit: int = 50, status: JobStatus | None = None,
               owner: str | None = None, any_owner: bool = True) -> list[Job]:
        """Recent jobs, newest first, optionally of one status; only `owner`'s unless
        any_owner."""
        out: list[Job] = []
        with redis_errors():
            start = 0
            while len(out) < limit:
                ids = self.r.zrevrange(keys.jobs_index(), start, start + 199)
                if not ids:
                    break
                start += len(ids)
                pipe = self.r.pipeline()
                for job_id in ids:
                    pipe.hgetall(keys.job(job_id.decode()))
                expired = []
                for job_id, raw in zip(ids, pipe.execute(), strict=True):
                    if not raw:
                        expired.append(job_id)
                        continue
                    job = decode(raw)
                    if (status is None or job.status is status) and \
                            (any_owner or job.owner == owner):
                        out.append(job)
                if expired:
                    self.r.zrem(keys.jobs_index(), *expired)
        return out[:limit]

    def start(self, job_id: str, attempt: int, worker: str) -> Answer:
        """Mark running for this attempt; returns the status found if it cannot run."""
        with redis_errors():
            result = self._start(keys=[keys.job(job_id), _QUEUED, _RUNNING],
                                 args=[job_id, attempt, now(), worker])
        return answer(result)

    def progress(self, job_id: str, attempt: int, **fields: Any) -> Answer:
        """Record progress; returns RUNNING, or why this attempt should stop."""
        flat = [x for k, v in encode({**fields, "heartbeat_at": now()}).items() for x in (k, v)]
        with redis_errors():
            result = self._progress(keys=[keys.job(job_id)], args=[attempt, *flat])
        return answer(result)

    def finish(self, job_id: str, status: JobStatus, attempt: int | None = None,
               **fields: Any) -> Answer:
        """Move a live job to a final status (once); returns the resulting status."""
        status = JobStatus(status)
        assert status in FINAL
        flat = [x for k, v in encode({**fields, "finished_at": now()}).items() for x in (k, v)]
        with redis_errors():
            result = self._finish(
                keys=[keys.job(job_id), _QUEUED, _RUNNING],
                args=[job_id, "" if attempt is None else attempt, status.value, self.ttl,
                      *flat])
        return answer(result)

    def fail(self, job_id: str, error: JobError, attempt: int | None = None) -> Answer:
        """Move a live job to failed with its error (fenced by the attempt, when given)."""
        return self.finish(job_id, JobStatus.FAILED, attempt, error=error)

    # --- parts of a job split across workers ---

    def set_parts(self, job_id: str, specs: list[dict[str, int]]) -> None:
        """Record a job's parts (before their messages are sent)."""
        pipe = self.r.pipeline()
        pipe.delete(keys.job_parts(job_id))
        pipe.hset(keys.job_parts(job_id), mapping={f"{i}:spec": orjson.dumps(spec).decode()
                                                   for i, spec in enumerate(specs)})
        pipe.expire(keys.job_parts(job_id), self.ttl)
        pipe.hset(keys.job(job_id), mapping={"parts_total": len(specs), "parts_done": 0})
        pipe.execute()

    def parts_dispatched(self, job_id: str) -> None:
        """Every part's message is sent: a re-delivered coordinator need not send them again."""
        self.r.hset(keys.job(job_id), "parts_dispatched", 1)

    def part_spec(self, job_id: str, index: int) -> dict[str, int]:
        raw = self.r.hget(keys.job_parts(job_id), f"{index}:spec")
        if raw is None:
            raise JobNotFoundError(f"job {job_id} has no part {index}")
        return orjson.loads(raw)

    def part_start(self, job_id: str, index: int) -> tuple[Answer, int]:
        """Begin an attempt at a part: (RUNNING or why not, attempt)."""
        status, attempt = self._part_start(keys=self._part_keys(job_id), args=[index])
        return answer(status), int(attempt)

    def part_progress(self, job_id: str, index: int, attempt: int, rows: int, nbytes: int,
                      failed: int) -> Answer:
        """Add a chunk's rows to the job's progress; RUNNING or why to stop."""
        result = self._part_progress(keys=self._part_keys(job_id),
                                     args=[index, attempt, rows, nbytes, failed, now()])
        return answer(result)

    def part_done(self, job_id: str, index: int, attempt: int,
                  result: dict[str, Any]) -> int | Answer:
        """Mark a part scored: how many parts are done now, or why it does not count."""
        raw = self._part_done(keys=self._part_keys(job_id),
                              args=[index, attempt, orjson.dumps(result).decode()])
        text = raw.decode()
        return int(text) if text.isdecimal() else answer(text)

    @staticmethod
    def _part_keys(job_id: str) -> list[str]:
        return [keys.job(job_id), keys.job_parts(job_id)]

    def part_results(self, job_id: str, count: int) -> list[dict[str, Any]]:
        """Every part's result, in part order."""
        raw = self.r.hmget(keys.job_parts(job_id), [f"{i}:done" for i in range(count)])
        return [orjson.loads(r) for r in raw]

    def part_counts(self, job_id: str, upto: int) -> list[int | None]:
        """Row counts of parts [0, upto) where known."""
        if upto == 0:
            return []
        raw = self.r.hmget(keys.job_parts(job_id), [f"{i}:count" for i in range(upto)])
        return [None if r is None else int(r) for r in raw]

    def set_part_count(self, job_id: str, index: int, rows: int) -> None:
        self.r.hsetnx(keys.job_parts(job_id), f"{index}:count", rows)

    def delete(self, job_id: str) -> None:
        """Forget a finished job."""
        with redis_errors():
            pipe = self.r.pipeline()
            pipe.delete(keys.job(job_id))
            pipe.delete(keys.job_parts(job_id))
            pipe.zrem(keys.jobs_index(), job_id)
            pipe.execute()

    def counts(self) -> QueueCounts:
        """Jobs waiting and running, and live workers, for metrics."""
        with redis_errors():
            pipe = self.r.pipeline()
            pipe.scard(_QUEUED)
            pipe.scard(_RUNNING)
            pipe.zcount(keys.workers(), now() - WORKER_STALE_SECONDS, "+inf")
            queued, running, workers = pipe.execute()
        return QueueCounts(int(queued), int(running), int(workers))

    def worker_heartbeat(self, name: str, processes: int) -> None:
        """Record that a worker (its `processes` pool processes) is alive now."""
        stamp = now()
        pipe = self.r.pipeline()
        pipe.zadd(keys.workers(), {f"{name}#{i}": stamp for i in range(processes)})
        pipe.zremrangebyscore(keys.workers(), "-inf", stamp - 10 * WORKER_STALE_SECONDS)
        pipe.execute()

    def worker_gone(self, name: str) -> None:
        """Forget a worker that shut down cleanly."""
        prefix = (name + "#").encode()
        members = [m for m in self.r.zrange(keys.workers(), 0, -1) if bytes(m).startswith(prefix)]
        if members:
            self.r.zrem(keys.workers(), *members)


