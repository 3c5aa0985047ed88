"""Typed errors: each carries the server's error code, message, details and HTTP status."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

    from tabserve_client.jobs import Job


class TabserveError(Exception):
    """Base of every error the client raises."""

    def __init__(self, message: str, code: str = "error", status: int | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details = details or []

    def __str__(self) -> str:
        where = f"{self.status} " if self.status else ""
        return f"{where}{self.code}: {self.message}"


class BadRequestError(TabserveError):
    """400: the request could not be read (invalid JSON, a body that is not an object)."""


class ValidationError(BadRequestError):
    """422: rows or options that the server read and refused; `details` name each field."""


class AuthenticationError(TabserveError):
    """401: no API key, or one the server does not (or no longer) accept."""


class PermissionDeniedError(TabserveError):
    """403: a valid key whose role may not do this."""


class NotFoundError(TabserveError):
    """404: an unknown job, model or route (or another key's job)."""


class ConflictError(TabserveError):
    """409: the job is not in a state for this (e.g. its result before it succeeded)."""


class PayloadTooLargeError(TabserveError):
    """413: too many rows or too large a body or upload."""


class RowsRunAsJobError(PayloadTooLargeError):
    """202 to predict(): more rows than the server's online limit, which it runs as a job
    (`job_id`; wait for it with Client.wait and read its result) instead of answering them."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"more rows than the server answers online: it runs them as job "
                         f"{job_id} (wait for it, then read its result)", code="rows_run_as_job",
                         status=202)
        self.job_id = job_id


class UnsupportedMediaTypeError(TabserveError):
    """415: a content type or file format the server does not take."""


class RetryableError(TabserveError):
    """An answer that says to come back later; `retry_after` is in seconds, or None."""

    def __init__(self, message: str, code: str = "error", status: int | None = None,
                 details: list[dict[str, Any]] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, code, status, details)
        self.retry_after = retry_after


class RateLimitedError(RetryableError):
    """429: the key is over its rate limit or its number of live jobs."""


class ServiceUnavailableError(RetryableError):
    """503: the queue (Redis) or the model is unavailable right now."""


class ServerError(TabserveError):
    """Any other 5xx answer."""


class TabserveConnectionError(TabserveError):
    """The server could not be reached, or did not answer in time."""


class JobFailedError(TabserveError):
    """The job ended failed; `job` is its record, `code`/`message` the job's error."""

    def __init__(self, job: Job) -> None:
        error = job.error or {}
        where = "".join(f" {k} {error[k]}" for k in ("row", "field") if k in error)
        super().__init__(f"job {job.id} failed: {error.get('message', 'no reason given')}"
                         f"{' (' + where.strip() + ')' if where else ''}",
                         code=str(error.get("code", "job_failed")))
        self.job = job


class JobCancelledError(JobFailedError):
    """The job was cancelled before it finished."""

    def __init__(self, job: Job) -> None:
        TabserveError.__init__(self, f"job {job.id} was cancelled", code="job_cancelled")
        self.job = job


class WaitTimeoutError(TabserveError):
    """wait() ran out of time; the job goes on, `job` is its last record seen."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.id} is still {job.status} after {timeout:g}s",
                         code="wait_timeout")
        self.job = job


BY_STATUS: dict[int, type[TabserveError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError,
    404: NotFoundError, 409: ConflictError, 413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError, 422: ValidationError, 429: RateLimitedError,
    503: ServiceUnavailableError,
}


def error_from_response(response: requests.Response) -> TabserveError:
    """The typed error for a non-2xx answer, from the server's {"error": {...}} body."""
    status = response.status_code
    code, message, details = f"http_{status}", response.reason or f"HTTP {status}", None
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code", code))
        message = str(error.get("message", message))
        details = error.get("details") if isinstance(error.get("details"), list) else None
    elif isinstance(error, str):  # the V2 or MLflow shapes
        message = error
    elif response.text and not body:
        message = f"{message}: {response.text[:200]}"
    cls = BY_STATUS.get(status) or (ServerError if status >= 500 else TabserveError)
    if issubclass(cls, RetryableError):
        return cls(message, code, status, details, retry_after=retry_after(response))
    return cls(message, code, status, details)


def retry_after(response: requests.Response) -> float | None:
    """Retry-After in seconds (the delta form; an HTTP date is not used by the server)."""
    raw = response.headers.get("Retry-After", "").strip()
    try:
        return max(float(raw), 0.0) if raw else None
    except ValueError:
        return None
