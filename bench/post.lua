-- wrk script: POST the JSON bodies of a file (one per line) in turn, and print one JSON
-- summary line. With "close", each request asks for its connection to be closed after it.
-- Usage: wrk -s bench/post.lua URL -- BODIES_FILE [close|keep-alive]
local reqs = {}
local count = 0
local next_index = 0

function init(args)
  local headers = {["Content-Type"] = "application/json"}
  if args[2] == "close" then
    headers["Connection"] = "close"
  end
  for line in io.lines(args[1]) do
    if #line > 0 then
      count = count + 1
      reqs[count] = wrk.format("POST", wrk.path, headers, line)
    end
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
