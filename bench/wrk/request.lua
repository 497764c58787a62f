-- wrk script shared by every scenario of bench/run.py. Configured through the environment:
--   BENCH_METHOD   GET | POST | PUT            (default GET)
--   BENCH_PATH     request path with query      (default: the URL's path)
--   BENCH_BODY     request body                 (optional)
--   BENCH_HEADERS  "Name: value" lines separated by "\n" (optional)
-- At the end it prints one line "BENCH_JSON {...}" with the figures bench/run.py reads.
local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH")
local body = os.getenv("BENCH_BODY")
local header_lines = os.getenv("BENCH_HEADERS") or ""

wrk.method = method
if path and path ~= "" then wrk.path = path end
if body and body ~= "" then wrk.body = body end
for line in string.gmatch(header_lines, "[^\n]+") do
  local name, value = string.match(line, "^%s*([^:]+):%s*(.-)%s*$")
  if name then wrk.headers[name] = value end
end

-- One pre-formatted request, reused for every call: keeps wrk's own cost per request minimal.
local req = nil
request = function()
  if not req then req = wrk.format() end
  return req
end

done = function(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_s":%.6f,"rps":%.2f,"bytes":%d,' ..
    '"latency_us":{"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.1f,"max":%d,"stdev":%.1f},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, secs, summary.requests / secs, summary.bytes,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max, latency.stdev,
    e.connect, e.read, e.write, e.status, e.timeout))
end
