"""A job's record: its status, its one error shape, and the record itself.

Every job status, and every other answer a state change can give, is named here once.
The record is a Redis hash (shared.jobs.store); this module turns it into a `Job` and back.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson


class JobStatus(StrEnum):
    """Where a job is in its life; the last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
LIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


class Outcome(StrEnum):
    """Answers of a state change or an attempt that are not a status."""

    MISSING = "missing"        # no record: unknown, expired or deleted
    STALE = "stale"            # a later attempt has taken over
    DUPLICATE = "duplicate"    # this part was already done
    SPLIT = "split"            # the job went out as parts
    PART_DONE = "part_done"    # a part is scored, others are not yet


Answer = JobStatus | Outcome

# Error codes of a job that no attempt could finish.
WORKER_LOST = "worker_lost"  # every attempt's worker died or froze (job_max_attempts)
TIMEOUT = "timeout"          # over its time limit; never retried


def answer(raw: bytes | str) -> Answer:
    """A state change's answer (as Redis returns it) as a JobStatus or an Outcome."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    return JobStatus(text) if text in JobStatus.__members__.values() else Outcome(text)


@dataclass(frozen=True)
class JobError:
    """Why a job failed, or why one row was skipped: the same words in the record, the
    errors file and HTTP (`row` is the 0-based data row, `field` the column)."""

    code: str
    message: str
    row: int | None = None
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JobError:
        # Records written before the one shape said "column" for the field.
        return cls(code=raw["code"], message=raw["message"], row=raw.get("row"),
                   field=raw.get("field", raw.get("column")))


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass
class Job:
    """One job's record. `input`, `output` and `options` are plain objects shown by the API
    (storage keys removed); `error` is set when it failed."""

    id: str
    status: JobStatus
    model: dict[str, Any]
    options: dict[str, Any]
    input: dict[str, Any]
    created_at: float
    attempt: int = 0
    rows_done: int = 0
    rows_failed: int = 0
    rows_total: int | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    worker: str | None = None
    output: dict[str, Any] | None = None
    errors_key: str | None = None
    error: JobError | None = None
    drift: dict[str, Any] | None = None
    parts_total: int = 0
    parts_done: int = 0
    parts_dispatched: bool = False
    owner: str | None = None  # the name of the API key that submitted it, never the key
    retry: dict[str, Any] | None = None  # why and when the last attempt was lost
    deadline_at: float | None = None     # set at the first start: started + time limit
    sent_at: float | None = None         # when the job's message was last sent
    # Where the running attempt stood after its last chunk on disk (shared.jobs.checkpoint),
    # and the rows the current attempt took over from an earlier one's checkpoint.
    checkpoint: dict[str, Any] | None = None
    rows_resumed: int = 0
    # A callback_url's delivery once the job ended (shared.jobs.callbacks).
    callback: dict[str, Any] | None = None

    @property
    def model_name(self) -> str:
        return str(self.model["name"])

    @property
    def model_version(self) -> str:
        return str(self.model["version"])

    @property
    def skips_rows(self) -> bool:
        return self.options.get("on_error") == "skip"

    def public(self) -> dict[str, Any]:
        """The job as the API shows it."""
        links = {"self": f"/jobs/{self.id}"}
        if self.status is JobStatus.SUCCEEDED:
            links["result"] = f"/jobs/{self.id}/result"
            if self.skips_rows:
                links["errors"] = f"/jobs/{self.id}/errors"
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status.value,
            "model": self.model,
            "options": self.options,
            "input": _without_keys(self.input),
            "output": _without_keys(self.output),
            "progress": {"rows_done": self.rows_done, "rows_total": self.rows_total,
                         "rows_failed": self.rows_failed,
                         "fraction": round(self._fraction(), 4)},
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "attempts": self.attempt,
            "error": self.error.to_dict() if self.error else None,
            "links": links,
        }
        if self.drift is not None:
            out["drift"] = self.drift
        if self.retry is not None:
            out["retry"] = {**self.retry, "at": iso(self.retry.get("at"))}
        if self.callback is not None:
            out["callback"] = self.callback
        if self.parts_total:
            out["parts"] = {"total": self.parts_total, "done": self.parts_done}
        return out

    def _fraction(self) -> float:
        if self.status is JobStatus.SUCCEEDED:
            return 1.0
        if self.rows_total:
            return min(self.rows_done / self.rows_total, 1.0)
        if self.bytes_total:
            return min(max(self.bytes_done, 0) / self.bytes_total, 1.0)
        return 0.0


def _without_keys(part: dict[str, Any] | None) -> dict[str, Any] | None:
    # Storage keys are internal; clients use the links.
    return None if part is None else {k: v for k, v in part.items() if k not in ("key", "parts")}


# --- the record as a Redis hash ---

_JSON = ("model", "options", "input", "output", "drift", "retry", "checkpoint",
         "callback")
_INT = ("attempt", "rows_done", "rows_failed", "rows_total", "bytes_done", "bytes_total",
        "parts_total", "parts_done", "rows_resumed")
_FLOAT = ("created_at", "started_at", "finished_at", "heartbeat_at", "deadline_at", "sent_at")
_NAMES = frozenset(f.name for f in fields(Job))


def encode(values: dict[str, Any]) -> dict[str, str]:
    """Record fields as the hash's strings (None values left out)."""
    out = {}
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, JobError):
            out[k] = orjson.dumps(v.to_dict()).decode()
        elif k in _JSON:
            out[k] = orjson.dumps(v).decode()
        elif isinstance(v, bool):
            out[k] = "1" if v else "0"
        else:
            out[k] = str(v)
    return out


def decode(raw: dict[bytes, bytes]) -> Job:
    """A Job from the hash Redis returned."""
    values: dict[str, Any] = {}
    for k, v in raw.items():
        key, text = k.decode(), v.decode()
        if key not in _NAMES:
            continue  # a field this version does not know
        if key in _JSON:
            values[key] = orjson.loads(text)
        elif key == "error":
            values[key] = JobError.from_dict(orjson.loads(text))
        elif key in _INT:
            values[key] = int(text)
        elif key in _FLOAT:
            values[key] = float(text)
        elif key == "status":
            values[key] = JobStatus(text)
        elif key == "parts_dispatched":
            values[key] = text == "1"
        else:
            values[key] = text
    return Job(**values)


def new_job(job_id: str, model: dict[str, Any], options: dict[str, Any],
            source: dict[str, Any], rows_total: int | None, bytes_total: int,
            owner: str | None = None) -> Job:
    """A queued job's first record."""
    created = now()
    return Job(id=job_id, status=JobStatus.QUEUED, model=model, options=options, input=source,
               created_at=created, rows_total=rows_total, bytes_total=bytes_total,
               sent_at=created, owner=owner)


def job_fields(job: Job) -> dict[str, Any]:
    """Every field of a record, for writing it whole."""
    return {f.name: getattr(job, f.name) for f in fields(job)}

