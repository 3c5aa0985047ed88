"""Idempotency-Key on POST /jobs: a retried request gets the job the first one made.

The key is the client's, scoped to the API key's owner. Its Redis entry (shared.keys) holds
the job id and a fingerprint of the request (a SHA-256 of the uploaded bytes, taken while
they were staged, and of the options); it is claimed with SET NX before anything is queued,
so two concurrent requests with one key make one job. The same key with another fingerprint
is a 422. The entry lives as long as a job record can (TABSERVE_JOB_TTL_SECONDS after the
longest allowed run); once its job is gone (expired or deleted) the key makes a new job.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from shared import keys
from shared.errors import BadRequestError, ConflictError, ValidationError
from shared.jobs.record import Job
from shared.jobs.store import new_job_id
from shared.redisguard import redis_errors

if TYPE_CHECKING:
    from shared.services import Services

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
# How long a request waits for a concurrent one with its key to create the job record.
WAIT_SECONDS = 10.0
POLL_SECONDS = 0.05


class IdempotencyKeyReusedError(ValidationError):
    code = "idempotency_key_reused"


class IdempotencyKeyInProgressError(ConflictError):
    code = "idempotency_key_in_progress"


def check_key(value: str | None) -> str | None:
    """The header's value, or None when absent; 400 unless printable and <= 255 chars."""
    if value is None:
        return None
    if not value or len(value) > MAX_KEY_CHARS or not value.isprintable() \
            or not value.isascii():
        raise BadRequestError(
            f"the {HEADER} header must be 1 to {MAX_KEY_CHARS} printable ASCII characters",
            details=[{"field": HEADER, "message": "1 to 255 printable ASCII characters"}])
    return value


class Fingerprint:
    """A SHA-256 of a request: fed the upload's bytes as they are staged, then the options."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._sha.update(data)

    def finish(self, **parts: Any) -> str:
        """The digest, with the request's other parts (options, format) added."""
        sha = self._sha.copy()
        sha.update(b"\0" + orjson.dumps(parts, option=orjson.OPT_SORT_KEYS))
        return sha.hexdigest()


def submit_once(rt: Services, owner: str | None, key: str, fingerprint: str,
                submit: Callable[[str], Job]) -> tuple[Job, bool]:
    """The job of this key: made by `submit(job_id)` when the key is new, else the one an
    earlier request with the same fingerprint made (and True: replayed)."""
    entry = keys.idempotency_key(owner or "-", hashlib.sha256(key.encode()).hexdigest())
    ttl = rt.settings.job_ttl_seconds + rt.settings.job_time_limit_max_seconds
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        job_id = new_job_id()
        value = orjson.dumps({"job_id": job_id, "fingerprint": fingerprint})
        with redis_errors():
            claimed = rt.redis.set(entry, value, nx=True, ex=ttl)
        if claimed:
            return _submit_claimed(rt, entry, value, job_id, submit), False
        job = _earlier_job(rt, entry, key, fingerprint, deadline)
        if job is not None:
            return job, True


def _submit_claimed(rt: Services, entry: str, value: bytes, job_id: str,
                    submit: Callable[[str], Job]) -> Job:
    try:
        job = submit(job_id)
    except BaseException:
        # Nothing was queued: free the key (if still ours) so a retry can make the job.
        with redis_errors():
            if rt.redis.get(entry) == value:
                rt.redis.delete(entry)
        raise
    made = {**orjson.loads(value), "made": True}
    with redis_errors():
        rt.redis.set(entry, orjson.dumps(made), xx=True, keepttl=True)
    return job


def _earlier_job(rt: Services, entry: str, key: str, fingerprint: str,
                 deadline: float) -> Job | None:
    """The job an earlier request with this key made; None when the key is free again."""
    while True:
        with redis_errors():
            raw = rt.redis.get(entry)
        if raw is None:
            return None  # the earlier request failed, or its entry expired: claim again
        held = orjson.loads(raw)
        if held["fingerprint"] != fingerprint:
            raise IdempotencyKeyReusedError(
                f"the {HEADER} {key!r} was used for another request (a different file or "
                "options); use a new key for a new job",
                details=[{"field": HEADER, "message": "used with a different body"}])
        with redis_errors():
            if rt.jobs.exists(held["job_id"]):
                return rt.jobs.get(held["job_id"])
            if held.get("made"):  # its job expired or was deleted: a new one may be made
                rt.redis.delete(entry)
                return None
        if time.monotonic() > deadline:
            raise IdempotencyKeyInProgressError(
                f"a request with the {HEADER} {key!r} is still being accepted; retry shortly")
        time.sleep(POLL_SECONDS)
