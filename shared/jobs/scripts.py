"""Lua scripts for job status transitions in Redis (shared.jobs.store): each runs atomically,
so the API's cancel, a worker's start, progress or finish and the reaper cannot interleave.
Every change is compare-and-set on the attempt number. Statuses and answers are filled in
from shared.jobs.record, where they are named."""

from string import Template

from shared.jobs.record import JobStatus, Outcome

_NAMES = {**{s.name.lower(): s.value for s in JobStatus},
          **{o.name.lower(): o.value for o in Outcome}}


def _lua(text: str) -> str:
    return Template(text).substitute(_NAMES)


# KEYS: job, queued set, running set, retrying set, lease.
# ARGV: id, message attempt ('' = the next one: a message sent before attempts were numbered),
# now, worker, lease ms, time limit seconds.
# Only a queued job whose next attempt is the message's starts; a running job is never taken
# over by a delivery (only the reaper sends it back to queued), so a late or duplicate
# message is STALE.
START = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '$missing' end
if status == '$running' then return '$stale' end
if status ~= '$queued' then return status end
local want = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0') + 1
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= want then return '$stale' end
redis.call('HSET', KEYS[1], 'status', '$running', 'attempt', want, 'started_at', ARGV[3],
           'heartbeat_at', ARGV[3], 'worker', ARGV[4], 'rows_done', 0, 'bytes_done', 0,
           'rows_failed', 0, 'rows_resumed', 0)
if not redis.call('HGET', KEYS[1], 'deadline_at') then
  redis.call('HSET', KEYS[1], 'deadline_at', tonumber(ARGV[3]) + tonumber(ARGV[6]))
end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SET', KEYS[5], want, 'PX', ARGV[5])
return '$running'
""")

# KEYS: job, queued set, running set, retrying set, lease.
# ARGV: id, attempt ('' = any), status, ttl, field/value...
FINISH = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '$missing' end
if status ~= '$queued' and status ~= '$running' then return status end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return '$stale' end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[5])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return ARGV[3]
""")

# KEYS: job. ARGV: attempt, field/value... Writes only while this attempt is current.
PROGRESS = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '$running' then return status or '$missing' end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return '$stale' end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return '$running'
""")

# A lease: KEYS[1] the lease key, ARGV[1] the attempt, ARGV[2] its TTL in ms.
# Renewed (1) only while it is still this attempt's; 0 when another attempt or nobody holds it.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""

# KEYS[1] a record; ARGV: field, value. Set only while the record exists (not expired).
TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
"""

RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# The reaper: a running attempt whose lease is gone goes back to queued (or, past the
# attempt cap, fails). KEYS: job, queued set, running set, retrying set, lease.
# ARGV: id, attempt, max attempts, now, retry JSON, error JSON, ttl.
REQUEUE = _lua("""
if redis.call('HGET', KEYS[1], 'status') ~= '$running' then return '$stale' end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return '$stale' end
if redis.call('HGET', KEYS[1], 'parts_dispatched') == '1' then return '$split' end
if redis.call('EXISTS', KEYS[5]) == 1 then return '$running' end
redis.call('SREM', KEYS[3], ARGV[1])
if tonumber(ARGV[2]) >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', '$failed', 'error', ARGV[6], 'finished_at', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  return '$failed'
end
redis.call('HSET', KEYS[1], 'status', '$queued', 'retry', ARGV[5], 'sent_at', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return '$queued'
""")

