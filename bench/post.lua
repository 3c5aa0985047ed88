-- wrk script: POST the bodies of a file (one per line) in turn, and print one JSON summary
-- line. With "close", each request asks for its connection to be closed after it.
-- Usage: wrk -s bench/post.lua URL -- BODIES_FILE [close|keep-alive]
-- The file's format is bench/loadgen.py's (write_bodies, read_bodies): a line is a body sent
-- as is (JSON: Content-Type application/json), "#header NAME: VALUE" a header sent with every
-- request of the file (a Content-Type one replaces the default), "#hex HEX" a body in hex
-- digits (raw bytes that may hold a newline).
local reqs = {}
local count = 0
local next_index = 0

local function unhex(digits)
  return (digits:gsub("%x%x", function(pair) return string.char(tonumber(pair, 16)) end))
end

function init(args)
  local headers = {}
  local bodies = {}
  local typed = false
  for line in io.lines(args[1]) do
    local name, value = line:match("^#header ([^:]+):%s*(.-)%s*$")
    if name then
      headers[name] = value
      typed = typed or name:lower() == "content-type"
    elseif line:sub(1, 5) == "#hex " then
      bodies[#bodies + 1] = unhex(line:sub(6))
    elseif #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  if not typed then
    headers["Content-Type"] = "application/json"
  end
  if args[2] == "close" then
    headers["Connection"] = "close"
  end
  for _, body in ipairs(bodies) do
    count = count + 1
    reqs[count] = wrk.format("POST", wrk.path, headers, body)
  end
  if count == 0 then
    error("no request bodies in " .. args[1])
  end
end

function request()
  next_index = next_index % count + 1
  return reqs[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
