"""Job records in Redis: create, read, list, progress and status transitions.

A job is a Redis hash `tabserve:job:<id>`; `tabserve:jobs` is a sorted set of ids by creation
time; `tabserve:jobs:queued` and `tabserve:jobs:running` hold ids per live status, so queue
depth is one SCARD. Status changes are Lua scripts, so the API's cancel and a worker's
start or finish cannot interleave. Each worker attempt carries a number; a stale attempt
(superseded after its worker was presumed dead) may no longer write.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from shared.errors import JobNotFoundError, QueueUnavailableError
from shared.jobs import scripts as jobscripts

PREFIX = "tabserve:"
INDEX = PREFIX + "jobs"
LIVE = {"queued": PREFIX + "jobs:queued", "running": PREFIX + "jobs:running"}
WORKERS = PREFIX + "workers"
WORKER_STALE_SECONDS = 30
FINAL = ("succeeded", "failed", "cancelled")
STATUSES = ("queued", "running", *FINAL)
JSON_FIELDS = ("options", "error", "model", "input", "output", "drift")
INT_FIELDS = ("rows_done", "rows_total", "rows_failed", "bytes_done", "bytes_total", "attempt",
              "parts_total", "parts_done")
FLOAT_FIELDS = ("created_at", "started_at", "finished_at", "heartbeat_at")


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def new_job_id() -> str:
    return str(uuid.uuid4())


def _key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def _parts_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:parts"


@contextmanager
def redis_errors() -> Iterator[None]:
    """Turn an unreachable Redis into a 503 with a clear message."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise QueueUnavailableError(
            f"the job queue (Redis) is not reachable: {exc.__class__.__name__}; "
            "online /predict is unaffected"
        ) from None


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in fields.items():
        if v is None:
            continue
        out[k] = orjson.dumps(v).decode() if k in JSON_FIELDS else str(v)
    return out


