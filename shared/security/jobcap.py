"""A per-key cap on queued and running jobs, held across processes by one Lua script."""

from __future__ import annotations

import time
from typing import Any

import redis

from shared import keys
from shared.errors import TooManyJobsError

# KEYS[1]: the key's job set (id -> reserved at). ARGV: the job id, the cap, the time, the
# prefix of a job's record key, the grace for a reservation whose record is not written yet,
# then the live statuses. Final or expired jobs leave the set; the new id is added only when
# the live ones are fewer than the cap, so two processes cannot both take the last slot.
_RESERVE = """
local live = 0
local statuses = {}
for i = 6, #ARGV do statuses[ARGV[i]] = true end
local cap, now, grace = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local status = redis.call('HGET', ARGV[4] .. members[i], 'status')
  if (status and statuses[status]) or (not status and now - tonumber(members[i + 1]) < grace) then
    live = live + 1
  else
    redis.call('ZREM', KEYS[1], members[i])
  end
end
if live >= cap then return live end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], 86400 * 30)
return -1
"""
# A reservation counts before its record exists for this long (the checks between the two).
RESERVATION_GRACE_SECONDS = 60


class JobCap:
    """At most `limit` queued and running jobs per key (0: no cap)."""

    def __init__(self, client: redis.Redis, limit: int, live_statuses: list[str]) -> None:
        self.limit = limit
        self._statuses = live_statuses
        self._reserve: Any = client.register_script(_RESERVE) if limit else None

    def reserve(self, key_name: str | None, job_id: str) -> None:
        """Count job_id against its key's cap; TooManyJobsError (429) when the key has
        `limit` live jobs already."""
        if not self.limit or key_name is None:
            return
        live = int(self._reserve(
            keys=[keys.owner_jobs(key_name)],
            args=[job_id, self.limit, time.time(), keys.job(""), RESERVATION_GRACE_SECONDS,
                  *self._statuses]))
        if live >= 0:
            raise TooManyJobsError(
                f"key {key_name!r} has {live} queued or running jobs, the most it may have "
                "(TABSERVE_MAX_LIVE_JOBS_PER_KEY): wait for one to finish, or cancel one",
                retry_after=5)
