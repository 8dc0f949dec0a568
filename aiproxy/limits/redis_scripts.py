"""The Lua scripts of the Redis backend; each takes a batch of calls for one subject.

A batch is applied in order inside one script run, so it is atomic and exactly as if its
calls had been sent one by one. Layouts of KEYS and ARGV are above each script.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "PARK", "RECONCILE"]

# `now` in microseconds for one call: its ARGV value when a test clock gave one, else the
# server's clock (read once per batch: the calls of one batch happen at the same moment).
_NOW = """
local function fmt(x) return string.format('%d', x) end  -- tostring() would round to 14 digits
local server_now
local function now_of(arg)
  if arg ~= '' then return tonumber(arg) end
  if not server_now then
    local t = redis.call('TIME')
    server_now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return server_now
end
"""

# KEYS: park, request log, then (log, amounts) per token window.
# ARGV: n, (window, limit) * n request windows, m, (window, limit) * m token windows, then
# (now, id, tokens) per call. A request entry counts while its time > now - window; a token
# window's amounts hash maps id -> tokens plus a running "total", so a decision never sums the
# whole log. Returns one {allowed, retry, now, request windows, token windows} per call.
ACQUIRE = _NOW + """
local n = 1
local req, longest = {}, 0
for k = 1, tonumber(ARGV[n]) do
  req[k] = {tonumber(ARGV[n + 1]), tonumber(ARGV[n + 2])}
  n = n + 2
  longest = math.max(longest, req[k][1])
end
n = n + 1
local tokw = {}
for k = 1, tonumber(ARGV[n]) do
  tokw[k] = {tonumber(ARGV[n + 1]), tonumber(ARGV[n + 2]), KEYS[1 + 2 * k], KEYS[2 + 2 * k]}
  n = n + 2
end
n = n + 1

local now
local function oldest(key, w, skip)  -- time of the (skip+1)-th oldest entry inside the window
  local e = redis.call('ZRANGEBYSCORE', key, '(' .. fmt(now - w), '+inf', 'WITHSCORES',
                       'LIMIT', skip, 1)
  if #e == 0 then return nil end
  return tonumber(e[2])
end

local function decide(id, tokens)
  local allowed, retry = 1, 0
  local parked = tonumber(redis.call('GET', KEYS[1]))
  if parked and parked > now then allowed, retry = 0, parked - now end

  if longest > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now - longest)) end
  local counts = {}
  for k, r in ipairs(req) do
    local w, limit = r[1], r[2]
    counts[k] = redis.call('ZCOUNT', KEYS[2], '(' .. fmt(now - w), '+inf')
    if counts[k] >= limit then
      allowed = 0
      retry = math.max(retry, oldest(KEYS[2], w, counts[k] - limit) + w - now)
    end
  end

  local used = {}
  for k, t in ipairs(tokw) do
    local w, limit, zlog, amounts = t[1], t[2], t[3], t[4]
    local old = redis.call('ZRANGEBYSCORE', zlog, '-inf', fmt(now - w))
    if #old > 0 then
      local freed = 0
      for i = 1, #old, 1000 do  -- unpack() in slices: Lua's stack holds ~8000 values
        local j = math.min(i + 999, #old)
        for _, a in ipairs(redis.call('HMGET', amounts, unpack(old, i, j))) do
          if a then freed = freed + tonumber(a) end
        end
        redis.call('HDEL', amounts, unpack(old, i, j))
      end
      redis.call('ZREMRANGEBYSCORE', zlog, '-inf', fmt(now - w))
      if redis.call('ZCARD', zlog) == 0 then redis.call('DEL', amounts)  -- no drift survives
      else redis.call('HINCRBY', amounts, 'total', fmt(-freed)) end
    end
    used[k] = math.max(0, tonumber(redis.call('HGET', amounts, 'total')) or 0)
    local need = math.max(1, math.min(tokens, limit))
    if used[k] + need > limit then
      allowed = 0
      local excess, freed, start, at = used[k] + need - limit, 0, 0, nil
      while not at do  -- oldest first until enough tokens have expired
        local batch = redis.call('ZRANGE', zlog, start, start + 499, 'WITHSCORES')
        if #batch == 0 then at = now break end
        for i = 1, #batch, 2 do
          freed = freed + (tonumber(redis.call('HGET', amounts, batch[i])) or 0)
          if freed >= excess then at = tonumber(batch[i + 1]) break end
        end
        start = start + 500
      end
      retry = math.max(retry, at + w - now)
    end
  end

  if allowed == 1 then
    if longest > 0 then
      redis.call('ZADD', KEYS[2], fmt(now), id)
      redis.call('PEXPIRE', KEYS[2], fmt(math.ceil(longest / 1000) + 1000))
    end
    for k, t in ipairs(tokw) do
      redis.call('ZADD', t[3], fmt(now), id)
      redis.call('HSET', t[4], id, fmt(tokens))
      redis.call('HINCRBY', t[4], 'total', fmt(tokens))
      redis.call('PEXPIRE', t[3], fmt(math.ceil(t[1] / 1000) + 1000))
      redis.call('PEXPIRE', t[4], fmt(math.ceil(t[1] / 1000) + 1000))
      used[k] = used[k] + tokens
    end
  end

  -- (limit, remaining, reset) per window, after this decision.
  local rs, ts = {}, {}
  for k, r in ipairs(req) do
    local first = oldest(KEYS[2], r[1], 0)
    table.insert(rs, {r[2], r[2] - counts[k] - allowed, first and first + r[1] - now or r[1]})
  end
  for k, t in ipairs(tokw) do
    local first = redis.call('ZRANGE', t[3], 0, 0, 'WITHSCORES')
    table.insert(ts, {t[2], t[2] - used[k],
                      #first > 0 and tonumber(first[2]) + t[1] - now or t[1]})
  end
  return {allowed, retry, now, rs, ts}
end

local out = {}
for i = n, #ARGV, 3 do
  now = now_of(ARGV[i])
  out[#out + 1] = decide(ARGV[i + 1], tonumber(ARGV[i + 2]))
end
return out
"""

# KEYS: (log, amounts) per token window. ARGV: (id, actual tokens) per call.
RECONCILE = """
for i = 1, #ARGV, 2 do
  for k = 1, #KEYS, 2 do
    local old = tonumber(redis.call('HGET', KEYS[k + 1], ARGV[i]))
    if old then  -- still in this window (the hash entry leaves with the log entry)
      redis.call('HSET', KEYS[k + 1], ARGV[i], ARGV[i + 1])
      redis.call('HINCRBY', KEYS[k + 1], 'total',
                 string.format('%d', tonumber(ARGV[i + 1]) - old))
    end
  end
end
return 1
"""

# KEYS: park. ARGV: (now, seconds in microseconds) per call. The value is the end of the park.
PARK = _NOW + """
for i = 1, #ARGV, 2 do
  local seconds = tonumber(ARGV[i + 1])
  local until_ = now_of(ARGV[i]) + seconds
  if until_ > (tonumber(redis.call('GET', KEYS[1])) or 0) then  -- never shorten a park
    redis.call('SET', KEYS[1], fmt(until_), 'PX', fmt(math.ceil(seconds / 1000) + 1000))
  end
end
return 1
"""
