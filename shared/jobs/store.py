"""Job records in Redis: create, read, list, progress and status transitions.

A job is a Redis hash (shared.keys.job); an index sorted by creation time lists every job,
and a set per live status holds its ids, so queue depth is one SCARD. Status changes are
Lua scripts (shared.jobs.scripts), so the API's cancel and a worker's start or finish cannot
interleave. Each worker attempt carries a number; a stale attempt (superseded after its
worker was presumed dead) may no longer write.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import orjson
import redis

from shared import keys
from shared.errors import JobNotFoundError
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
from shared.redisguard import redis_errors

logger = logging.getLogger(__name__)

WORKER_STALE_SECONDS = 30


class Mirror(Protocol):
    """Where a copy of each record goes (shared.jobs.mirror.RecordMirror)."""

    def save(self, job: Job) -> None: ...


class QueueCounts(NamedTuple):
    queued: int
    running: int
    workers: int
_QUEUED = keys.jobs_with_status(JobStatus.QUEUED)
_RUNNING = keys.jobs_with_status(JobStatus.RUNNING)
_RETRYING = keys.jobs_retrying()


@dataclass(frozen=True)
class PartState:
    """One part of a split job as the reaper sees it."""

    index: int
    attempt: int
    running: bool
    done: bool
    leased: bool


class PartAttempt(NamedTuple):
    """One part's last started attempt, whether it runs, its result once done, and the
    files its checkpoint names (shared.jobs.checkpoint)."""

    attempt: int
    running: bool
    done: dict[str, Any] | None
    checkpoint: dict[str, Any] | None = None


_SET_IF_EXISTS = """if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) return 1 end
return 0"""


def new_job_id() -> str:
    # 128 random bits (uuid4 keeps 122), in the UUID's dashed form that clients know.
    return str(uuid.UUID(bytes=secrets.token_bytes(16)))


class JobStore:
    """Job records in Redis."""

    def __init__(self, client: redis.Redis, ttl_seconds: int,
                 mirror: Mirror | None = None) -> None:
        self.r: Any = client  # redis-py's own types are too loose to check against
        self.ttl = ttl_seconds
        self.mirror = mirror
        # Called with a job's id once it has become final (shared.services wires the
        # callback's sending there); its failures are logged, never the job's.
        self.on_end: Callable[[str], None] | None = None
        self._start = client.register_script(jobscripts.START)
        self._finish = client.register_script(jobscripts.FINISH)
        self._progress = client.register_script(jobscripts.PROGRESS)
        self._part_start = client.register_script(jobscripts.PART_START)
        self._part_progress = client.register_script(jobscripts.PART_PROGRESS)
        self._part_done = client.register_script(jobscripts.PART_DONE)
        self._part_requeue = client.register_script(jobscripts.PART_REQUEUE)
        self._requeue = client.register_script(jobscripts.REQUEUE)
        self._renew = client.register_script(jobscripts.RENEW)
        self._release = client.register_script(jobscripts.RELEASE)
        self._touch = client.register_script(jobscripts.TOUCH)
        self._restore = client.register_script(jobscripts.RESTORE)

    def create(self, job: Job) -> Job:
        """Store a new queued job (its copy first, when the store keeps copies)."""
        if self.mirror is not None:
            self.mirror.save(job)
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

    def start(self, job_id: str, attempt: int, worker: str, lease_seconds: float = 30,
              limit_seconds: float = 6 * 3600) -> Answer:
        """Start this attempt of a queued job, holding its lease; else why not (STALE: it is
        running, or the attempt is not the next one)."""
        with redis_errors():
            result = self._start(keys=self._job_keys(job_id),
                                 args=[job_id, attempt, now(), worker,
                                       int(lease_seconds * 1000), limit_seconds])
        return self._copied(job_id, answer(result), JobStatus.RUNNING)

    @staticmethod
    def _job_keys(job_id: str) -> list[str]:
        return [keys.job(job_id), _QUEUED, _RUNNING, _RETRYING, keys.job_lease(job_id)]

    def requeue(self, job_id: str, attempt: int, max_attempts: int, reason: str,
                error: JobError) -> Answer:
        """Send a running attempt whose lease is gone back to queued (QUEUED), or fail the
        job with `error` once it has had max_attempts (FAILED); else why not."""
        stamp = now()
        retry = {"reason": reason, "attempt": attempt + 1, "at": stamp}
        result = self._requeue(keys=self._job_keys(job_id),
                               args=[job_id, attempt, max_attempts, stamp,
                                     orjson.dumps(retry).decode(),
                                     orjson.dumps(error.to_dict()).decode(), self.ttl])
        return self._copied(job_id, answer(result), JobStatus.QUEUED, JobStatus.FAILED)

    def renew_lease(self, key: str, attempt: int, seconds: float) -> bool:
        """Extend a lease while it is still this attempt's; False once it is not."""
        return bool(self._renew(keys=[key], args=[attempt, int(seconds * 1000)]))

    def release_lease(self, key: str, attempt: int) -> None:
        self._release(keys=[key], args=[attempt])

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
                keys=self._job_keys(job_id),
                args=[job_id, "" if attempt is None else attempt, status.value, self.ttl,
                      *flat])
        return self._copied(job_id, answer(result), status)

    def _copied(self, job_id: str, result: Answer, *changed: JobStatus) -> Answer:
        """After a change of status to one of `changed`: write the record's copy. A copy that
        cannot be written is logged; the change stands (the next change writes it again).
        A final one is told to on_end."""
        if self.on_end is not None and result in changed and result in FINAL:
            try:
                self.on_end(job_id)
            except Exception as exc:  # noqa: BLE001 - a callback never fails the job
                logger.warning("job %s: its callback was not queued: %s", job_id, exc,
                               extra={"job_id": job_id})
        if result in changed:
            self._save_copy(job_id)
        return result

    def _save_copy(self, job_id: str) -> None:
        """Write the record's copy from Redis, while the record exists. A copy that cannot
        be written is logged; the change stands (the next change writes it again)."""
        if self.mirror is None:
            return
        try:
            raw = self.r.hgetall(keys.job(job_id))
            if raw:
                self.mirror.save(decode(raw))
        except Exception as exc:  # noqa: BLE001 - storage or Redis away: logged, not fatal
            logger.warning("job %s: the copy of its record was not written: %s", job_id,
                           exc, extra={"job_id": job_id})

    def claim_callback(self, job_id: str, state: dict[str, Any]) -> bool:
        """Set a job's first callback state; False when it has one (the delivery was
        queued already)."""
        with redis_errors():
            return bool(self.r.hsetnx(keys.job(job_id), "callback", orjson.dumps(state)))

    def set_callback(self, job_id: str, state: dict[str, Any]) -> None:
        """Record a callback's delivery state, while the job has a record, in Redis and in
        the record's copy (a record restored after Redis lost it shows the delivery)."""
        with redis_errors():
            # One script: a record deleted meanwhile is not brought back as a stub.
            kept = self.r.eval(_SET_IF_EXISTS, 1, keys.job(job_id), "callback",
                               orjson.dumps(state))
        if kept:
            self._save_copy(job_id)

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ids among `ids` that have no record."""
        ids = list(ids)
        pipe = self.r.pipeline()
        for job_id in ids:
            pipe.exists(keys.job(job_id))
        return [job_id for job_id, there in zip(ids, pipe.execute(), strict=True) if not there]

    def restore(self, job: Job, ttl_seconds: int | None) -> bool:
        """Write a record Redis lost, unless one exists (then False): a live one is queued
        (and counted as waiting for a retry); a final one expires in ttl_seconds."""
        flat = [x for k, v in encode(job_fields(job)).items() for x in (k, v)]
        with redis_errors():
            done = self._restore(keys=[keys.job(job.id), keys.jobs_index(), _QUEUED, _RETRYING],
                                 args=[job.id, job.created_at,
                                       "" if ttl_seconds is None else ttl_seconds, *flat])
        return bool(done)

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

    def part_start(self, job_id: str, index: int, attempt: int | None,
                   lease_seconds: float = 30) -> tuple[Answer, int]:
        """Begin this attempt at a part (None: its next), holding the part's lease:
        (RUNNING or why not, the attempt). DUPLICATE when the part is done already."""
        status, started = self._part_start(
            keys=[*self._part_keys(job_id), keys.part_lease(job_id, index)],
            args=[index, "" if attempt is None else attempt, int(lease_seconds * 1000)])
        return answer(status), int(started)

    def part_requeue(self, job_id: str, index: int, attempt: int, max_attempts: int) -> Answer:
        """Free a part whose attempt lost its lease for its next attempt (QUEUED); FAILED
        when it has had max_attempts (the caller fails the job); else why not."""
        result = self._part_requeue(
            keys=[*self._part_keys(job_id), keys.part_lease(job_id, index)],
            args=[index, attempt, max_attempts])
        return answer(result)

    def part_states(self, job_id: str, total: int) -> list[PartState]:
        """Every part's attempt, whether it runs, is done, and holds a live lease."""
        pipe = self.r.pipeline()
        for i in range(total):
            pipe.hmget(keys.job_parts(job_id), [f"{i}:attempt", f"{i}:running", f"{i}:done"])
            pipe.exists(keys.part_lease(job_id, i))
        raw = pipe.execute()
        return [PartState(i, int(a or 0), r is not None, d is not None, bool(leased))
                for i, ((a, r, d), leased) in enumerate(zip(raw[::2], raw[1::2], strict=True))]

    def part_attempts(self, job_id: str, total: int) -> list[PartAttempt]:
        """Every part's last started attempt, whether it runs, its result once done, and
        its checkpoint."""
        pipe = self.r.pipeline()
        for i in range(total):
            pipe.hmget(keys.job_parts(job_id), [f"{i}:attempt", f"{i}:running", f"{i}:done",
                                                f"{i}:checkpoint"])
        return [PartAttempt(int(a or 0), r is not None, None if d is None else orjson.loads(d),
                            None if c is None else orjson.loads(c))
                for a, r, d, c in pipe.execute()]

    def part_progress(self, job_id: str, index: int, attempt: int, rows: int, nbytes: int,
                      failed: int, checkpoint: str = "") -> Answer:
        """Add a chunk's rows to the job's progress, and record the part's checkpoint (JSON,
        when given); RUNNING or why to stop."""
        result = self._part_progress(keys=self._part_keys(job_id),
                                     args=[index, attempt, rows, nbytes, failed, now(),
                                           checkpoint])
        return answer(result)

    def part_checkpoint(self, job_id: str, index: int) -> tuple[dict[str, Any] | None, int]:
        """A part's last checkpoint (None if none), and the rows its last attempt reported."""
        raw, rows = self.r.hmget(keys.job_parts(job_id),
                                 [f"{index}:checkpoint", f"{index}:rows_done"])
        return (None if raw is None else orjson.loads(raw)), int(rows or 0)

    def part_done(self, job_id: str, index: int, attempt: int,
                  result: dict[str, Any]) -> int | Answer:
        """Mark a part scored: how many parts are done now, or why it does not count."""
        raw = self._part_done(keys=[*self._part_keys(job_id), keys.part_lease(job_id, index)],
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
            pipe.delete(keys.job_predictions(job_id))  # kept for feedback, else for days
            pipe.zrem(keys.jobs_index(), job_id)
            pipe.execute()

    def counts(self) -> QueueCounts:
        """Jobs waiting, jobs running with a live lease, and live workers, for metrics."""
        with redis_errors():
            pipe = self.r.pipeline()
            pipe.scard(_QUEUED)
            pipe.zcount(keys.workers(), now() - WORKER_STALE_SECONDS, "+inf")
            queued, workers = pipe.execute()
            running = self.live_running()
        return QueueCounts(int(queued), running, int(workers))

    def live_running(self) -> int:
        """Running jobs whose attempt (or one of whose parts) holds a live lease: a job
        whose worker died is not counted while it waits for the reaper."""
        ids = [i.decode() for i in self.r.smembers(_RUNNING)]
        pipe = self.r.pipeline()
        for job_id in ids:
            pipe.exists(keys.job_lease(job_id))
            pipe.hget(keys.job(job_id), "parts_total")
        raw = pipe.execute()
        live = 0
        for job_id, leased, parts in zip(ids, raw[::2], raw[1::2], strict=True):
            if leased:
                live += 1
            elif parts and int(parts):
                live += any(p.leased for p in self.part_states(job_id, int(parts)))
        return live

    def ids_with_status(self, status: JobStatus) -> list[str]:
        """Ids of the jobs in a live status (queued or running)."""
        return [i.decode() for i in self.r.smembers(keys.jobs_with_status(status))]

    def retrying(self) -> int:
        """Queued jobs waiting for their next attempt after a lost one."""
        return int(self.r.scard(_RETRYING))

    def hold_lock(self, key: str, owner: str, seconds: float) -> bool:
        """Take a lock, or extend it if this owner holds it; False when another does."""
        ms = int(seconds * 1000)
        return bool(self.r.set(key, owner, nx=True, px=ms)
                    or self._renew(keys=[key], args=[owner, ms]))

    def redis_restarted(self) -> tuple[bool | None, str]:
        """Whether Redis restarted since a reaper last noted its run id (`note_redis_run`):
        True when the run id changed, None when the key that keeps it is gone (the very first
        pass, or a Redis that came back empty), False otherwise; and the run id now. The
        caller notes the run id only once it has done what a restart calls for, so a pass cut
        short (a stale connection, Redis going away again) is done again by the next."""
        run_id = self.r.info("server")["run_id"]
        seen = self.r.get(keys.reaper_redis_run_id())
        return (None if seen is None else seen.decode() != run_id), run_id

    def note_redis_run(self, run_id: str) -> None:
        """What a restart of this Redis run calls for is done (see `redis_restarted`)."""
        self.r.set(keys.reaper_redis_run_id(), run_id)

    def mark_sent(self, job_id: str) -> None:
        """The job's message was (re-)sent now."""
        self._touch(keys=[keys.job(job_id)], args=["sent_at", now()])

    def mark_unsent(self, job_id: str) -> None:
        """The job's message could not be sent: the reaper's next pass sends it."""
        self._touch(keys=[keys.job(job_id)], args=["sent_at", 0])

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


