"""The shared backend: the same exact sliding logs, in Redis, one atomic Lua script a decision.

Every replica on one Redis sees one set of windows, so N replicas admit L in total, not N*L.
Time comes from Redis ``TIME`` inside the script, so machines with skewed clocks still agree.
Times are integer microseconds (exact in a Lua double up to 2**53, i.e. for 285 years).
Layout, fail modes and expiry are described in ``docs/limits.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from aiproxy.limits.base import (
    Decision,
    LimiterUnavailable,
    Limits,
    RateLimiter,
    Reservation,
    bounded_seconds,
    bounded_tokens,
    make_decision,
)

__all__ = ["RedisRateLimiter"]

log = structlog.get_logger("aiproxy.limits")

_US = 1_000_000
# Seconds between two "Redis unreachable" warnings: one per outage burst, not one per request.
_WARN_EVERY = 5.0

# `now` in microseconds: ARGV[1] when a test clock is given, else the server's clock.
_NOW = """
local function fmt(x) return string.format('%d', x) end  -- tostring() would round to 14 digits
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
"""

# KEYS: park, request log, then (log, amounts) per token window.
# ARGV: now, id, tokens, n, (window, limit) * n request windows, m, (window, limit) * m token.
# A request entry counts while its time > now - window; a token window's amounts hash maps
# id -> tokens plus a running "total", so a decision never sums the whole log.
_ACQUIRE = _NOW + """
local id, tokens = ARGV[2], tonumber(ARGV[3])
local allowed, retry = 1, 0
local parked = tonumber(redis.call('GET', KEYS[1]))
if parked and parked > now then allowed, retry = 0, parked - now end

local function oldest(key, w, skip)  -- time of the (skip+1)-th oldest entry inside the window
  local e = redis.call('ZRANGEBYSCORE', key, '(' .. fmt(now - w), '+inf', 'WITHSCORES',
                       'LIMIT', skip, 1)
  if #e == 0 then return nil end
  return tonumber(e[2])
end

local n = 4
local req, longest = {}, 0
for k = 1, tonumber(ARGV[n]) do
  req[k] = {tonumber(ARGV[n + 1]), tonumber(ARGV[n + 2])}
  n = n + 2
  longest = math.max(longest, req[k][1])
end
n = n + 1
if longest > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now - longest)) end
for _, r in ipairs(req) do
  local w, limit = r[1], r[2]
  r[3] = redis.call('ZCOUNT', KEYS[2], '(' .. fmt(now - w), '+inf')
  if r[3] >= limit then
    allowed = 0
    retry = math.max(retry, oldest(KEYS[2], w, r[3] - limit) + w - now)
  end
end

local tok = {}
for k = 1, tonumber(ARGV[n]) do
  local w, limit = tonumber(ARGV[n + 1]), tonumber(ARGV[n + 2])
  n = n + 2
  local zlog, amounts = KEYS[1 + 2 * k], KEYS[2 + 2 * k]
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
  local used = math.max(0, tonumber(redis.call('HGET', amounts, 'total')) or 0)
  tok[k] = {w, limit, zlog, amounts, used}
  local need = math.max(1, math.min(tokens, limit))
  if used + need > limit then
    allowed = 0
    local excess, freed, start, at = used + need - limit, 0, 0, nil
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
  for _, t in ipairs(tok) do
    redis.call('ZADD', t[3], fmt(now), id)
    redis.call('HSET', t[4], id, fmt(tokens))
    redis.call('HINCRBY', t[4], 'total', fmt(tokens))
    redis.call('PEXPIRE', t[3], fmt(math.ceil(t[1] / 1000) + 1000))
    redis.call('PEXPIRE', t[4], fmt(math.ceil(t[1] / 1000) + 1000))
    t[5] = t[5] + tokens
  end
end

