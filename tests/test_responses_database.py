"""Stored responses in the usage database: the store on SQLite and on a real PostgreSQL, which
store an app chooses, a conversation continued across a restart (the SQLite file beside the
config), two proxies on one PostgreSQL continuing each other's conversations, and a database
outage that fails no unrelated request."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest

from aiproxy.frontdoor.responses import BrokenChain, MemoryResponseStore, StoreUnavailable
from aiproxy.frontdoor.responses.database_store import DatabaseResponseStore
from aiproxy.frontdoor.responses.redis_store import RedisResponseStore
from aiproxy.frontdoor.responses.store import make_store
from aiproxy.http.responses import RESPONSE_STORE
from aiproxy.http.usage import LEDGER
from aiproxy.usage.postgres import PostgresStore
from aiproxy.usage.sqlite import SQLiteStore
from aiproxy.usage.store import UsageStore
from tests.conftest import TOKEN, make_settings
from tests.postgres_fixture import PostgresServer, fresh_database
from tests.test_cli import free_port, stop_procs, wait_ready
from tests.test_responses_store import Clock, record

KEY_A = "resp-key-a-0123456789"
KEY_B = "resp-key-b-0123456789"
CONFIG = {"models": [{"name": "m", "provider": "mock"}],
          "keys": [{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_B}]}


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path,
                   postgres_server: PostgresServer) -> AsyncIterator[UsageStore]:
    """The ledger's own store, opened (migrated) as the ledger opens it."""
    store: UsageStore
    if request.param == "sqlite":
        store = SQLiteStore(str(tmp_path / "usage.db"))
    else:
        store = PostgresStore(await fresh_database(postgres_server))
    await store.open()
    yield store
    await store.close()


async def count(database: UsageStore, table: str) -> int:
    return int((await database.fetch(f"SELECT count(*) FROM {table}", []))[0][0])  # noqa: S608


