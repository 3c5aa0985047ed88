"""Keeping a running job's broker message leased while the job is alive.

Celery acknowledges our messages late; until then kombu's Redis transport keeps each in its
`unacked_index` sorted set, scored by delivery time, and hands it to another worker once
the score is older than the visibility timeout. A job that heartbeats the score keeps its
message for as long as its worker lives, so the timeout only has to cover a dead worker's
silence, not the longest job: a SIGKILLed worker's job is re-delivered within about one
visibility timeout, and a long job is never re-delivered while it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

UNACKED_INDEX = "unacked_index"  # kombu.transport.redis.Channel.unacked_index_key


class MessageLease:
    """Context manager: re-stamp a delivery tag's unacked score every `interval` seconds."""

    def __init__(self, client: Any, delivery_tag: str | None, interval: float) -> None:
        self.client = client
        self.tag = delivery_tag
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def renew(self) -> bool:
        """Stamp the message as delivered now; False when it is no longer leased."""
        if not self.tag:
            return False
        return bool(self.client.zadd(UNACKED_INDEX, {self.tag: time.time()}, xx=True, ch=True))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except Exception as exc:  # Redis hiccup: try again next interval
                logger.warning("lease %s: renewal failed: %s", self.tag, exc)

    def __enter__(self) -> MessageLease:
        if self.tag:
            self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
