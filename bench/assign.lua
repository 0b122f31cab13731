-- wrk script: POST the canonical assign request, one distinct contact per
-- request in flight (the gateway serializes work per contact by design, so one
-- contact for every connection would measure its ordering lock, not its cost).
--
-- Environment (read in every Lua state wrk creates):
--   BENCH_TENANT    tenant named in the body (default "bench")
--   BENCH_KEY       client key for Authorization (default "bench-key")
--   BENCH_THINK_MS  if > 0, each connection waits a random 0..2x this before
--                   each request (a paced, open-ish load); 0 = closed loop
-- done() prints one line "BENCHJSON {...}" that bench/run.py parses.

local tenant = os.getenv("BENCH_TENANT") or "bench"
local key = os.getenv("BENCH_KEY") or "bench-key"
local think = tonumber(os.getenv("BENCH_THINK_MS") or "0") or 0
local CONTACTS = 4096 -- per thread; far more than connections, so none shares a contact

local counter = 0
local threads = {}
function setup(thread)
  thread:set("tid", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

-- wrk counts only statuses >= 400 as errors; a 202 (queued, not assigned) is a
-- failure here too.
non200 = 0
function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  end
end

local requests = {}
local n = 0

function init(args)
  local base = 1000 + (tid or 0) * CONTACTS
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. key,
  }
  for i = 1, CONTACTS do
    local body = string.format(
      '{"tenant":"%s","contact":{"id":"%d"},"assignee":{"id":"17"},"mode":"replace"}',
      tenant, base + i)
    requests[i] = wrk.format("POST", nil, headers, body)
  end
end

function request()
  n = n % CONTACTS + 1
  return requests[n]
end

if think > 0 then
  function delay()
    return math.random(0, 2 * think)
  end
end

function done(summary, latency, reqs)
  local e = summary.errors
  local other = 0
  for _, t in ipairs(threads) do
    other = other + (t:get("non200") or 0)
  end
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"non200":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.1f,"max":%d,"min":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout, other,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max, latency.min))
end