class TestDatabaseStore:
    async def test_a_chain_reads_oldest_first_and_breaks_where_a_link_is_gone(self, database):
        store = DatabaseResponseStore(database, ttl=60, max_bytes=10**6)
        for rid, prev in (("r1", None), ("r2", "r1"), ("r3", "r2")):
            await store.put(record(rid, prev))
        chain = await store.chain("key:a", "r3")
        assert [r.id for r in chain] == ["r1", "r2", "r3"]
        assert chain[0].origin == "m" and chain[1].previous == "r1"
        assert chain[2].input[0]["content"][0]["text"] == "x"
        assert (await store.find_item("key:a", "msg_out_r2"))["content"][0]["text"] == "x"
        assert (await store.delete("key:a", "r2")).id == "r2"
        assert await store.delete("key:a", "r2") is None
        with pytest.raises(BrokenChain) as err:
            await store.chain("key:a", "r3")
        assert err.value.missing == "r2"
        with pytest.raises(BrokenChain) as err:
            await store.chain("key:a", "nope")
        assert err.value.missing == "nope"
        # Its item index went with it.
        assert await store.find_item("key:a", "msg_out_r2") is None
        assert await count(database, "stored_response_items") == 4

    async def test_owners_are_apart(self, database):
        store = DatabaseResponseStore(database, ttl=60, max_bytes=10**6)
        await store.put(record("r1"))
        assert await store.get("key:b", "r1") is None
        assert await store.delete("key:b", "r1") is None
        assert await store.find_item("key:b", "msg_in_r1") is None
        with pytest.raises(BrokenChain):
            await store.chain("key:b", "r1")
        # The same id under another owner is another response.
        await store.put(record("r1", owner="key:b", text="b's"))
        assert (await store.get("key:a", "r1")).input[0]["content"][0]["text"] == "x"
        assert (await store.get("key:b", "r1")).input[0]["content"][0]["text"] == "b's"

    async def test_expiry_refreshed_by_reading_the_conversation_then_purged(self, database):
        clock = Clock()
        store = DatabaseResponseStore(database, ttl=100, max_bytes=10**6, clock=clock)
        await store.put(record("r1"))
        await store.put(record("r2", "r1"))
        clock.now += 60
        assert len(await store.chain("key:a", "r2")) == 2  # refreshes both links
        clock.now += 60
        assert len(await store.chain("key:a", "r2")) == 2
        assert await store.find_item("key:a", "msg_in_r1") is not None
        clock.now += 101
        assert await store.get("key:a", "r1") is None  # expired: gone before any purge
        assert await store.find_item("key:a", "msg_in_r1") is None
        assert await count(database, "stored_responses") == 2
        await store.purge()
        assert await count(database, "stored_responses") == 0
        assert await count(database, "stored_response_items") == 0

    async def test_a_read_within_the_slack_writes_nothing(self, database):
        clock = Clock()
        store = DatabaseResponseStore(database, ttl=1000, max_bytes=10**6, clock=clock)
        await store.put(record("r1"))
        expiry = "SELECT expires_at FROM stored_responses WHERE id = 'r1'"
        first = (await database.fetch(expiry, []))[0][0]
        clock.now += 5  # less than the slack (ttl / 100 = 10 s)
        await store.get("key:a", "r1")
        assert (await database.fetch(expiry, []))[0][0] == first
        clock.now += 20
        await store.get("key:a", "r1")
        assert (await database.fetch(expiry, []))[0][0] == pytest.approx(first + 25)

    async def test_bounded_by_bytes_least_recently_used_first(self, database):
        clock = Clock()
        size = len(record("r0").encode())
        store = DatabaseResponseStore(database, ttl=100, max_bytes=size * 3, clock=clock)
        for i in range(3):
            await store.put(record(f"r{i}"))
            clock.now += 5
        await store.get("key:a", "r0")  # used: r1 is now the least recent
        clock.now += 5
        await store.put(record("r3"))
        await store.purge()
        assert await count(database, "stored_responses") == 3
        assert await store.get("key:a", "r1") is None
        assert all([await store.get("key:a", rid) for rid in ("r0", "r2", "r3")])
        # A record larger than the whole store is not kept (nor does it empty the store).
        await store.put(record("huge", text="y" * size * 4))
        assert await store.get("key:a", "huge") is None
        await store.purge()
        assert await count(database, "stored_responses") == 3

    async def test_stored_again_replaces_itself_and_its_items(self, database):
        store = DatabaseResponseStore(database, ttl=60, max_bytes=10**6)
        await store.put(record("r1", text="old"))
        again = record("r1", text="new")
        again.input[0]["id"] = "msg_in_again"
        # An id that cannot be an id is stored with its response but never indexed.
        again.input.append({"id": "x" * 5000, "type": "message", "role": "user",
                            "content": [{"type": "input_text", "text": "long id"}]})
        await store.put(again)
        assert (await store.get("key:a", "r1")).input[1]["content"][0]["text"] == "long id"
        assert await store.find_item("key:a", "msg_in_r1") is None
        assert (await store.find_item("key:a", "msg_in_again"))["content"][0]["text"] == "new"
        assert await store.find_item("key:a", "x" * 5000) is None
        assert await count(database, "stored_response_items") == 2

    async def test_the_tables_are_the_ledgers_second_migration(self, database):
        versions = await database.fetch("SELECT version FROM aiproxy_schema_migrations "
                                        "ORDER BY version", [])
        assert [int(v[0]) for v in versions] == [1, 2, 3]
        await database.open()  # a second start migrates nothing again
        assert len(await database.fetch("SELECT version FROM aiproxy_schema_migrations",
                                        [])) == 3


async def test_workers_on_one_sqlite_file_continue_each_others_conversations(tmp_path):
    """--workers N: each process has its own connections to the one file."""
    databases = [SQLiteStore(str(tmp_path / "usage.db")) for _ in range(2)]
    for database in databases:
        await database.open()
    stores = [DatabaseResponseStore(d, ttl=60, max_bytes=10**7) for d in databases]
    try:
        previous: str | None = None
        for turn in range(6):  # one conversation, its turns stored by either process
            await stores[turn % 2].put(record(f"t{turn}", previous))
            previous = f"t{turn}"
        # Many at once from both: the write lock is taken in turn, nothing is lost.
        await asyncio.gather(*(stores[i % 2].put(record(f"c{i}", "t5")) for i in range(40)))
        for store in stores:
            assert [r.id for r in await store.chain("key:a", "t5")] == [
                f"t{i}" for i in range(6)]
            assert len(await store.chain("key:a", "c39")) == 7
        assert await count(databases[0], "stored_responses") == 46
    finally:
        for database in databases:
            await database.close()


