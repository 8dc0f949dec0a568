"""The ledger on a real PostgreSQL server: migrations, every query the reports and the
dashboard run, and an outage under load that loses no record and fails no request."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import openai
import pytest

from aiproxy.http.usage import LEDGER
from aiproxy.usage.postgres import PostgresStore, numbered
from aiproxy.usage.query import UsageQuery, recent, summary, traffic, windows
from aiproxy.usage.store import Write
from tests.conftest import make_settings

MSG = [{"role": "user", "content": "hi"}]
KEY = "pg-team-key-0123456789"


def test_placeholders_are_numbered():
    assert numbered("a = ? AND b IN (?, ?)") == "a = $1 AND b IN ($2, $3)"


async def test_replicas_starting_together_migrate_once(postgres_url):
    stores = [PostgresStore(postgres_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    again = PostgresStore(postgres_url)
    await again.open()
    conn = await asyncpg.connect(postgres_url)
    try:
        versions = [r[0] for r in await conn.fetch(
            "SELECT version FROM aiproxy_schema_migrations")]
        columns = {r[0] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'usage_records'")}
    finally:
        await conn.close()
    assert versions == [1, 2, 3]  # the ledger's tables, the stored responses, the write ids
    assert {"request_id", "key_name", "cost", "tokens_cached", "latency_bin"} <= columns
    for store in [*stores, again]:
        await store.close()


async def tally(url: str) -> tuple[int, int, int, int]:
    """What the database holds: records, distinct request ids, the team key's daily tokens
    counter, and the tokens the records add up to."""
    conn = await asyncpg.connect(url)
    try:
        count = await conn.fetchval("SELECT count(*) FROM usage_records")
        ids = await conn.fetchval("SELECT count(DISTINCT request_id) FROM usage_records")
        tokens = await conn.fetchval(
            "SELECT tokens FROM budget_spend WHERE scope = 'key:team' AND period LIKE 'd:%'")
        served = await conn.fetchval("SELECT sum(tokens_in + tokens_out) FROM usage_records")
    finally:
        await conn.close()
    return count, ids, tokens, served


class CutAfterCommit:
    """A TCP relay in front of PostgreSQL that, once armed, lets the next COMMIT of a
    transaction that inserted usage records through, and cuts the connection when its reply
    comes back: the transaction landed, its answer never reached the client (what a server
    killed mid-reply does, here on cue)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.armed = False
        self.cuts = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"postgresql://postgres@127.0.0.1:{self.server.sockets[0].getsockname()[1]}/postgres"

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.port)
        committing = asyncio.Event()
        recording = False  # this transaction inserted usage records

        async def up() -> None:
            nonlocal recording
            while data := await client_r.read(65536):
                # The first time a connection runs it, a statement's text is in its Parse
                # message; asyncpg sends COMMIT as a simple query: 'Q', its length, "COMMIT;".
                recording = recording or b"INSERT INTO usage_records" in data
                if b"COMMIT;" in data:
                    if self.armed and recording:
                        self.armed = False
                        committing.set()
                    recording = False
                server_w.write(data)
                await server_w.drain()

        async def down() -> None:
            while data := await server_r.read(65536):
                if committing.is_set():  # the COMMIT's reply: dropped, and the line cut
                    self.cuts += 1
                    break
                client_w.write(data)
                await client_w.drain()

        pumps = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for w in (client_w, server_w):
                w.close()


async def test_a_commit_whose_answer_was_lost_lands_once(start_proxy, own_postgres):
    relay = CutAfterCommit(own_postgres.port)
    url = await relay.start()
    settings = make_settings(database_url=url, usage_flush_interval=3600.0)
    proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}],
                               "keys": [{"name": "team", "key": KEY}]}, settings=settings)
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    await asyncio.gather(*(client.chat.completions.create(model="m", messages=MSG)
                           for _ in range(25)))
    ledger = proxy.app[LEDGER]
    relay.armed = True
    assert not await ledger.flush()  # it committed; the writer heard nothing back
    assert relay.cuts == 1 and len(ledger.rows) == 25 and ledger.last_error is not None
    await client.chat.completions.create(model="m", messages=MSG)
    assert await ledger.flush()  # the same write again, then the next one
    await client.close()
    assert not ledger.rows and ledger.last_error is None
    count, ids, tokens, served = await tally(own_postgres.url)
    await relay.close()
    assert count == ids == 26  # not 51: the lost answer's batch was not written twice
    assert tokens == served > 0


