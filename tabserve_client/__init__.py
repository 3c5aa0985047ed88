"""A Python client for a tabserve server: online predictions and batch jobs.

    from tabserve_client import Client
    with Client("http://127.0.0.1:8000", api_key="...") as client:
        client.predict({"mean radius": 17.99, ...})
        job = client.submit_job("big.csv", output_format="parquet")
        client.wait(job.id, progress=lambda j: print(j.fraction))
        client.download(job.id, "scores.parquet")

Needs only `requests`; pandas and pyarrow are imported when a DataFrame is passed or asked for.
"""

from tabserve_client.client import DEFAULT_URL, Client
from tabserve_client.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    JobCancelledError,
    JobFailedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    RowsRunAsJobError,
    ServerError,
    ServiceUnavailableError,
    TabserveConnectionError,
    TabserveError,
    UnsupportedMediaTypeError,
    ValidationError,
    WaitTimeoutError,
)
from tabserve_client.jobs import FINAL, STATUSES, Job

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_URL", "FINAL", "STATUSES", "AuthenticationError", "BadRequestError", "Client",
    "ConflictError", "Job", "JobCancelledError", "JobFailedError", "NotFoundError",
    "PayloadTooLargeError", "PermissionDeniedError", "RateLimitedError", "RetryableError",
    "RowsRunAsJobError",
    "ServerError", "ServiceUnavailableError", "TabserveConnectionError", "TabserveError",
    "UnsupportedMediaTypeError", "ValidationError", "WaitTimeoutError",
]
