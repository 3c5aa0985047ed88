"""A job's callback_url: checked against TABSERVE_CALLBACK_HOSTS at submit, and once the job
ends (whatever its final status) POSTed the job's public record, signed with HMAC-SHA256 over
"<timestamp>.<body>" under the key in TABSERVE_CALLBACK_SECRET_FILE (docs/security.md).

The delivery runs in a worker (worker.tasks.deliver_callback), retried with backoff; its state
is kept in the job record's `callback` field. It never blocks or fails the job.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
import requests

from shared.errors import TabserveError, ValidationError
from shared.jobs.record import iso, now
from shared.redisguard import redis_errors

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.services import Services

logger = logging.getLogger(__name__)

DELIVER_CALLBACK = "tabserve.deliver_callback"
SIGNATURE_HEADER = "X-Tabserve-Signature"
TIMESTAMP_HEADER = "X-Tabserve-Timestamp"
# Seconds before each retry: 6 deliveries over about a minute.
BACKOFF = (2, 4, 8, 16, 32)
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0
# Delivery states shown under "callback" in the job record.
PENDING, DELIVERED, GAVE_UP = "pending", "delivered", "gave_up"


class CallbacksOffError(ValidationError):
    code = "callbacks_disabled"


def check_callback_url(url: str | None, settings: Settings) -> None:
    """422 unless url is an http(s) URL whose host[:port] is in TABSERVE_CALLBACK_HOSTS."""
    if url is None:
        return
    allowed = settings.callback_host_list
    if not allowed:
        raise CallbacksOffError(
            "callback_url is disabled on this server (TABSERVE_CALLBACK_HOSTS is empty)",
            details=[{"field": "callback_url", "message": "callbacks are off"}])
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port, host = None, ""
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        raise ValidationError(
            f"callback_url {url!r} is not an http or https URL",
            details=[{"field": "callback_url", "message": "use http:// or https://"}])
    named = f"{host}:{port}" if port is not None else host
    if named not in allowed and host not in allowed:
        raise ValidationError(
            f"callback_url host {named} is not one this server calls back "
            "(TABSERVE_CALLBACK_HOSTS)",
            details=[{"field": "callback_url", "message": f"host {named} not allowed"}])


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Tabserve-Signature value: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def read_secret(settings: Settings) -> bytes:
    assert settings.callback_secret_file is not None
    return settings.callback_secret_file.read_bytes().strip()


@dataclass(frozen=True)
class Delivery:
    """One POST's outcome: the status code, or the error that stopped it."""

    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post(url: str, body: bytes, secret: bytes) -> Delivery:
    """POST a signed body once: short timeouts, no redirects followed."""
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "tabserve-callback",
               TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature(secret, stamp, body)}
    try:
        r = requests.post(url, data=body, headers=headers, allow_redirects=False,
                          timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        r.close()
    except requests.RequestException as exc:
        return Delivery(None, f"{type(exc).__name__}: {exc}"[:300])
    return Delivery(r.status_code, None)


def queue_callback(rt: Services, job_id: str) -> None:
    """Queue the delivery of a job that has just ended, when it asked for one (once)."""
    job = rt.jobs.get(job_id)
    url = job.options.get("callback_url")
    if not url:
        return
    if rt.jobs.claim_callback(job_id, {"url": url, "state": PENDING, "attempts": 0}):
        rt.celery.send_task(DELIVER_CALLBACK, args=[job_id, 1],
                            queue=rt.settings.queue_name)


def deliver(rt: Services, job_id: str, attempt: int) -> float | None:
    """One delivery attempt of a job's callback; the seconds to wait before the next one, or
    None when there is none (delivered, given up, or the job is gone)."""
    try:
        job = rt.jobs.get(job_id)
    except TabserveError:
        logger.info("job %s: no record; its callback is dropped", job_id)
        return None
    url = job.options.get("callback_url")
    state: dict[str, Any] = dict(job.callback or {})
    if not url or state.get("state") in (DELIVERED, GAVE_UP):
        return None
    public = job.public()
    public.pop("callback", None)  # the delivery's own state is not part of what it sends
    result = post(url, orjson.dumps(public), read_secret(rt.settings))
    state.update(url=url, attempts=attempt, last_status=result.status,
                 last_error=result.error, last_attempt_at=iso(now()))
    wait: float | None = None
    if result.ok:
        state.update(state=DELIVERED, delivered_at=iso(now()), next_attempt_at=None)
    elif attempt > len(BACKOFF):
        state.update(state=GAVE_UP, next_attempt_at=None)
    else:
        wait = BACKOFF[attempt - 1]
        state.update(state=PENDING, next_attempt_at=iso(now() + wait))
    logger.info("job %s: callback attempt %d: %s", job_id, attempt,
                result.status if result.error is None else result.error,
                extra={"job_id": job_id})
    with redis_errors():
        rt.jobs.set_callback(job_id, state)
    return wait