async def test_a_charge_sent_twice_lands_once(postgres_url):
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        charge = Write("w-1", time.time(), cells={("key:a", "d:x"): (0.25, 10),
                                                  ("key:a", "m:x"): (0.25, 10)})
        for _ in range(2):
            await store.charge(charge)
        assert charge.sent
        await store.write([charge, Write("w-2", time.time(), cells={("key:a", "d:x"): (1.0, 1)})])
        assert await store.spent([("key:a", "d:x"), ("key:a", "m:x")]) == {
            ("key:a", "d:x"): (1.25, 11), ("key:a", "m:x"): (0.25, 10)}
        await store.purge(time.time() + 1)  # ids forgotten: the same write counts anew
        await store.charge(charge)
        assert (await store.spent([("key:a", "m:x")]))[("key:a", "m:x")] == (0.5, 20)
    finally:
        await store.close()


async def test_records_and_every_query_on_postgres(start_proxy, postgres_url):
    proxy = await start_proxy({"models": [{"name": "gpt-4o", "provider": "mock"}],
                               "keys": [{"name": "team", "key": KEY}]},
                              settings=make_settings(database_url=postgres_url))
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    for _ in range(4):
        await client.chat.completions.create(model="gpt-4o", messages=MSG)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=MSG)
    await client.close()
    ledger = proxy.app[LEDGER]
    assert ledger.store.dialect == "postgresql"
    assert await ledger.flush()
    now = time.time()
    answer = await summary(ledger.store, UsageQuery(now - 3600, now + 1, 60.0, ("model",),
                                                    {"key": "team"}))
    by_model = {r["model"]: r for r in answer["totals"]}
    assert by_model["gpt-4o"]["requests"] == 4 and by_model[None]["errors"] == 1
    assert sum(r["requests"] for r in answer["series"]) == 5
    assert by_model["gpt-4o"]["cost"] > 0  # the mock's tokens at gpt-4o's default price
    live = await traffic(ledger.store, now - 3600, now + 1, 60.0)
    assert sum(r["requests"] for r in live) == 5 and live[-1]["p50_ms"] is not None
    last = await recent(ledger.store, 3)
    assert [r["status"] for r in last] == [404, 200, 200]
    assert last[1]["tried"] == ["gpt-4o"] and last[1]["key"] == "team"
    seen = await windows(ledger.store, now + 1)
    assert seen["gpt-4o"]["requests_minute"] == 4


async def test_an_outage_under_load_loses_no_record_and_fails_no_request(start_proxy,
                                                                          own_postgres):
    settings = make_settings(database_url=own_postgres.url, usage_flush_interval=0.05)
    proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}],
                               "keys": [{"name": "team", "key": KEY,
                                         "budget": {"daily_tokens": 10**9}}]},
                              settings=settings)
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)

    async def burst(n: int) -> None:
        answers = await asyncio.gather(*(client.chat.completions.create(
            model="m", messages=MSG) for _ in range(n)))
        assert all(a.choices[0].message.content for a in answers)

    await burst(40)
    own_postgres.stop()  # a crash: connections cut mid-use
    await burst(120)  # budgets read this process's view meanwhile; nothing is refused
    ledger = proxy.app[LEDGER]
    deadline = time.monotonic() + 10
    while ledger.last_error is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # the writer (or a budget read) meets the outage
    assert ledger.last_error is not None and len(ledger.rows) >= 120
    own_postgres.start()
    await burst(40)
    deadline = time.monotonic() + 30
    while (ledger.rows or ledger.last_error) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    await client.close()
    assert not ledger.rows and ledger.dropped == 0
    count, ids, tokens, served = await tally(own_postgres.url)
    assert count == ids == 200  # every record once: none lost, none written twice
    async with proxy.http.get(proxy.url("/metrics"), headers=proxy.auth) as resp:
        text = await resp.text()
    assert 'aiproxy_usage_write_errors_total{operation="write"}' in text
    assert tokens == served > 0  # the budget's counter: every charge once, outage or not
