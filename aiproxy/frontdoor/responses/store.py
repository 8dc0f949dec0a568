"""Stored responses (``store: true``): what ``previous_response_id``, ``GET``/``DELETE
/v1/responses/{id}`` and ``input_items`` read. A client key sees only its own.

Each record holds one response and its own input items; a conversation is the chain of
``previous_response_id`` links, read oldest first, and reading it refreshes every link's
expiry, so a live conversation never loses its beginning. In memory (bounded by bytes, least
recently used first out, with an expiry) when nothing else is there; in the usage database
(:mod:`.database_store`, SQLite or PostgreSQL) when the ledger has one, so conversations
outlive a restart; in Redis (:mod:`.redis_store`) when ``REDIS_URL`` is set, so any replica
continues any conversation fast.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import orjson

if TYPE_CHECKING:
    from aiproxy.usage.store import UsageStore

__all__ = ["MAX_CHAIN", "BrokenChain", "MemoryResponseStore", "ResponseStore", "StoreUnavailable",
           "Stored", "make_store", "valid_id"]

# The most responses one conversation is read back through (a guard, not a real bound).
MAX_CHAIN = 10_000
# What a response id may look like (ours and OpenAI's are resp_ and hex): anything else is
# unknown without asking the store, and never becomes part of a Redis key.
_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def valid_id(response_id: str) -> bool:
    return _ID.fullmatch(response_id) is not None


class StoreUnavailable(Exception):
    """The store's backend did not answer (Redis or the database down). The message may reach
    a client: it names no host, port or path."""


class BrokenChain(Exception):
    """A link of the conversation is gone (deleted, expired, or another key's)."""

    def __init__(self, missing: str) -> None:
        super().__init__(missing)
        self.missing = missing


@attrs.frozen
class Stored:
    """One stored response. ``origin`` is the model that answered; ``upstream_stored`` says
    the upstream itself keeps it (passed through with ``store: true``), so a continuation on
    the same model may send just its id."""

    owner: str
    response: dict[str, Any]
    input: list[dict[str, Any]]
    origin: str | None = None
    upstream_stored: bool = False

    @property
    def id(self) -> str:
        return str(self.response["id"])

    @property
    def previous(self) -> str | None:
        previous = self.response.get("previous_response_id")
        return previous if isinstance(previous, str) and previous else None

    def items(self) -> Iterator[dict[str, Any]]:
        """Its input items, then its output items: the turn as the model saw and said it."""
        yield from self.input
        yield from self.response.get("output") or ()

    def encode(self) -> bytes:
        return orjson.dumps({"owner": self.owner, "response": self.response,
                             "input": self.input, "origin": self.origin,
                             "upstream_stored": self.upstream_stored})

    @classmethod
    def decode(cls, data: bytes) -> Stored:
        raw = orjson.loads(data)
        return cls(raw["owner"], raw["response"], raw["input"], raw.get("origin"),
                   bool(raw.get("upstream_stored")))


class ResponseStore(Protocol):
    """Where responses are kept. Every method may raise :class:`StoreUnavailable`."""

    async def start(self) -> None:
        """Begin any background work (the database store's purge), once the app starts."""

    async def put(self, record: Stored) -> None: ...

    async def get(self, owner: str, response_id: str) -> Stored | None: ...

    async def chain(self, owner: str, response_id: str) -> list[Stored]:
        """The conversation ending with ``response_id``, oldest first; :class:`BrokenChain`
        names the first link that is gone."""

    async def delete(self, owner: str, response_id: str) -> Stored | None: ...

    async def find_item(self, owner: str, item_id: str) -> dict[str, Any] | None:
        """An input or output item of any of ``owner``'s stored responses, by its id."""

    async def close(self) -> None: ...


@attrs.define(slots=True)
class _Entry:
    data: bytes
    expires: float
    previous: str | None
    item_ids: tuple[str, ...]


class MemoryResponseStore:
    """Responses in this process: at most ``max_bytes`` of encoded records (the least recently
    used leave first), each for ``ttl`` seconds after it was last read or written."""

    def __init__(self, *, ttl: float, max_bytes: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.max_bytes, self.clock = ttl, max_bytes, clock
        # Least recently used first; every use refreshes the expiry with the same ttl, so
        # the front is also the earliest to expire.
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._items: dict[tuple[str, str], str] = {}
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def start(self) -> None:
        """Nothing runs in the background: expired entries leave as new ones come."""

    async def put(self, record: Stored) -> None:
        key = (record.owner, record.id)
        self._remove(key)
        data = record.encode()
        if len(data) > self.max_bytes:
            return  # larger than the whole store: kept nowhere rather than emptying it
        item_ids = tuple(str(i["id"]) for i in record.items() if isinstance(i.get("id"), str))
        self._entries[key] = _Entry(data, self.clock() + self.ttl, record.previous, item_ids)
        self.size += len(data)
        for item_id in item_ids:
            self._items[(record.owner, item_id)] = record.id
        self._expire()
        while self.size > self.max_bytes:
            self._remove(next(iter(self._entries)))

    async def get(self, owner: str, response_id: str) -> Stored | None:
        entry = self._touch((owner, response_id))
        return Stored.decode(entry.data) if entry is not None else None

    async def chain(self, owner: str, response_id: str) -> list[Stored]:
        out: list[Stored] = []
        link: str | None = response_id
        while link is not None and len(out) < MAX_CHAIN:
            entry = self._touch((owner, link))
            if entry is None:
                raise BrokenChain(link)
            out.append(Stored.decode(entry.data))
            link = entry.previous
        out.reverse()
        return out

    async def delete(self, owner: str, response_id: str) -> Stored | None:
        entry = self._touch((owner, response_id))
        if entry is None:
            return None
        self._remove((owner, response_id))
        return Stored.decode(entry.data)

    async def find_item(self, owner: str, item_id: str) -> dict[str, Any] | None:
        response_id = self._items.get((owner, item_id))
        record = await self.get(owner, response_id) if response_id else None
        if record is None:
            return None
        return next((i for i in record.items() if i.get("id") == item_id), None)

    async def close(self) -> None:
        self._entries.clear()
        self._items.clear()
        self.size = 0

    def _touch(self, key: tuple[str, str]) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self.clock()
        if entry.expires <= now:
            self._remove(key)
            return None
        entry.expires = now + self.ttl
        self._entries.move_to_end(key)
        return entry

    def _expire(self) -> None:
        now = self.clock()
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                return
            self._remove(key)

    def _remove(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.size -= len(entry.data)
        for item_id in entry.item_ids:
            if self._items.get((key[0], item_id)) == key[1]:
                del self._items[(key[0], item_id)]


def make_store(redis_url: str | None, *, prefix: str, ttl: float, max_bytes: int,
               database: UsageStore | None = None) -> ResponseStore:
    """Redis when ``REDIS_URL`` is set (shared, fast); else the usage ``database`` when there
    is one (persistent; shared by the replicas of one PostgreSQL); else memory."""
    if redis_url:
        from aiproxy.frontdoor.responses.redis_store import RedisResponseStore

        return RedisResponseStore(redis_url, prefix=prefix, ttl=ttl)
    if database is not None:
        from aiproxy.frontdoor.responses.database_store import DatabaseResponseStore

        return DatabaseResponseStore(database, ttl=ttl, max_bytes=max_bytes)
    return MemoryResponseStore(ttl=ttl, max_bytes=max_bytes)