# Parts of a job split across workers: the parts hash holds `<i>:attempt` (the part's last
# started attempt), `<i>:running` (set while an attempt runs), `<i>:done` (its result).
# KEYS: job, parts hash, part lease. ARGV: index, message attempt ('' = next), lease ms.
PART_START = _lua("""
local i = ARGV[1]
if redis.call('HEXISTS', KEYS[2], i .. ':done') == 1 then return {'$duplicate', 0} end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '$running' then return {status or '$missing', 0} end
if redis.call('HEXISTS', KEYS[2], i .. ':running') == 1 then return {'$stale', 0} end
local want = tonumber(redis.call('HGET', KEYS[2], i .. ':attempt') or '0') + 1
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= want then return {'$stale', 0} end
redis.call('HSET', KEYS[2], i .. ':attempt', want, i .. ':running', 1)
for _, f in ipairs({'rows_done', 'bytes_done', 'rows_failed'}) do
  local old = tonumber(redis.call('HGET', KEYS[2], i .. ':' .. f) or '0')
  if old ~= 0 then redis.call('HINCRBY', KEYS[1], f, -old) end
  redis.call('HSET', KEYS[2], i .. ':' .. f, 0)
end
redis.call('SET', KEYS[3], want, 'PX', ARGV[3])
return {'$running', want}
""")

# KEYS: job, parts hash. ARGV: index, attempt, rows, bytes, failed, now, checkpoint JSON
# ('' = none: the last one stays; shared.jobs.checkpoint).
PART_PROGRESS = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '$running' then return status or '$missing' end
local i = ARGV[1]
if redis.call('HGET', KEYS[2], i .. ':attempt') ~= ARGV[2]
   or redis.call('HEXISTS', KEYS[2], i .. ':running') == 0 then return '$stale' end
local fields = {'rows_done', 'bytes_done', 'rows_failed'}
for k = 1, 3 do
  redis.call('HINCRBY', KEYS[1], fields[k], ARGV[k + 2])
  redis.call('HINCRBY', KEYS[2], i .. ':' .. fields[k], ARGV[k + 2])
end
redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[6])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], i .. ':checkpoint', ARGV[7]) end
return '$running'
""")

# KEYS: job, parts hash, part lease. ARGV: index, attempt, result JSON.
# Returns the number of parts done, or why this attempt does not count.
PART_DONE = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '$running' then return status or '$missing' end
local i = ARGV[1]
if redis.call('HGET', KEYS[2], i .. ':attempt') ~= ARGV[2]
   or redis.call('HEXISTS', KEYS[2], i .. ':running') == 0 then return '$stale' end
if redis.call('HSETNX', KEYS[2], i .. ':done', ARGV[3]) == 0 then return '$duplicate' end
redis.call('HDEL', KEYS[2], i .. ':running')
redis.call('DEL', KEYS[3])
return tostring(redis.call('HINCRBY', KEYS[1], 'parts_done', 1))
""")

# The reaper, for a part whose running attempt lost its lease: the part is free for its next
# attempt (QUEUED), or the job has used up its attempts (FAILED, the job is failed by the
# caller). KEYS: job, parts hash, part lease. ARGV: index, attempt, max attempts.
PART_REQUEUE = _lua("""
if redis.call('HGET', KEYS[1], 'status') ~= '$running' then return '$stale' end
local i = ARGV[1]
if redis.call('HGET', KEYS[2], i .. ':attempt') ~= ARGV[2]
   or redis.call('HEXISTS', KEYS[2], i .. ':running') == 0 then return '$stale' end
if redis.call('EXISTS', KEYS[3]) == 1 then return '$running' end
if tonumber(ARGV[2]) >= tonumber(ARGV[3]) then return '$failed' end
redis.call('HDEL', KEYS[2], i .. ':running')
for _, f in ipairs({'rows_done', 'bytes_done', 'rows_failed'}) do
  local old = tonumber(redis.call('HGET', KEYS[2], i .. ':' .. f) or '0')
  if old ~= 0 then redis.call('HINCRBY', KEYS[1], f, -old) end
  redis.call('HSET', KEYS[2], i .. ':' .. f, 0)
end
return '$queued'
""")

# A record Redis lost, put back from its copy in storage (shared.jobs.mirror), unless a
# record exists. KEYS: job, index, queued set, retrying set.
# ARGV: id, created_at, ttl ('' for a live job: it is queued), field/value...
RESTORE = _lua("""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if ARGV[3] == '' then
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('SADD', KEYS[4], ARGV[1])
else
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
""")