def _decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for k, v in raw.items():
        key, text = k.decode(), v.decode()
        if key in JSON_FIELDS:
            rec[key] = orjson.loads(text)
        elif key in INT_FIELDS:
            rec[key] = int(text)
        elif key in FLOAT_FIELDS:
            rec[key] = float(text)
        else:
            rec[key] = text
    return rec


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

    def create(self, job_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Store a new queued job."""
        created = now()
        record = {**fields, "id": job_id, "status": "queued", "created_at": created,
                  "attempt": 0, "rows_done": 0, "rows_failed": 0, "bytes_done": 0}
        with redis_errors():
            pipe = self.r.pipeline()
            pipe.hset(_key(job_id), mapping=_encode(record))
            pipe.zadd(INDEX, {job_id: created})
            pipe.sadd(LIVE["queued"], job_id)
            pipe.execute()
        return record

    def get(self, job_id: str) -> dict[str, Any]:
        """The job's record; JobNotFoundError when unknown or expired."""
        with redis_errors():
            raw = self.r.hgetall(_key(job_id))
        if not raw:
            raise JobNotFoundError(f"no job {job_id!r} (unknown, or expired)")
        return _decode(raw)

    def status(self, job_id: str) -> str | None:
        """Just the status (one HGET), for a worker's between-chunk check."""
        with redis_errors():
            value = self.r.hget(_key(job_id), "status")
        return value.decode() if value else None

    def recent(self, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        """Recent jobs, newest first, optionally of one status."""
        out: list[dict[str, Any]] = []
        with redis_errors():
            start = 0
            while len(out) < limit:
                ids = self.r.zrevrange(INDEX, start, start + 199)
                if not ids:
                    break
                start += len(ids)
                pipe = self.r.pipeline()
                for job_id in ids:
                    pipe.hgetall(_key(job_id.decode()))
                expired = []
                for job_id, raw in zip(ids, pipe.execute(), strict=True):
                    if not raw:
                        expired.append(job_id)
                        continue
                    rec = _decode(raw)
                    if status is None or rec["status"] == status:
                        out.append(rec)
                if expired:
                    self.r.zrem(INDEX, *expired)
        return out[:limit]

    def start(self, job_id: str, attempt: int, worker: str) -> str:
        """Mark running for this attempt; returns the status found if it cannot run."""
        with redis_errors():
            result = self._start(keys=[_key(job_id), LIVE["queued"], LIVE["running"]],
                                 args=[job_id, attempt, now(), worker])
        return result.decode()

    def progress(self, job_id: str, attempt: int, **fields: Any) -> str:
        """Record progress; returns 'running', or why this attempt should stop."""
        flat = [x for k, v in _encode({**fields, "heartbeat_at": now()}).items() for x in (k, v)]
        with redis_errors():
            result = self._progress(keys=[_key(job_id)], args=[attempt, *flat])
        return result.decode()

    def finish(self, job_id: str, status: str, attempt: int | None = None,
               **fields: Any) -> str:
        """Move a live job to a final status (once); returns the resulting status."""
        assert status in FINAL
        flat = [x for k, v in _encode({**fields, "finished_at": now()}).items() for x in (k, v)]
        with redis_errors():
            result = self._finish(
                keys=[_key(job_id), LIVE["queued"], LIVE["running"]],
                args=[job_id, "" if attempt is None else attempt, status, self.ttl, *flat])
        return result.decode()

    # --- parts of a job split across workers ---

    def set_parts(self, job_id: str, specs: list[dict[str, int]]) -> None:
        """Record a job's parts (before their messages are sent)."""
        pipe = self.r.pipeline()
        pipe.delete(_parts_key(job_id))
        pipe.hset(_parts_key(job_id), mapping={f"{i}:spec": orjson.dumps(spec).decode()
                                               for i, spec in enumerate(specs)})
        pipe.expire(_parts_key(job_id), self.ttl)
        pipe.hset(_key(job_id), mapping={"parts_total": len(specs), "parts_done": 0})
        pipe.execute()

    def parts_dispatched(self, job_id: str) -> None:
        """Every part's message is sent: a re-delivered coordinator need not send them again."""
        self.r.hset(_key(job_id), "parts_dispatched", 1)

    def part_spec(self, job_id: str, index: int) -> dict[str, int]:
        raw = self.r.hget(_parts_key(job_id), f"{index}:spec")
        if raw is None:
            raise JobNotFoundError(f"job {job_id} has no part {index}")
        return orjson.loads(raw)

    def part_start(self, job_id: str, index: int) -> tuple[str, int]:
        """Begin an attempt at a part: (status, attempt)."""
        status, attempt = self._part_start(keys=[_key(job_id), _parts_key(job_id)],
                                           args=[index])
        return status.decode(), int(attempt)

    def part_progress(self, job_id: str, index: int, attempt: int, rows: int, nbytes: int,
                      failed: int) -> str:
        """Add a chunk's rows to the job's progress; 'running' or why to stop."""
        result = self._part_progress(keys=[_key(job_id), _parts_key(job_id)],
                                     args=[index, attempt, rows, nbytes, failed, now()])
        return result.decode()

    def part_done(self, job_id: str, index: int, attempt: int, result: dict[str, Any]) -> str:
        """Mark a part scored; returns how many parts are done, or why it does not count."""
        answer = self._part_done(keys=[_key(job_id), _parts_key(job_id)],
                                 args=[index, attempt, orjson.dumps(result).decode()])
        return answer.decode()

    def part_results(self, job_id: str, count: int) -> list[dict[str, Any]]:
        """Every part's result, in part order."""
        raw = self.r.hmget(_parts_key(job_id), [f"{i}:done" for i in range(count)])
        return [orjson.loads(r) for r in raw]

    def part_counts(self, job_id: str, upto: int) -> list[int | None]:
        """Row counts of parts [0, upto) where known."""
        if upto == 0:
            return []
        raw = self.r.hmget(_parts_key(job_id), [f"{i}:count" for i in range(upto)])
        return [None if r is None else int(r) for r in raw]

    def set_part_count(self, job_id: str, index: int, rows: int) -> None:
        self.r.hsetnx(_parts_key(job_id), f"{index}:count", rows)

    def delete(self, job_id: str) -> None:
        """Forget a finished job."""
        with redis_errors():
            pipe = self.r.pipeline()
            pipe.delete(_key(job_id))
            pipe.delete(_parts_key(job_id))
            pipe.zrem(INDEX, job_id)
            pipe.execute()

    def counts(self) -> dict[str, int]:
        """Jobs waiting and running, and live workers, for metrics."""
        with redis_errors():
            pipe = self.r.pipeline()
            pipe.scard(LIVE["queued"])
            pipe.scard(LIVE["running"])
            pipe.zcount(WORKERS, now() - WORKER_STALE_SECONDS, "+inf")
            queued, running, workers = pipe.execute()
        return {"queued": int(queued), "running": int(running), "workers": int(workers)}

    def worker_heartbeat(self, name: str, processes: int) -> None:
        """Record that a worker (its `processes` pool processes) is alive now."""
        stamp = now()
        pipe = self.r.pipeline()
        pipe.zadd(WORKERS, {f"{name}#{i}": stamp for i in range(processes)})
        pipe.zremrangebyscore(WORKERS, "-inf", stamp - 10 * WORKER_STALE_SECONDS)
        pipe.execute()

    def worker_gone(self, name: str) -> None:
        """Forget a worker that shut down cleanly."""
        prefix = (name + "#").encode()
        members = [m for m in self.r.zrange(WORKERS, 0, -1) if bytes(m).startswith(prefix)]
        if members:
            self.r.zrem(WORKERS, *members)


def public_job(rec: dict[str, Any]) -> dict[str, Any]:
    """The job as the API shows it."""
    job_id = rec["id"]
    total = rec.get("rows_total")
    done = rec.get("rows_done", 0)
    if rec["status"] == "succeeded":
        fraction = 1.0
    elif total:
        fraction = min(done / total, 1.0)
    elif rec.get("bytes_total"):
        fraction = min(max(rec.get("bytes_done", 0), 0) / rec["bytes_total"], 1.0)
    else:
        fraction = 0.0
    links = {"self": f"/jobs/{job_id}"}
    if rec["status"] == "succeeded":
        links["result"] = f"/jobs/{job_id}/result"
        if (rec.get("options") or {}).get("on_error") == "skip":
            links["errors"] = f"/jobs/{job_id}/errors"
    out = {
        "id": job_id,
        "status": rec["status"],
        "model": rec.get("model"),
        "options": rec.get("options"),
        "input": _without_key(rec.get("input")),
        "output": _without_key(rec.get("output")),
        "progress": {"rows_done": done, "rows_total": total,
                     "rows_failed": rec.get("rows_failed", 0), "fraction": round(fraction, 4)},
        "created_at": iso(rec.get("created_at")),
        "started_at": iso(rec.get("started_at")),
        "finished_at": iso(rec.get("finished_at")),
        "attempts": rec.get("attempt", 0),
        "error": rec.get("error"),
        "links": links,
    }
    if "drift" in rec:
        out["drift"] = rec["drift"]
    if rec.get("parts_total"):
        out["parts"] = {"total": rec["parts_total"], "done": rec.get("parts_done", 0)}
    return out


def _without_key(part: dict[str, Any] | None) -> dict[str, Any] | None:
    # Storage keys are internal; clients use the links.
    return None if part is None else {k: v for k, v in part.items() if k not in ("key", "parts")}
