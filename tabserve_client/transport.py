"""One HTTP session: the API key, timeouts, typed errors, and retries for idempotent calls."""

from __future__ import annotations

import logging
import time
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from tabserve_client.errors import (
    ServiceUnavailableError,
    TabserveConnectionError,
    TabserveError,
    error_from_response,
)

logger = logging.getLogger(__name__)
MAX_DELAY = 30.0
USER_AGENT = "tabserve-client/0.1.0"
# A file body goes out in pieces of this size (urllib3 reads and sends 16 KiB at a time: a
# 556 MiB upload cost the client 0.5-0.7 s of CPU, 0.3-0.45 s in 1 MiB pieces, and took
# 0.7-0.85 s instead of 0.45-0.65 s on loopback; bench in the commit).
UPLOAD_PIECE_BYTES = 1 << 20


class _LargePieces(HTTPAdapter):
    """requests' adapter with its connections sending a body in UPLOAD_PIECE_BYTES pieces
    (urllib3 2's `blocksize`; urllib3 1 has none and keeps its own)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if int(urllib3.__version__.split(".")[0]) >= 2:
            kwargs.setdefault("blocksize", UPLOAD_PIECE_BYTES)
        super().init_poolmanager(*args, **kwargs)


class Transport:
    """Sends requests over one requests.Session (its connections are reused).

    A GET is retried on a 503 or a connection error, up to `retries` times, after the
    server's Retry-After or else an exponential backoff (`backoff`, doubled each time, at
    most 30 s). POST and DELETE are sent once: a retried POST /jobs could queue the file
    twice, and a DELETE that cancelled a job before its answer was lost would delete the
    then-finished job if sent again.
    """

    def __init__(self, url: str, api_key: str | None, timeout: float, retries: int,
                 backoff: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = max(int(retries), 0)
        self.backoff = backoff
        self.session = requests.Session()
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, _LargePieces())
        self.session.headers["User-Agent"] = USER_AGENT
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The answer to one request (retried when idempotent); a typed error if not 2xx."""
        retry = method in ("GET", "HEAD")
        timeout = kwargs.pop("timeout", self.timeout)
        attempt = 0
        while True:
            try:
                response = self.session.request(method, self.url + path, timeout=timeout,
                                                **kwargs)
                if response.ok:
                    return response
                error: TabserveError = error_from_response(response)
                response.close()
            except (requests.ConnectionError, requests.Timeout) as exc:
                error = TabserveConnectionError(f"cannot reach {self.url}: {_reason(exc)}",
                                                code="connection_error")
                error.__cause__ = exc
            retryable = isinstance(error, ServiceUnavailableError | TabserveConnectionError)
            if not (retry and retryable and attempt < self.retries):
                raise error
            delay = self._delay(error, attempt)
            logger.info("%s %s: %s; retry %d of %d in %.1fs", method, path, error,
                        attempt + 1, self.retries, delay)
            time.sleep(delay)
            attempt += 1

    def _delay(self, error: TabserveError, attempt: int) -> float:
        after = getattr(error, "retry_after", None)
        if after is not None:
            return min(after, MAX_DELAY)
        return min(self.backoff * 2 ** attempt, MAX_DELAY)

    def close(self) -> None:
        self.session.close()


def _reason(exc: Exception) -> str:
    # requests nests the useful words (connection refused, timed out) a few levels down.
    text = str(exc)
    for marker in ("Connection refused", "timed out", "Name or service not known",
                   "Connection reset", "Remote end closed"):
        if marker in text:
            return marker.lower()
    return text[:200]
