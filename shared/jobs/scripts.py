"""Lua scripts for job status transitions in Redis (shared.jobs.store): each runs atomically,
so the API's cancel and a worker's start, progress or finish cannot interleave. Statuses and
answers are filled in from shared.jobs.record, where they are named."""

from string import Template

from shared.jobs.record import JobStatus, Outcome

_NAMES = {**{s.name.lower(): s.value for s in JobStatus},
          **{o.name.lower(): o.value for o in Outcome}}


def _lua(text: str) -> str:
    return Template(text).substitute(_NAMES)


# KEYS: job, queued set, running set. ARGV: id, attempt, now, worker.
START = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '$missing' end
if status ~= '$queued' and status ~= '$running' then return status end
redis.call('HSET', KEYS[1], 'status', '$running', 'attempt', ARGV[2], 'started_at', ARGV[3],
           'heartbeat_at', ARGV[3], 'worker', ARGV[4], 'rows_done', 0, 'bytes_done', 0,
           'rows_failed', 0)
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return '$running'
""")

# KEYS: job, queued set, running set. ARGV: id, attempt ('' = any), status, ttl, field/value...
FINISH = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '$missing' end
if status ~= '$queued' and status ~= '$running' then return status end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return '$stale' end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
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

# Parts of a job split across workers. KEYS: job, parts hash. ARGV[1]: part index.
PART_START = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '$running' then return {status or '$missing', 0} end
local i = ARGV[1]
local attempt = redis.call('HINCRBY', KEYS[2], i .. ':attempt', 1)
for _, f in ipairs({'rows_done', 'bytes_done', 'rows_failed'}) do
  local old = tonumber(redis.call('HGET', KEYS[2], i .. ':' .. f) or '0')
  if old ~= 0 then redis.call('HINCRBY', KEYS[1], f, -old) end
  redis.call('HSET', KEYS[2], i .. ':' .. f, 0)
end
return {'$running', attempt}
""")

# ARGV: index, attempt, rows, bytes, failed, now
PART_PROGRESS = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '$running' then return status or '$missing' end
local i = ARGV[1]
if redis.call('HGET', KEYS[2], i .. ':attempt') ~= ARGV[2] then return '$stale' end
local fields = {'rows_done', 'bytes_done', 'rows_failed'}
for k = 1, 3 do
  redis.call('HINCRBY', KEYS[1], fields[k], ARGV[k + 2])
  redis.call('HINCRBY', KEYS[2], i .. ':' .. fields[k], ARGV[k + 2])
end
redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[6])
return '$running'
""")

# ARGV: index, attempt, result JSON. Returns the number of parts done, or why not.
PART_DONE = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '$running' then return status or '$missing' end
local i = ARGV[1]
if redis.call('HGET', KEYS[2], i .. ':attempt') ~= ARGV[2] then return '$stale' end
if redis.call('HSETNX', KEYS[2], i .. ':done', ARGV[3]) == 0 then return '$duplicate' end
return tostring(redis.call('HINCRBY', KEYS[1], 'parts_done', 1))
""")
