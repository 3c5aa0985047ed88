"""Domain errors: each carries its HTTP status and a short machine code.

Raise them with one message argument (Celery rebuilds exceptions from args); structured
details go in the `details` keyword and travel in the JSON error body.
"""

from __future__ import annotations

from typing import Any


class TabserveError(Exception):
    """Base of every error the service answers on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class ConfigError(TabserveError):
    code = "config_error"


class BadRequestError(TabserveError):
    status = 400
    code = "bad_request"


class InvalidJSONError(BadRequestError):
    code = "invalid_json"


class UnsupportedMediaTypeError(TabserveError):
    status = 415
    code = "unsupported_media_type"


class PayloadTooLargeError(TabserveError):
    status = 413
    code = "payload_too_large"


class HeaderTooLargeError(TabserveError):
    status = 431
    code = "header_too_large"


class RequestTimeoutError(TabserveError):
    """A request body arrived slower than the minimum rate (a slow client)."""

    status = 408
    code = "request_timeout"


class ValidationError(TabserveError):
    status = 422
    code = "validation_error"


class InputRowError(ValidationError):
    """A job's input file cannot be read at a row: the job fails naming it (0-based)."""

    def __init__(self, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.row = row


class ModelRejectedInputError(TabserveError):
    """The model itself raised on rows that passed the schema (an unseen category its
    encoder refuses, a value its own checks reject): the input's fault, not the server's."""

    status = 422
    code = "model_rejected_input"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None,
                 reason: str = "") -> None:
        super().__init__(message, details)
        self.reason = reason or message  # the model's own words, without the model's name


class NotFoundError(TabserveError):
    status = 404
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


class ConflictError(TabserveError):
    status = 409
    code = "conflict"


class JobNotFinishedError(ConflictError):
    code = "job_not_finished"


class ResultGoneError(TabserveError):
    """A finished job's file is no longer in storage (removed by hand, or a record put back
    whose files are gone): said plainly, never a 500."""

    status = 410
    code = "result_gone"


class ServiceUnavailableError(TabserveError):
    status = 503
    code = "service_unavailable"


class QueueUnavailableError(ServiceUnavailableError):
    code = "queue_unavailable"


class ModelLoadError(ServiceUnavailableError):
    code = "model_load_failed"


class ModelIntegrityError(ModelLoadError):
    code = "model_integrity"


class InsufficientStorageError(TabserveError):
    """The data (or staging) directory has no room for what was sent or written."""

    status = 507
    code = "insufficient_storage"


class UnauthorizedError(TabserveError):
    """No API key, or one that is not (or no longer) valid: 401 with WWW-Authenticate."""

    status = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="tabserve"'}


class ForbiddenError(TabserveError):
    """A valid key whose role lacks the right to this request."""

    status = 403
    code = "forbidden"


class TooManyRequestsError(TabserveError):
    """A key over its rate limit; Retry-After says when to come back."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None,
                 retry_after: int = 1) -> None:
        super().__init__(message, details)
        self.headers = {"Retry-After": str(max(int(retry_after), 1))}


class TooManyJobsError(TooManyRequestsError):
    """A key with as many queued and running jobs as it may have."""

    code = "too_many_jobs"
