"""Stored responses: the in-memory store's bounds and expiry, the Redis store on a real
redis-server, and two aiproxy processes on one Redis continuing each other's conversations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from redis.asyncio import Redis

from aiproxy.frontdoor.responses import (
    BrokenChain,
    MemoryResponseStore,
    Stored,
    StoreUnavailable,
)
from aiproxy.frontdoor.responses.redis_store import RedisResponseStore
from tests.conftest import TOKEN
from tests.redis_fixture import RedisServer
from tests.test_limits_replicas import Proxies


def record(response_id: str, previous: str | None = None, owner: str = "key:a",
           text: str = "x") -> Stored:
    return Stored(owner, {"id": response_id, "object": "response",
                          "previous_response_id": previous,
                          "output": [{"id": f"msg_out_{response_id}", "type": "message",
                                      "role": "assistant", "content": [
                                          {"type": "output_text", "text": text}]}]},
                  [{"id": f"msg_in_{response_id}", "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": text}]}], origin="m")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestMemoryStore:
    async def test_a_chain_reads_oldest_first_and_breaks_where_a_link_is_gone(self):
        store = MemoryResponseStore(ttl=60, max_bytes=10**6)
        for rid, prev in (("r1", None), ("r2", "r1"), ("r3", "r2")):
            await store.put(record(rid, prev))
        assert [r.id for r in await store.chain("key:a", "r3")] == ["r1", "r2", "r3"]
        assert (await store.find_item("key:a", "msg_out_r2"))["content"][0]["text"] == "x"
        assert (await store.delete("key:a", "r2")).id == "r2"
        with pytest.raises(BrokenChain) as err:
            await store.chain("key:a", "r3")
        assert err.value.missing == "r2"
        assert await store.find_item("key:a", "msg_out_r2") is None

    async def test_owners_are_apart(self):
        store = MemoryResponseStore(ttl=60, max_bytes=10**6)
        await store.put(record("r1"))
        assert await store.get("key:b", "r1") is None
        assert await store.delete("key:b", "r1") is None
        assert await store.find_item("key:b", "msg_in_r1") is None
        with pytest.raises(BrokenChain):
            await store.chain("key:b", "r1")
        assert (await store.get("key:a", "r1")).origin == "m"

    async def test_bounded_by_bytes_least_recently_used_first(self):
        size = len(record("r0").encode())
        store = MemoryResponseStore(ttl=60, max_bytes=size * 3)
        for i in range(3):
            await store.put(record(f"r{i}"))
        await store.get("key:a", "r0")  # used: r1 is now the least recent
        await store.put(record("r3"))
        assert len(store) == 3
        assert store.size <= size * 3
        assert await store.get("key:a", "r1") is None
        assert await store.get("key:a", "r0") is not None
        # A record larger than the whole store is not kept (nor does it empty the store).
        await store.put(record("huge", text="y" * size * 4))
        assert await store.get("key:a", "huge") is None
        assert len(store) == 3

    async def test_expiry_refreshed_by_reading_the_conversation(self):
        clock = Clock()
        store = MemoryResponseStore(ttl=100, max_bytes=10**6, clock=clock)
        await store.put(record("r1"))
        await store.put(record("r2", "r1"))
        clock.now += 60
        assert len(await store.chain("key:a", "r2")) == 2  # refreshes both links
        clock.now += 60
        assert len(await store.chain("key:a", "r2")) == 2
        clock.now += 101
        assert await store.get("key:a", "r1") is None
        await store.put(record("r3"))
        assert len(store) == 1  # the expired ones were swept


class TestRedisStore:
    @pytest.fixture
    async def store(self, redis_server: RedisServer) -> Any:
        store = RedisResponseStore(redis_server.url, prefix="t:", ttl=100)
        yield store
        await store.close()

    async def test_records_chains_items_and_owners(self, store, redis_server):
        for rid, prev in (("r1", None), ("r2", "r1"), ("r3", "r2")):
            await store.put(record(rid, prev))
        assert [r.id for r in await store.chain("key:a", "r3")] == ["r1", "r2", "r3"]
        assert (await store.get("key:a", "r2")).response["previous_response_id"] == "r1"
        assert (await store.find_item("key:a", "msg_in_r3"))["type"] == "message"
        assert await store.get("key:b", "r2") is None
        assert await store.find_item("key:b", "msg_in_r3") is None
        client = Redis.from_url(redis_server.url)
        try:
            ttl = await client.pttl("t:resp:{key:a}:r1")
            assert 0 < ttl <= 100_000
            await client.pexpire("t:resp:{key:a}:r1", 5000)
            await store.chain("key:a", "r3")  # reading the conversation refreshes every link
            assert await client.pttl("t:resp:{key:a}:r1") > 5000
        finally:
            await client.aclose()
        assert (await store.delete("key:a", "r2")).id == "r2"
        assert await store.delete("key:a", "r2") is None
        with pytest.raises(BrokenChain) as err:
            await store.chain("key:a", "r3")
        assert err.value.missing == "r2"

    async def test_redis_down_is_store_unavailable(self, store, redis_server):
        await store.put(record("r1"))
        redis_server.stop()
        with pytest.raises(StoreUnavailable):
            await store.get("key:a", "r1")
        redis_server.start()
        assert await store.get("key:a", "r1") is None  # a fresh Redis: nothing kept
        await store.put(record("r1"))
        assert (await store.get("key:a", "r1")).id == "r1"


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Proxies]:
    group = Proxies(tmp_path)
    yield group
    group.stop_all()


async def test_two_proxies_continue_each_others_conversations(redis_server: RedisServer,
                                                              replicas: Proxies):
    urls = [await replicas.start(redis_server.url), await replicas.start(redis_server.url)]
    a, b = (openai.AsyncOpenAI(base_url=url + "/v1", api_key=TOKEN, max_retries=0)
            for url in urls)
    try:
        first = await a.responses.create(model="limited", input="My name is Ann")
        second = await b.responses.create(model="limited", input="What is my name?",
                                          previous_response_id=first.id)
        assert second.previous_response_id == first.id
        # B sent the whole conversation upstream: more input than the question alone.
        assert second.usage.input_tokens > first.usage.input_tokens
        async with b.responses.stream(model="limited", input="Again",
                                      previous_response_id=second.id) as stream:
            third = await stream.get_final_response()
        assert (await a.responses.retrieve(third.id)).output_text == third.output_text
        items = (await a.responses.input_items.list(second.id)).data
        assert [i.content[0].text for i in items] == ["What is my name?"]
        await a.responses.delete(second.id)
        with pytest.raises(openai.NotFoundError):
            await b.responses.retrieve(second.id)
        with pytest.raises(openai.BadRequestError):
            await b.responses.create(model="limited", input="x", previous_response_id=third.id)
    finally:
        await a.close()
        await b.close()
