"""A batch job as the server shows it (GET /jobs/<id>)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The server's job statuses (shared.jobs.record.JobStatus; a test keeps the two equal).
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled")
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


@dataclass(frozen=True)
class Job:
    """One job's record; `raw` is the whole JSON object the server sent."""

    id: str
    status: str
    model: dict[str, Any]
    rows_done: int
    rows_total: int | None
    rows_failed: int
    fraction: float
    error: dict[str, Any] | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Job:
        progress = body.get("progress") or {}
        return cls(id=body["id"], status=body["status"], model=body.get("model") or {},
                   rows_done=int(progress.get("rows_done") or 0),
                   rows_total=progress.get("rows_total"),
                   rows_failed=int(progress.get("rows_failed") or 0),
                   fraction=float(progress.get("fraction") or 0.0),
                   error=body.get("error"), created_at=body.get("created_at"),
                   started_at=body.get("started_at"), finished_at=body.get("finished_at"),
                   raw=body)

    @property
    def finished(self) -> bool:
        """Whether the job has ended (succeeded, failed or cancelled)."""
        return self.status in FINAL

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED

    @property
    def model_ref(self) -> str:
        """NAME:VERSION of the model that scores it."""
        return f"{self.model.get('name')}:{self.model.get('version')}"