-- (limit, remaining, reset) per window, after this decision.
local rs, ts = {}, {}
for _, r in ipairs(req) do
  local first = oldest(KEYS[2], r[1], 0)
  table.insert(rs, {r[2], r[2] - r[3] - allowed, first and first + r[1] - now or r[1]})
end
for _, t in ipairs(tok) do
  local first = redis.call('ZRANGE', t[3], 0, 0, 'WITHSCORES')
  table.insert(ts, {t[2], t[2] - t[5], #first > 0 and tonumber(first[2]) + t[1] - now or t[1]})
end
return {allowed, retry, now, rs, ts}
"""

# KEYS: (log, amounts) per token window. ARGV: now (unused), id, actual tokens.
_RECONCILE = """
for k = 1, #KEYS, 2 do
  local old = tonumber(redis.call('HGET', KEYS[k + 1], ARGV[2]))
  if old then  -- still in this window (the hash entry leaves with the log entry)
    redis.call('HSET', KEYS[k + 1], ARGV[2], ARGV[3])
    redis.call('HINCRBY', KEYS[k + 1], 'total', string.format('%d', tonumber(ARGV[3]) - old))
  end
end
return 1
"""

# KEYS: park. ARGV: now, seconds in microseconds. The value is the end of the park.
_PARK = _NOW + """
local seconds = tonumber(ARGV[2])
local until_ = now + seconds
if until_ > (tonumber(redis.call('GET', KEYS[1])) or 0) then  -- never shorten a park
  redis.call('SET', KEYS[1], fmt(until_), 'PX', fmt(math.ceil(seconds / 1000) + 1000))
end
return 1
"""


# Reservation ids (sorted-set members shared by every process): a random per-process prefix
# and a counter, as unique as a uuid4 and much cheaper.
_RID_PREFIX = os.urandom(8).hex()
_RID_COUNTER = itertools.count(1)


class RedisRateLimiter(RateLimiter):
    """Exact sliding-window limits shared by every process on one Redis.

    ``url_or_client``: a ``redis://`` URL (the limiter then owns a connection pool with short
    timeouts and no retries) or a ready ``redis.asyncio.Redis``. ``fail_mode``: ``"open"``
    admits with ``Decision.degraded`` while Redis is unreachable, ``"closed"`` raises
    :class:`LimiterUnavailable`. ``clock``: tests only; replaces Redis ``TIME``.
    ``timeout``: socket connect/read timeout; a call is abandoned after ``2 * timeout + 0.5``
    seconds in all. ``max_connections``: size of the owned pool (a burst queues for it).
    """

    def __init__(self, url_or_client: str | Redis, *, prefix: str = "aiproxy:",
                 fail_mode: str = "open", clock: Callable[[], float] | None = None,
                 timeout: float = 0.5, max_connections: int = 64) -> None:
        if fail_mode not in ("open", "closed"):
            raise ValueError(f"fail_mode must be 'open' or 'closed', not {fail_mode!r}")
        # Hard ceiling per call (connect + read), also for a caller's client that may retry.
        self._deadline = 2 * timeout + 0.5
        self._owns_client = isinstance(url_or_client, str)
        if isinstance(url_or_client, str):
            # Blocking pool: a burst queues for a connection (bounded by the deadline) instead of
            # failing "too many connections". No retries: a dead Redis must answer at once.
            pool = BlockingConnectionPool.from_url(
                url_or_client, max_connections=max_connections, timeout=self._deadline,
                socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0))
            self._client: Redis = Redis(connection_pool=pool)
        else:
            self._client = url_or_client
        self.prefix, self.fail_mode = prefix, fail_mode
        self._clock = clock
        self.degraded_decisions = 0
        # Outage logging: one warning per _WARN_EVERY, one "reachable again" per outage.
        self._last_warning = float("-inf")
        self._down = False
        self._acquire = self._client.register_script(_ACQUIRE)
        self._reconcile = self._client.register_script(_RECONCILE)
        self._park = self._client.register_script(_PARK)

    def _key(self, key: str, suffix: str) -> str:
        # The {hash tag} keeps all keys of one subject in one Redis Cluster slot.
        return f"{self.prefix}limit:{{{key}}}:{suffix}"

    def _token_keys(self, key: str, limits: Limits) -> list[str]:
        keys = []
        for window, _ in limits.token_windows:
            keys += [self._key(key, f"tok:{int(window)}"), self._key(key, f"tok:{int(window)}:amt")]
        return keys

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(round(self._clock() * _US))

    async def acquire(self, key: str, limits: Limits, tokens: int = 0) -> Decision:
        tokens = bounded_tokens(tokens)
        rid = f"{_RID_PREFIX}{next(_RID_COUNTER):x}"
        args: list[str | int] = [self._now_arg(), rid, tokens, len(limits.request_windows)]
        for window, limit in limits.request_windows:
            args += [round(window * _US), limit]
        args.append(len(limits.token_windows))
        for window, limit in limits.token_windows:
            args += [round(window * _US), limit]
        keys = [self._key(key, "park"), self._key(key, "req"), *self._token_keys(key, limits)]
        try:
            result = await self._run(self._acquire, keys, args)
        except LimiterUnavailable:
            if self.fail_mode == "closed":
                raise
            self.degraded_decisions += 1
            # A real reservation keeps the caller's reconcile path uniform; it is a no-op.
            return Decision(allowed=True, degraded=True,
                            reservation=Reservation(key=key, id=rid, tokens=tokens,
                                                    at=time.time()))
        allowed, retry_us, now_us, req, tok = result
        reservation = (Reservation(key=key, id=rid, tokens=tokens, at=now_us / _US)
                       if allowed else None)
        return make_decision(bool(allowed), retry_us / _US, reservation,
                             [(int(lim), int(rem), reset / _US) for lim, rem, reset in req],
                             [(int(lim), int(rem), reset / _US) for lim, rem, reset in tok])

    async def reconcile(self, reservation: Reservation, limits: Limits, actual_tokens: int) -> None:
        keys = self._token_keys(reservation.key, limits)
        if not keys:
            return
        # Never raises: a lost reconcile only costs accuracy, and the response is already out.
        with contextlib.suppress(LimiterUnavailable):
            await self._run(self._reconcile, keys,
                            ["", reservation.id, bounded_tokens(actual_tokens)])

    async def park(self, key: str, seconds: float) -> None:
        seconds = bounded_seconds(seconds)
        if seconds <= 0:
            return
        # As for reconcile: if lost, the upstream says so again with its next 429.
        with contextlib.suppress(LimiterUnavailable):
            await self._run(self._park, [self._key(key, "park")],
                            [self._now_arg(), round(seconds * _US)])

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._deadline):
                await self._client.ping()
        except (RedisError, OSError):  # TimeoutError is an OSError
            return False
        return True

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose(close_connection_pool=True)

    async def _run(self, script: AsyncScript, keys: Sequence[str],
                   args: Sequence[str | int]) -> Any:
        """Run a script; any failure to get an answer becomes :class:`LimiterUnavailable`."""
        try:
            async with asyncio.timeout(self._deadline):
                try:
                    result = await script(keys=keys, args=args)
                except RedisConnectionError:
                    # A pooled connection from before a Redis restart fails once, on first use;
                    # a fresh one answers (or fails at once when Redis is still down).
                    result = await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._warn(exc)
            # The message may reach clients (a 503): the class name only, no host or port.
            raise LimiterUnavailable(f"redis unreachable ({type(exc).__name__})") from exc
        if self._down:
            self._down = False
            log.info("rate limiter backend reachable again",
                     degraded_decisions=self.degraded_decisions)
        return result

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            self._down = True  # only a warned outage gets its "reachable again"
            log.warning("rate limiter backend unreachable", error=repr(exc),
                        fail_mode=self.fail_mode, degraded_decisions=self.degraded_decisions)
