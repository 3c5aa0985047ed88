"""A running attempt's lease: a Redis key owned by the job (or part), not by the broker.

The attempt that starts a job sets `keys.job_lease(job_id)` (a part: `keys.part_lease`) to its
attempt number with a TTL of `job_lease_seconds`, in the same script that marks it running.
While the attempt runs, a thread in the process that scores it renews the TTL every third of
that, only while the value is still this attempt's. When the process dies or freezes, the
key expires and the reaper (shared.jobs.reaper) sends the job to its next attempt; a frozen
attempt that wakes up finds its lease gone and its status changed, and stops at its next
chunk.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from shared.jobs.store import JobStore

logger = logging.getLogger(__name__)


class Lease:
    """Context manager: renew a lease (set when the attempt started) until the work ends,
    then release it if it is still this attempt's."""

    def __init__(self, jobs: JobStore, key: str, attempt: int, seconds: float) -> None:
        self.jobs, self.key, self.attempt, self.seconds = jobs, key, attempt, seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.jobs.renew_lease(self.key, self.attempt, self.seconds):
                    logger.warning("lease %s: attempt %d no longer holds it", self.key,
                                   self.attempt)
                    self.lost.set()
                    return
            except Exception as exc:  # Redis away for a moment: try again next time
                logger.warning("lease %s: renewal failed: %s", self.key, exc)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.jobs.release_lease(self.key, self.attempt)
        except Exception as exc:  # it expires by itself
            logger.warning("lease %s: not released: %s", self.key, exc)