async def test_the_database_down_is_store_unavailable_without_its_address(own_postgres):
    database = PostgresStore(own_postgres.url, timeout=2.0)
    await database.open()
    store = DatabaseResponseStore(database, ttl=60, max_bytes=10**6, timeout=3.0)
    try:
        await store.put(record("r1"))
        own_postgres.stop()
        for call in (store.get("key:a", "r1"), store.chain("key:a", "r1"),
                     store.put(record("r2")), store.delete("key:a", "r1")):
            with pytest.raises(StoreUnavailable) as err:
                await call
            assert str(own_postgres.port) not in str(err.value)
            assert "127.0.0.1" not in str(err.value)
        own_postgres.start()
        assert (await store.get("key:a", "r1")).id == "r1"  # the pool reconnects by itself
    finally:
        await store.close()
        await database.close()


class TestChoice:
    async def test_redis_then_the_usage_database_then_memory(self, tmp_path):
        database = SQLiteStore(str(tmp_path / "u.db"))
        redis = make_store("redis://127.0.0.1:1", prefix="t:", ttl=60, max_bytes=100,
                           database=database)
        assert isinstance(redis, RedisResponseStore)
        await redis.close()
        chosen = make_store(None, prefix="t:", ttl=60, max_bytes=100, database=database)
        assert isinstance(chosen, DatabaseResponseStore) and chosen.database is database
        assert (chosen.ttl, chosen.max_bytes) == (60, 100)
        assert isinstance(make_store(None, prefix="t:", ttl=60, max_bytes=100),
                          MemoryResponseStore)

    async def test_an_app_with_a_database_keeps_responses_in_its_ledger(self, start_proxy,
                                                                        tmp_path):
        settings = make_settings(database_url=f"sqlite:///{tmp_path / 'usage.db'}")
        proxy = await start_proxy(CONFIG, settings=settings)
        store = proxy.app[RESPONSE_STORE]
        assert isinstance(store, DatabaseResponseStore)
        assert store.database is proxy.app[LEDGER].store
        first = await proxy.client.responses.create(model="m", input="kept on disk")
        with sqlite3.connect(tmp_path / "usage.db") as db:
            assert db.execute("SELECT owner FROM stored_responses WHERE id = ?",
                              (first.id,)).fetchone() == ("token",)
        # Without a database (an embedding app's ledger is in memory), memory.
        bare = await start_proxy(CONFIG)
        assert isinstance(bare.app[RESPONSE_STORE], MemoryResponseStore)


class Proxies:
    """aiproxy processes on one config (the default SQLite ledger sits beside it)."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "provider-config.yaml"
        self.config.write_text(
            "models:\n  - name: m\n    provider: mock\n"
            f"keys:\n  - name: a\n    key: {KEY_A}\n  - name: b\n    key: {KEY_B}\n")
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self, **env: str) -> str:
        port = free_port()
        full = {k: v for k, v in os.environ.items()
                if k not in ("AUTH_TOKEN", "REDIS_URL", "DATABASE_URL")}
        full.update(AUTH_TOKEN=TOKEN, LOG_LEVEL="WARNING", **env)
        proc = subprocess.Popen([sys.executable, "-m", "aiproxy", "--config", str(self.config),
                                 "--addr", f"127.0.0.1:{port}"], env=full,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url, proc)
        return url

    def stop_all(self) -> None:
        stop_procs(self.procs)


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Proxies]:
    group = Proxies(tmp_path)
    yield group
    group.stop_all()


def clients(url: str) -> tuple[openai.AsyncOpenAI, openai.AsyncOpenAI, openai.AsyncOpenAI]:
    """Key a's, key b's and the AUTH_TOKEN's client."""
    a, b, admin = (openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
                   for key in (KEY_A, KEY_B, TOKEN))
    return a, b, admin


async def assert_only_a_sees(url: str, response_id: str) -> None:
    _, b, admin = clients(url)
    try:
        for other in (b, admin):
            with pytest.raises(openai.NotFoundError):
                await other.responses.retrieve(response_id)
            with pytest.raises(openai.NotFoundError):
                await other.responses.input_items.list(response_id)
            with pytest.raises(openai.BadRequestError) as err:
                await other.responses.create(model="m", input="x",
                                             previous_response_id=response_id)
            assert err.value.code == "previous_response_not_found"
            with pytest.raises(openai.NotFoundError):
                await other.responses.delete(response_id)
    finally:
        await b.close()
        await admin.close()


