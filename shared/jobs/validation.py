"""validate_only=true on POST /jobs: the submit-time checks of an input against its model,
answered as a report instead of a job (nothing is stored or queued)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.errors import ValidationError
from shared.jobs.inputs import InputInfo
from shared.models.manifest import Manifest

if TYPE_CHECKING:
    from shared.services import Services


def validation_report(rt: Services, model: str | None,
                      inspect: Callable[[], tuple[Manifest, InputInfo]]) -> dict[str, Any]:
    """What `inspect` (submit's check of the file) found: the model, the format, the
    columns and an estimate of the rows when it passes; `valid: false` and the problem
    (the error submission would answer, a 422) when it does not. Errors that are not about
    the file's content (an unknown model, an unreadable format) are raised as they are."""
    manifest = rt.models.resolve(model, rt.settings.default_model).manifest
    report: dict[str, Any] = {"model": {"name": manifest.name, "version": manifest.version}}
    try:
        _, info = inspect()
    except ValidationError as exc:
        problem: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.details:
            problem["details"] = exc.details
        return {"valid": False, **report, "problems": [problem]}
    return {"valid": True, **report, "format": info.format, "size_bytes": info.size_bytes,
            "rows_estimate": info.rows_total, "columns": info.columns, "problems": []}
