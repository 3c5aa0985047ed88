"""Async promotion: the rows of an online request run as a batch job.

POST /predict and /invocations hand their rows here when the client asks for it
(`Prefer: respond-async`) or sends more rows than TABSERVE_MAX_ONLINE_ROWS. The rows are
validated as the online path validates them (a 422 now rather than a failed job), written
as a Parquet input in the model's feature order, and submitted through submit_job, pinned to
the version the request resolved. The job's result holds the predictions, in row order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from shared.errors import ValidationError
from shared.jobs.record import Job
from shared.jobs.submit import JobOptions, check_upload_room, submit_job
from shared.models.loading import LoadedModel

if TYPE_CHECKING:
    from shared.services import Services

RESPOND_ASYNC = "respond-async"


def asks_async(prefer: str | None) -> bool:
    """Whether a Prefer header (RFC 7240) holds the respond-async preference."""
    if not prefer:
        return False
    return any(p.split(";")[0].split("=")[0].strip().lower() == RESPOND_ASYNC
               for p in prefer.split(","))


def submit_rows(rt: Services, loaded: LoadedModel, rows: list[Any],
                owner: str | None = None) -> Job:
    """Validate rows against the model and queue them as a job of that model version."""
    if not rows:
        raise ValidationError("the request holds no rows")
    X = loaded.validator.validate(rows)
    frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(X, columns=loaded.validator.names)
    check_upload_room(rt, int(frame.memory_usage(index=False).sum()))
    path, fh = rt.storage.staging_file()
    try:
        with fh:
            frame.to_parquet(fh, index=False)
        options = JobOptions.model_validate({"model": loaded.manifest.ref,
                                             "output_format": "jsonl"})
        return submit_job(rt, path, "parquet", "predict.parquet", options, owner=owner)
    finally:
        path.unlink(missing_ok=True)  # adopted into the store when accepted
