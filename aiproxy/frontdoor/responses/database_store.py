"""Stored responses in the usage database (SQLite or PostgreSQL, through the ledger's own
store): they outlive a restart, and on PostgreSQL every replica continues every conversation.

One row per response in ``stored_responses`` (its owner, id, ``previous_response_id``, the
Response and its input items as JSON text, created and expiry times) and one per item id in
``stored_response_items`` for ``item_reference``, deleted with its response. A conversation is
read in one recursive query. Reading refreshes the expiry of the links read, as the other
stores do, but only of links whose expiry is older than a minute (``ttl / 100`` for a short
ttl): a busy conversation costs one write a minute, not one per read. Expired rows are
invisible at once and deleted every minute; then, while the table holds more than
``max_bytes``, the least recently used go too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson

from aiproxy.frontdoor.responses.store import (
    MAX_CHAIN,
    BrokenChain,
    Stored,
    StoreUnavailable,
    valid_id,
)
from aiproxy.observability import get_logger
from aiproxy.usage.store import StoreUnavailable as DatabaseUnavailable
from aiproxy.usage.store import UsageStore

__all__ = ["PURGE_EVERY", "DatabaseResponseStore"]

T = TypeVar("T")
log = get_logger("aiproxy.responses")

PURGE_EVERY = 60.0
WARN_EVERY = 10.0  # seconds between two "database away" warnings

_COLUMNS = ("owner", "id", "previous_id", "response", "input_items", "origin",
            "upstream_stored", "expires_at")
_SELECTED = ", ".join(_COLUMNS)
# Every statement uses ? placeholders; the backend adapts them ($1, $2 on PostgreSQL).
_GET = (f"SELECT {_SELECTED} FROM stored_responses "  # noqa: S608 - constants only
        "WHERE owner = ? AND id = ? AND expires_at > ?")
# From the last response back along previous_id, at most MAX_CHAIN links (a cycle ends there).
_CHAIN = (f"WITH RECURSIVE chain (depth, {_SELECTED}) AS ("  # noqa: S608 - constants only
          f"SELECT 1, {_SELECTED} FROM stored_responses "
          "WHERE owner = ? AND id = ? AND expires_at > ? "
          "UNION ALL "
          f"SELECT chain.depth + 1, {', '.join(f'r.{c}' for c in _COLUMNS)} "
          "FROM stored_responses r JOIN chain ON r.owner = chain.owner "
          "AND r.id = chain.previous_id WHERE r.expires_at > ? AND chain.depth < ?) "
          f"SELECT {_SELECTED} FROM chain ORDER BY depth DESC")
_FIND_ITEM = (f"SELECT {', '.join(f'r.{c}' for c in _COLUMNS)} "  # noqa: S608 - constants only
              "FROM stored_response_items i JOIN stored_responses r "
              "ON r.owner = i.owner AND r.id = i.response_id "
              "WHERE i.owner = ? AND i.item_id = ? AND r.expires_at > ?")
_DELETE = "DELETE FROM stored_responses WHERE owner = ? AND id = ?"
_INSERT = ("INSERT INTO stored_responses (owner, id, previous_id, response, input_items, "
           "origin, upstream_stored, size, created_at, expires_at) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# An item id seen in several responses points at the last one stored (as in memory).
_INDEX_ITEM = ("INSERT INTO stored_response_items (owner, item_id, response_id) "
               "VALUES (?, ?, ?) ON CONFLICT (owner, item_id) "
               "DO UPDATE SET response_id = excluded.response_id")
_REFRESH = "UPDATE stored_responses SET expires_at = ? WHERE owner = ? AND id = ?"
_EXPIRE = "DELETE FROM stored_responses WHERE expires_at <= ?"
_SIZE = "SELECT COALESCE(SUM(size), 0) FROM stored_responses"
# Keep the most recently used (latest expiry) while their sizes add up to the bound.
_TRIM = ("DELETE FROM stored_responses WHERE (owner, id) IN ("
         "SELECT owner, id FROM (SELECT owner, id, SUM(size) OVER ("
         "ORDER BY expires_at DESC, owner, id ROWS UNBOUNDED PRECEDING) AS kept "
         "FROM stored_responses) AS newest WHERE kept > ?)")


def _record(row: Sequence[Any]) -> Stored:
    owner, _, _, response, items, origin, upstream_stored, _ = row
    return Stored(owner, orjson.loads(response), orjson.loads(items), origin,
                  bool(upstream_stored))


class DatabaseResponseStore:
    """Responses in the usage database for ``ttl`` seconds after their last use, at most
    ``max_bytes`` of them (checked as expired ones are purged). ``database`` is the ledger's
    store: the ledger opens, migrates and closes it; this store only uses it."""

    def __init__(self, database: UsageStore, *, ttl: float, max_bytes: int,
                 timeout: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.ttl, self.max_bytes, self.timeout, self.clock = ttl, max_bytes, timeout, clock
        # A link read whose expiry is this much older than a fresh one's is refreshed.
        self.slack = min(60.0, ttl / 100)
        self._purger: asyncio.Task[None] | None = None
        self._warned = 0.0

    async def start(self) -> None:
        """Purge now and every :data:`PURGE_EVERY` seconds (any replica may; it is idempotent)."""
        self._purger = asyncio.get_running_loop().create_task(self._purge_forever())

    async def put(self, record: Stored) -> None:
        response = orjson.dumps(record.response)
        items = orjson.dumps(record.input)
        size = len(response) + len(items)
        if size > self.max_bytes:
            return  # larger than the whole store: kept nowhere, as in memory
        now = self.clock()
        owner, response_id = record.owner, record.id
        # Only ids that can be ids are indexed: a client's 10 kB "id" must not fail the
        # insert (PostgreSQL's index entries are bounded), and an unknown one is not found.
        item_ids = {i["id"] for i in record.items() if isinstance(i.get("id"), str)
                    and valid_id(i["id"])}
        await self._run("put", self.database.execute([
            (_DELETE, [(owner, response_id)]),
            (_INSERT, [(owner, response_id, record.previous, response.decode(),
                        items.decode(), record.origin, record.upstream_stored, size,
                        float(now), float(now + self.ttl))]),
            (_INDEX_ITEM, [(owner, item_id, response_id) for item_id in sorted(item_ids)]),
        ]))

    async def get(self, owner: str, response_id: str) -> Stored | None:
        now = self.clock()
        rows = await self._read("get", _GET, [owner, response_id, float(now)])
        if not rows:
            return None
        await self._refresh(rows, now)
        return _record(rows[0])

    async def chain(self, owner: str, response_id: str) -> list[Stored]:
        now = float(self.clock())
        rows = await self._read("chain", _CHAIN, [owner, response_id, now, now, MAX_CHAIN])
        if not rows:
            raise BrokenChain(response_id)
        oldest_previous = rows[0][2]
        if oldest_previous and len(rows) < MAX_CHAIN:
            raise BrokenChain(oldest_previous)
        await self._refresh(rows, now)
        return [_record(row) for row in rows]

    async def delete(self, owner: str, response_id: str) -> Stored | None:
        rows = await self._read("delete", _GET, [owner, response_id, float(self.clock())])
        if not rows:
            return None
        await self._run("delete", self.database.execute([(_DELETE, [(owner, response_id)])]))
        return _record(rows[0])

    async def find_item(self, owner: str, item_id: str) -> dict[str, Any] | None:
        if not valid_id(item_id):
            return None  # never indexed (see put)
        now = self.clock()
        rows = await self._read("find_item", _FIND_ITEM, [owner, item_id, float(now)])
        if not rows:
            return None
        await self._refresh(rows, now)
        return next((i for i in _record(rows[0]).items() if i.get("id") == item_id), None)

    async def purge(self) -> None:
        """Delete what has expired, then the least recently used beyond ``max_bytes``."""
        await self._run("purge", self.database.execute([(_EXPIRE, [(float(self.clock()),)])]))
        total = await self._read("purge", _SIZE, [])
        if int(total[0][0]) > self.max_bytes:
            await self._run("purge", self.database.execute([(_TRIM, [(self.max_bytes,)])]))

    async def close(self) -> None:
        """Stop purging; the database itself is the ledger's to close."""
        purger, self._purger = self._purger, None
        if purger is not None:
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger

    async def _purge_forever(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):  # logged; the next round tries again
                await self.purge()
            await asyncio.sleep(PURGE_EVERY)

    async def _refresh(self, rows: Sequence[Sequence[Any]], now: float) -> None:
        """A read keeps what it read: the links whose expiry is stale get a fresh one. The
        read has succeeded already, so a failure here is logged, not raised."""
        fresh = now + self.ttl
        stale = [(float(fresh), row[0], row[1]) for row in rows
                 if float(row[7]) < fresh - self.slack]
        if stale:
            with contextlib.suppress(StoreUnavailable):
                await self._run("refresh", self.database.execute([(_REFRESH, stale)]))

    async def _read(self, operation: str, sql: str,
                    params: Sequence[Any]) -> list[Sequence[Any]]:
        return await self._run(operation, self.database.fetch(sql, params))

    async def _run(self, operation: str, call: Awaitable[T]) -> T:
        """One database exchange within ``timeout``; a failure is :class:`StoreUnavailable`."""
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except (DatabaseUnavailable, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, DatabaseUnavailable) else "timed out"
            now = time.monotonic()
            if now - self._warned >= WARN_EVERY:
                self._warned = now
                log.warning("response_store_unavailable", operation=operation, error=reason)
            # The message reaches clients (a 503): no host, port or file path in it.
            raise StoreUnavailable("the usage database is unreachable" if isinstance(
                exc, DatabaseUnavailable) else "the usage database did not answer in "
                f"{self.timeout:g} s") from None