async def test_a_conversation_continues_across_a_restart_on_sqlite(proxies: Proxies,
                                                                   tmp_path: Path):
    url = await proxies.start()  # no DATABASE_URL, no REDIS_URL: the defaults
    a, _, _ = clients(url)
    first = await a.responses.create(model="m", input="My name is Ann")
    await a.close()
    proxies.stop_all()
    assert (tmp_path / "aiproxy-usage.db").is_file()  # beside the config, as the ledger

    url = await proxies.start()
    a, _, _ = clients(url)
    try:
        second = await a.responses.create(model="m", input="What is my name?",
                                          previous_response_id=first.id)
        assert second.previous_response_id == first.id
        # The restarted proxy sent the whole conversation upstream.
        assert second.usage.input_tokens > first.usage.input_tokens
        async with a.responses.stream(model="m", input="Again",
                                      previous_response_id=second.id) as stream:
            third = await stream.get_final_response()
        assert third.previous_response_id == second.id
        assert (await a.responses.retrieve(first.id)).output_text == first.output_text
        items = (await a.responses.input_items.list(second.id)).data
        assert [i.content[0].text for i in items] == ["What is my name?"]
        await assert_only_a_sees(url, first.id)
        await a.responses.delete(second.id)
        with pytest.raises(openai.BadRequestError):
            await a.responses.create(model="m", input="x", previous_response_id=third.id)
    finally:
        await a.close()


async def test_two_proxies_on_one_postgresql_continue_each_others_conversations(
        proxies: Proxies, postgres_server: PostgresServer):
    database = await fresh_database(postgres_server)
    urls = [await proxies.start(DATABASE_URL=database),
            await proxies.start(DATABASE_URL=database)]
    (a1, _, _), (a2, _, _) = clients(urls[0]), clients(urls[1])
    try:
        first = await a1.responses.create(model="m", input="My name is Ann")
        second = await a2.responses.create(model="m", input="What is my name?",
                                           previous_response_id=first.id)
        assert second.previous_response_id == first.id
        assert second.usage.input_tokens > first.usage.input_tokens
        async with a2.responses.stream(model="m", input="Again",
                                       previous_response_id=second.id) as stream:
            third = await stream.get_final_response()
        assert (await a1.responses.retrieve(third.id)).output_text == third.output_text
        fourth = await a1.responses.create(model="m", input="And now?",
                                           previous_response_id=third.id)
        assert fourth.usage.input_tokens > third.usage.input_tokens
        await assert_only_a_sees(urls[1], first.id)
        await a1.responses.delete(second.id)
        with pytest.raises(openai.NotFoundError):
            await a2.responses.retrieve(second.id)
        with pytest.raises(openai.BadRequestError):
            await a2.responses.create(model="m", input="x", previous_response_id=fourth.id)
    finally:
        await a1.close()
        await a2.close()


async def test_an_outage_fails_only_what_needs_the_database(start_proxy, own_postgres):
    proxy = await start_proxy(CONFIG, settings=make_settings(database_url=own_postgres.url))
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=KEY_A, max_retries=0)
    try:
        first = await client.responses.create(model="m", input="Remember this")
        own_postgres.stop()
        started = time.monotonic()
        # Storing fails: the answer goes out anyway, and the failure is counted.
        unstored = await client.responses.create(model="m", input="Still answered")
        assert unstored.output_text and time.monotonic() - started < 5
        assert (await client.responses.create(model="m", input="Not kept",
                                               store=False)).output_text
        assert (await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}])).choices
        # What needs a stored response says so: 503, in the OpenAI envelope, no address.
        with pytest.raises(openai.InternalServerError) as err:
            await client.responses.create(model="m", input="Go on",
                                          previous_response_id=first.id)
        assert err.value.status_code == 503 and err.value.code == "store_unavailable"
        assert "127.0.0.1" not in err.value.message
        assert str(own_postgres.port) not in err.value.message
        assert err.value.response.headers["Retry-After"] == "1"
        for call in (client.responses.retrieve(first.id),
                     client.responses.input_items.list(first.id),
                     client.responses.delete(first.id)):
            with pytest.raises(openai.InternalServerError) as err:
                await call
            assert err.value.status_code == 503
        async with proxy.http.get(proxy.url("/metrics"), headers=proxy.auth) as resp:
            text = await resp.text()
        assert 'aiproxy_responses_store_errors_total{operation="store"} 1.0' in text
        assert 'aiproxy_responses_store_errors_total{operation="read"} 3.0' in text
        assert 'aiproxy_responses_store_errors_total{operation="delete"} 1.0' in text
        own_postgres.start()
        second = await client.responses.create(model="m", input="Go on",
                                               previous_response_id=first.id)
        assert second.previous_response_id == first.id
        with pytest.raises(openai.BadRequestError):  # it was never stored
            await client.responses.create(model="m", input="x",
                                          previous_response_id=unstored.id)
    finally:
        await client.close()
