"""Stored responses in Redis, shared by every replica: one hash per response (``data``, the
encoded record, and ``prev``, its ``previous_response_id``) and one key per item id (for
``item_reference``), all expiring together. A conversation is read back in one round trip: a
Lua script walks the ``prev`` links and refreshes their expiry as it goes.

A record's keys carry its owner in a ``{hash tag}``, so one owner's conversations live in one
Redis Cluster slot and another key's responses are simply not found.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from aiproxy.frontdoor.responses.store import MAX_CHAIN, BrokenChain, Stored, StoreUnavailable
from aiproxy.observability import get_logger

__all__ = ["RedisResponseStore"]

T = TypeVar("T")
log = get_logger("aiproxy.responses")

# KEYS[1]: the owner's key prefix. ARGV: the last response id, the ttl in ms, the most links.
# Returns {1, '', records} for a whole chain, {0, missing_id, records} when a link is gone.
_CHAIN = """
local out = {}
local id = ARGV[1]
local ttl = tonumber(ARGV[2])
for _ = 1, tonumber(ARGV[3]) do
  local key = KEYS[1] .. id
  local rec = redis.call('HMGET', key, 'data', 'prev')
  if not rec[1] then return {0, id, out} end
  redis.call('PEXPIRE', key, ttl)
  table.insert(out, rec[1])
  if not rec[2] or rec[2] == '' then return {1, '', out} end
  id = rec[2]
end
return {1, '', out}
"""


class RedisResponseStore:
    """Responses in Redis for ``ttl`` seconds after their last use."""

    def __init__(self, url_or_client: str | Redis, *, prefix: str = "aiproxy:",
                 ttl: float = 30 * 86400, timeout: float = 1.0) -> None:
        self._owns_client = isinstance(url_or_client, str)
        if isinstance(url_or_client, str):
            # As the limiter does: a bounded pool, short timeouts, no retries (a dead Redis
            # must answer at once, not hold the request).
            pool = BlockingConnectionPool.from_url(
                url_or_client, max_connections=32, timeout=2 * timeout,
                socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0))
            self._client: Redis = Redis(connection_pool=pool)
        else:
            self._client = url_or_client
        self.prefix = prefix
        self.ttl_ms = max(1, round(ttl * 1000))
        self._deadline = 2 * timeout + 0.5
        self._chain = self._client.register_script(_CHAIN)

    async def start(self) -> None:
        """Nothing to do: Redis expires the keys itself."""

    def _base(self, owner: str) -> str:
        return f"{self.prefix}resp:{{{owner}}}:"

    async def put(self, record: Stored) -> None:
        base = self._base(record.owner)
        key = base + record.id

        async def write() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping={"data": record.encode(),
                                        "prev": record.previous or ""})
                pipe.pexpire(key, self.ttl_ms)
                for item in record.items():
                    if isinstance(item.get("id"), str):
                        pipe.set(f"{base}item:{item['id']}", record.id, px=self.ttl_ms)
                await pipe.execute()

        await self._run(write)

    async def get(self, owner: str, response_id: str) -> Stored | None:
        data: Any = await self._run(lambda: self._client.hget(self._base(owner) + response_id,
                                                              "data"))
        return Stored.decode(data) if data else None

    async def chain(self, owner: str, response_id: str) -> list[Stored]:
        whole, missing, records = await self._run(lambda: self._chain(
            keys=[self._base(owner)], args=[response_id, self.ttl_ms, MAX_CHAIN]))
        if not whole:
            raise BrokenChain(missing.decode() if isinstance(missing, bytes) else str(missing))
        out = [Stored.decode(data) for data in records]
        out.reverse()
        return out

    async def delete(self, owner: str, response_id: str) -> Stored | None:
        key = self._base(owner) + response_id

        async def take() -> Any:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(key, "data")
                pipe.delete(key)
                data, _ = await pipe.execute()
                return data

        data = await self._run(take)
        return Stored.decode(data) if data else None

    async def find_item(self, owner: str, item_id: str) -> dict[str, Any] | None:
        base = self._base(owner)
        response_id: Any = await self._run(lambda: self._client.get(f"{base}item:{item_id}"))
        if not response_id:
            return None
        record = await self.get(owner, bytes(response_id).decode())
        if record is None:
            return None
        return next((i for i in record.items() if i.get("id") == item_id), None)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose(close_connection_pool=True)

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        """One Redis exchange; any failure to get an answer is :class:`StoreUnavailable`."""
        try:
            async with asyncio.timeout(self._deadline):
                try:
                    return await call()
                except RedisConnectionError:
                    # A pooled connection from before a Redis restart fails once, on first use.
                    return await call()
        except (RedisError, OSError) as exc:
            log.warning("response_store_unreachable", error=type(exc).__name__)
            # The message may reach clients (a 503): the class name only, no host or port.
            raise StoreUnavailable(f"redis unreachable ({type(exc).__name__})") from exc
