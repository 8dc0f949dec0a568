-- wrk script for benchmarks/run.py: POST a JSON body with a bearer token, print a JSON summary.
--   WRK_BODY          the request body (default: a small non-streaming chat completion)
--   WRK_TOKEN         bearer token (default "bench")
--   WRK_BODY2, WRK_EVERY   every WRK_EVERY-th request sends WRK_BODY2 instead (soak mix)
--   WRK_MAX_REQUESTS  stop after this many responses, printing WRK_DONE (soak); 0 = run -d
-- Usage: WRK_BODY='{"model":"m","messages":[...]}' wrk -t1 -c32 -d5s --latency \
--          -s benchmarks/wrk_post.lua http://127.0.0.1:8080/v1/chat/completions

wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY")
  or '{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("WRK_TOKEN") or "bench")

local body2 = os.getenv("WRK_BODY2")
if body2 and body2 ~= "" then
  local every = tonumber(os.getenv("WRK_EVERY") or "10")
  local body1, n = wrk.body, 0
  request = function()
    n = n + 1
    if n % every == 0 then
      return wrk.format(nil, nil, nil, body2)
    end
    return wrk.format(nil, nil, nil, body1)
  end
end

local limit = tonumber(os.getenv("WRK_MAX_REQUESTS") or "0")
if limit > 0 then
  local count = 0
  response = function(status, headers, body)
    count = count + 1
    if count == limit then
      -- wrk's main thread sleeps for all of -d: tell run.py, which interrupts it (SIGINT).
      io.write("WRK_DONE\n")
      io.flush()
      wrk.thread:stop()
    end
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,'
      .. '"p999_us":%.1f,"max_us":%.1f,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
