"""The usage ledger end to end: one priced record per request on every endpoint, failed ones
included; cost in the access line and /metrics; /admin/usage; a database that goes away."""

from __future__ import annotations

import asyncio
import csv
import sqlite3
import time

import attrs
import openai
import orjson
import pytest
import structlog

from aiproxy.http.usage import LEDGER
from aiproxy.usage import default_price
from aiproxy.usage import ledger as ledger_module
from aiproxy.usage.sqlite import SQLiteStore
from aiproxy.usage.store import StoreUnavailable, Write
from tests.conftest import TOKEN, make_settings, openai_model

KEY = "team-a-key-0123456789"
OTHER = "team-b-key-0123456789"
MSG = [{"role": "user", "content": "hi"}]
# The fake upstream reports 7 prompt and 5 completion tokens a chat, 3 an embedding call.
GPT4O = (7 * 2.50 + 5 * 10.0) / 1e6  # gpt-4o's default price


def keys() -> list[dict]:
    return [{"name": "team-a", "key": KEY}, {"name": "team-b", "key": OTHER}]


async def rows(proxy) -> list[dict]:
    """The ledger's rows as the operator's SQL would see them."""
    ledger = proxy.app[LEDGER]
    assert await ledger.flush()
    names = ("request_id", "key_name", "route", "requested", "model", "provider", "status",
             "error_kind", "stream", "tokens_in", "tokens_out", "tokens_cached", "ttft_ms",
             "total_ms", "attempts", "tried", "cost")
    found = await ledger.store.fetch(
        f"SELECT {', '.join(names)} FROM usage_records ORDER BY id", [])  # noqa: S608
    return [dict(zip(names, r, strict=True)) for r in found]


async def report(proxy, **params) -> dict:
    async with proxy.http.get(proxy.url("/admin/usage"), headers=proxy.auth,
                              params=params) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def client_for(proxy, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)


class TestPrices:
    def test_defaults_follow_snapshots_and_router_prefixes(self):
        assert default_price("gpt-4o").input == 2.50
        assert default_price("gpt-4o-2024-08-06") == default_price("gpt-4o")
        assert default_price("openai/gpt-4o-mini").output == 0.60
        assert default_price("claude-3-5-haiku-20241022").input == 0.80
        assert default_price("claude-3-5-sonnet@20240620").output == 15.0
        assert default_price("gemini-1.5-pro-002").input == 1.25
        assert default_price("gpt-4-0613").input == 30.0
        assert default_price("my-local-llama") is None


class TestRecords:
    async def test_chat_plain_and_stream(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy({"models": [openai_model("openai/gpt-4o", url)],
                                   "keys": keys()})
        client = client_for(proxy, KEY)
        answer = await client.chat.completions.create(model="openai/gpt-4o", messages=MSG)
        assert answer.usage.total_tokens == 12
        stream = await client.chat.completions.create(
            model="openai/gpt-4o", messages=MSG, stream=True,
            stream_options={"include_usage": True})
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text.startswith("reply from gpt-4o")
        await client.close()
        plain, streamed = await rows(proxy)
        assert plain["key_name"] == streamed["key_name"] == "team-a"
        assert plain["route"] == "/v1/chat/completions"
        assert plain["requested"] == plain["model"] == "openai/gpt-4o"
        assert plain["provider"] == "openai"
        assert (plain["status"], plain["tokens_in"], plain["tokens_out"]) == (200, 7, 5)
        assert plain["attempts"] == 1 and orjson.loads(plain["tried"]) == ["openai/gpt-4o"]
        assert plain["cost"] == pytest.approx(GPT4O)
        assert not plain["stream"] and plain["total_ms"] > 0
        assert streamed["stream"] and streamed["ttft_ms"] is not None
        assert (streamed["tokens_in"], streamed["tokens_out"]) == (7, 5)
        assert streamed["cost"] == pytest.approx(GPT4O)
        assert len(fake.seen) == 2

    async def test_embeddings_and_images(self, start_proxy, fake_upstream):
        _, url = fake_upstream
        proxy = await start_proxy({"models": [
            openai_model("emb", url, upstream_model="text-embedding-3-small"),
            openai_model("img", url, serves=["images"], price={"image": 0.04})]})
        await proxy.client.embeddings.create(model="emb", input=["a", "b"])
        await proxy.client.images.generate(model="img", prompt="a cat")
        async with proxy.http.post(proxy.url("/image"), headers=proxy.auth,
                                   json={"model": "img", "prompt": "a dog"}) as resp:
            assert resp.status == 200
        emb, gen, legacy = await rows(proxy)
        assert (emb["route"], emb["tokens_in"]) == ("/v1/embeddings", 3)
        assert emb["cost"] == pytest.approx(3 * 0.02 / 1e6)
        assert gen["route"] == "/v1/images/generations" and gen["cost"] == pytest.approx(0.04)
        assert legacy["route"] == "/image" and legacy["cost"] == pytest.approx(0.04)
        assert emb["key_name"] is None  # AUTH_TOKEN

    async def test_failed_requests_are_recorded_and_cost_nothing(self, start_proxy,
                                                                 fake_upstream):
        fake, url = fake_upstream
        fake.defaults["broken"] = "500"
        proxy = await start_proxy({"models": [openai_model("broken", url),
                                              openai_model("gpt-4o", url)],
                                   "keys": [{"name": "narrow", "key": KEY,
                                             "models": ["gpt-4o"]}]})
        with pytest.raises(openai.InternalServerError):
            await proxy.client.chat.completions.create(model="broken", messages=MSG)
        with pytest.raises(openai.NotFoundError):
            await proxy.client.chat.completions.create(model="no-such", messages=MSG)
        narrow = client_for(proxy, KEY)
        with pytest.raises(openai.PermissionDeniedError):
            await narrow.chat.completions.create(model="broken", messages=MSG)
        await narrow.close()
        async with proxy.http.post(proxy.url("/v1/chat/completions"),
                                   headers={"Authorization": "Bearer wrong"}, json={}) as resp:
            assert resp.status == 401  # not usage: no key, nothing served
        async with proxy.http.get(proxy.url("/ping")) as resp:
            assert resp.status == 200
        failed, missing, denied = await rows(proxy)
        assert (failed["status"], failed["error_kind"], failed["model"]) == (
            502, "overloaded", None)
        assert orjson.loads(failed["tried"]) == ["broken"] * 3  # 1 + 2 retries
        assert failed["cost"] == 0 and failed["tokens_in"] is None
        assert (missing["status"], missing["requested"]) == (404, "no-such")
        assert (denied["status"], denied["key_name"]) == (403, "narrow")
        totals = (await report(proxy))["total"]
        assert (totals["requests"], totals["errors"], totals["cost"]) == (3, 3, 0)

    async def test_configured_price_wins_and_unpriced_models_are_counted(
            self, start_proxy, fake_upstream):
        _, url = fake_upstream
        proxy = await start_proxy({"models": [
            openai_model("gpt-4o", url, price={"input": 1000, "output": 2000}),
            openai_model("mystery", url)]})
        for model in ("gpt-4o", "mystery"):
            await proxy.client.chat.completions.create(model=model, messages=MSG)
        answer = await report(proxy, group_by="model", bucket="none")
        by_model = {r["model"]: r for r in answer["totals"]}
        assert by_model["gpt-4o"]["cost"] == pytest.approx((7 * 1000 + 5 * 2000) / 1e6)
        assert by_model["mystery"]["cost"] == 0 and by_model["mystery"]["unpriced"] == 1
        assert "series" not in answer

    async def test_cost_in_the_access_line_and_metrics(self, start_proxy, fake_upstream):
        _, url = fake_upstream
        proxy = await start_proxy({"models": [openai_model("openai/gpt-4o", url)],
                                   "keys": keys()})
        client = client_for(proxy, OTHER)
        with structlog.testing.capture_logs() as logs:
            await client.chat.completions.create(model="openai/gpt-4o", messages=MSG)
            async with proxy.http.get(proxy.url("/ping")):
                pass
        await client.close()
        chat, ping = [line for line in logs if line["event"] == "request"]
        assert chat["cost_usd"] == pytest.approx(GPT4O)
        assert ping["cost_usd"] is None
        async with proxy.http.get(proxy.url("/metrics"), headers=proxy.auth) as resp:
            text = await resp.text()
        line = next(x for x in text.splitlines()
                    if x.startswith("aiproxy_cost_usd_total{") and 'key="team-b"' in x)
        assert float(line.rsplit(" ", 1)[1]) == pytest.approx(GPT4O)
        assert "aiproxy_usage_records_written_total" in text


class TestAdminUsage:
    async def test_totals_equal_what_the_fakes_served(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy({"models": [openai_model("openai/gpt-4o", url),
                                              openai_model("openai/gpt-4o-mini", url),
                                              openai_model("emb", url)], "keys": keys()})
        a, b = client_for(proxy, KEY), client_for(proxy, OTHER)
        calls = []
        for i in range(12):
            client = (a, b, proxy.client)[i % 3]
            model = ("openai/gpt-4o", "openai/gpt-4o-mini")[i % 2]
            if i % 4 == 3:
                stream = await client.chat.completions.create(
                    model=model, messages=MSG, stream=True,
                    stream_options={"include_usage": True})
                calls.append(stream)
                async for _ in stream:
                    pass
            else:
                calls.append(await client.chat.completions.create(model=model, messages=MSG))
        await a.embeddings.create(model="emb", input="x")
        await a.close()
        await b.close()
        answer = await report(proxy, group_by="model,key", bucket="1m")
        chats = [s for s in fake.seen if s.path.endswith("/chat/completions")]
        embeds = [s for s in fake.seen if s.path.endswith("/embeddings")]
        total = answer["total"]
        assert total["requests"] == len(chats) + len(embeds) == 13
        assert total["tokens_in"] == 7 * len(chats) + 3 * len(embeds)
        assert total["tokens_out"] == 5 * len(chats)
        prices = {"gpt-4o": (2.5, 10.0), "gpt-4o-mini": (0.15, 0.60)}
        expected = sum(7 * prices[s.model][0] + 5 * prices[s.model][1] for s in chats) / 1e6
        expected += 3 * len(embeds) * 0  # "emb" has no price: counted as unpriced
        assert total["cost"] == pytest.approx(expected)
        assert total["unpriced"] == 1
        groups = {(r["model"], r["key"]): r["requests"] for r in answer["totals"]}
        assert groups[("openai/gpt-4o", "team-a")] == 2
        assert groups[("emb", "team-a")] == 1
        assert sum(groups.values()) == 13
        # Series: one-minute buckets, aligned, adding up to the totals.
        assert sum(r["requests"] for r in answer["series"]) == 13
        bucket = answer["series"][0]["bucket"]
        assert bucket.endswith(":00Z")
        # The budget counters (spend per key, model, and key on a model, per day and month)
        # add up to the same, though no budget reads them yet: a budget a reload adds
        # starts from them.
        counters = await proxy.app[LEDGER].store.fetch(
            "SELECT scope, period, cost, tokens FROM budget_spend", [])
        by_scope: dict[str, dict[str, tuple[float, int]]] = {}
        for scope, period, cost, tokens in counters:
            by_scope.setdefault(scope, {})[period[:1]] = (cost, tokens)
        assert all(set(cells) == {"d", "m"} and cells["d"] == cells["m"]
                   for cells in by_scope.values())
        tokens = {scope: cells["d"][1] for scope, cells in by_scope.items()}
        mini, big = "model:openai/gpt-4o-mini", "model:openai/gpt-4o"
        assert tokens == {  # 12 tokens a chat, 3 the embedding (team-a's)
            "key:team-a": 51, "key:team-b": 48, big: 72, mini: 72, "model:emb": 3,
            f"key:team-a/{big}": 24, f"key:team-a/{mini}": 24, "key:team-a/model:emb": 3,
            f"key:team-b/{big}": 24, f"key:team-b/{mini}": 24}
        assert sum(cells["d"][0] for scope, cells in by_scope.items()
                   if scope.startswith("model:")) == pytest.approx(expected)

    async def test_csv_filters_and_ranges(self, start_proxy, fake_upstream):
        _, url = fake_upstream
        proxy = await start_proxy({"models": [openai_model("openai/gpt-4o", url)],
                                   "keys": keys()})
        client = client_for(proxy, KEY)
        for _ in range(3):
            await client.chat.completions.create(model="openai/gpt-4o", messages=MSG)
        await client.close()
        await proxy.client.chat.completions.create(model="openai/gpt-4o", messages=MSG)
        async with proxy.http.get(proxy.url("/admin/usage"), headers=proxy.auth, params={
                "group_by": "key", "bucket": "none", "format": "csv"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/csv")
            lines = (await resp.text()).splitlines()
        assert lines[0].split(",")[:3] == ["key", "requests", "errors"]
        table = {row["key"]: row for row in csv.DictReader(lines)}
        assert (table["team-a"]["requests"], table["team-a"]["tokens_in"]) == ("3", "21")
        assert float(table["team-a"]["cost"]) == pytest.approx(3 * GPT4O)
        assert table[""]["requests"] == "1"  # AUTH_TOKEN: no key name
        async with proxy.http.get(proxy.url("/admin/usage"), params={"group_by": "model"},
                                  headers={**proxy.auth, "Accept": "text/csv"}) as resp:
            assert (await resp.text()).startswith("bucket,model,requests")
        only_a = await report(proxy, key="team-a", bucket="none")
        assert only_a["total"]["requests"] == 3
        future = await report(proxy, start=str(time.time() + 60), end=str(time.time() + 120))
        assert future["total"]["requests"] == 0
        past = await report(proxy, start="2020-01-01", end="2020-01-02T00:00:00Z")
        assert past["total"]["requests"] == 0

    @pytest.mark.parametrize(("params", "param"), [
        ({"group_by": "prompt"}, "group_by"), ({"bucket": "soon"}, "bucket"),
        ({"start": "yesterday"}, "start"), ({"start": "2030-01-02", "end": "2030-01-01"},
                                            "start"),
        ({"range": "30d", "bucket": "1s"}, "bucket"), ({"format": "xml"}, "format"),
        ({"status": "ok"}, "status")])
    async def test_bad_parameters_are_400(self, start_proxy, params, param):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]})
        async with proxy.http.get(proxy.url("/admin/usage"), headers=proxy.auth,
                                  params=params) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == param

    async def test_only_the_admin_token(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}],
                                   "keys": keys()})
        async with proxy.http.get(proxy.url("/admin/usage"),
                                  headers={"Authorization": f"Bearer {KEY}"}) as resp:
            assert resp.status == 403
        async with proxy.http.get(proxy.url("/admin/usage")) as resp:
            assert resp.status == 401


class TestFileDatabase:
    async def test_records_survive_a_restart_and_migrate_once(self, start_proxy, tmp_path):
        path = tmp_path / "usage.db"
        settings = make_settings(database_url=f"sqlite:///{path}", usage_flush_interval=60.0)
        config = {"models": [{"name": "m", "provider": "mock"}]}
        first = await start_proxy(config, settings=settings)
        for _ in range(3):
            await first.client.chat.completions.create(model="m", messages=MSG)
        await first.server.close()  # cleanup flushes what the long interval still held
        second = await start_proxy(config, settings=settings)
        await second.client.chat.completions.create(model="m", messages=MSG)
        assert (await report(second))["total"]["requests"] == 4
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("SELECT version FROM aiproxy_schema_migrations").fetchall() == [
                (1,), (2,), (3,)]


class FlakyStore(SQLiteStore):
    """The real SQLite store, with an outage switch, an optional slowness, and answers lost
    after the commit (the database dies between COMMIT and its reply)."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.down = False
        self.delay = 0.0
        self.lose_answers = False

    async def write(self, writes):
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise StoreUnavailable("sqlite: disk I/O error (the test's outage)")
        await super().write(writes)
        if self.lose_answers:
            raise StoreUnavailable("sqlite: the connection was lost (the test's lost answer)")


async def flaky_proxy(start_proxy, *, budget: bool = False, **settings):
    config_keys = keys()
    if budget:  # charged at once, outside the batches
        config_keys[0]["budget"] = {"daily_tokens": 10**9}
    proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}],
                               "keys": config_keys},
                              settings=make_settings(usage_flush_interval=0.05, **settings))
    ledger = proxy.app[LEDGER]
    store = FlakyStore()
    await store.open()
    await ledger.store.close()
    ledger.store = store
    return proxy, ledger, store


async def metric(proxy, name: str) -> float:
    async with proxy.http.get(proxy.url("/metrics"), headers=proxy.auth) as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


class TestOutage:
    async def test_an_outage_under_load_loses_nothing_within_the_bound(self, start_proxy):
        proxy, ledger, store = await flaky_proxy(start_proxy)
        store.down = True
        client = client_for(proxy, KEY)
        answers = await asyncio.gather(*(client.chat.completions.create(
            model="m", messages=MSG) for _ in range(150)))
        assert len(answers) == 150  # not one request failed
        await asyncio.sleep(0.3)  # the writer tried, and failed
        assert await metric(proxy, "aiproxy_usage_write_errors_total") >= 1
        assert await metric(proxy, "aiproxy_usage_records_queued") == 150
        store.down = False
        deadline = time.monotonic() + 10
        while ledger.rows and time.monotonic() < deadline:  # noqa: ASYNC110 - polls the writer
            await asyncio.sleep(0.1)  # it backs off, then retries by itself
        await client.close()
        assert (await report(proxy))["total"]["requests"] == 150
        assert await metric(proxy, "aiproxy_usage_records_dropped_total") == 0

    async def test_writes_whose_answers_were_lost_land_once(self, start_proxy):
        proxy, ledger, store = await flaky_proxy(start_proxy, budget=True)
        store.lose_answers = True  # every commit lands, and its reply is lost
        client = client_for(proxy, KEY)
        answers = await asyncio.gather(*(client.chat.completions.create(
            model="m", messages=MSG) for _ in range(30)))
        assert len(answers) == 30
        deadline = time.monotonic() + 10
        writes = 'aiproxy_usage_write_errors_total{operation="write"}'
        while await metric(proxy, writes) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the writer sends the same batch again and again
        assert await metric(proxy, 'aiproxy_usage_write_errors_total{operation="charge"}') == 30
        day = time.strftime("d:%Y-%m-%d", time.gmtime())
        # Meanwhile admissions count what may have landed: more than was spent, never less.
        assert (await ledger.spent([("key:team-a", day)]))[("key:team-a", day)][1] >= 120
        store.lose_answers = False
        assert await ledger.flush()
        await client.close()
        (count, ids, served), = await store.fetch(
            "SELECT count(*), count(DISTINCT request_id), sum(tokens_in + tokens_out) "
            "FROM usage_records", [])
        assert count == ids == 30 and served == 30 * 4  # the mock: 1 token in, 3 out
        (tokens,), = await store.fetch("SELECT tokens FROM budget_spend WHERE scope = ? "
                                       "AND period = ?", ["key:team-a", day])
        assert tokens == served  # 30 charges, each sent twice or more, counted once
        assert (await ledger.spent([("key:team-a", day)]))[("key:team-a", day)][1] == served

    async def test_charges_in_doubt_past_the_bound_join_the_batches(self, start_proxy,
                                                                    monkeypatch):
        monkeypatch.setattr(ledger_module, "UNSURE_MAX", 5)
        proxy, ledger, store = await flaky_proxy(start_proxy, budget=True)
        store.lose_answers = True
        client = client_for(proxy, KEY)
        await asyncio.gather(*(client.chat.completions.create(model="m", messages=MSG)
                               for _ in range(30)))
        assert len(ledger._unsure) <= 5  # memory stays bounded however long it hangs
        # The writer may have taken up to 5 into its own write before it failed, and sends
        # that one again as it is, taking no more: at most 10 held, the rest folded.
        folded = await metric(
            proxy, 'aiproxy_usage_write_errors_total{operation="charge_in_doubt"}')
        assert 20 <= folded <= 25
        store.lose_answers = False
        assert await ledger.flush()
        await client.close()
        (count, served), = await store.fetch(
            "SELECT count(*), sum(tokens_in + tokens_out) FROM usage_records", [])
        day = time.strftime("d:%Y-%m-%d", time.gmtime())
        (tokens,), = await store.fetch("SELECT tokens FROM budget_spend WHERE scope = ? "
                                       "AND period = ?", ["key:team-a", day])
        assert count == 30  # the records are exact all the same
        assert tokens == served + folded * 4  # those folded in counted twice: never less

    async def test_past_the_bound_drops_are_counted_and_spend_is_kept(self, start_proxy):
        proxy, ledger, store = await flaky_proxy(start_proxy, usage_buffer=40)
        store.down = True
        client = client_for(proxy, KEY)
        for _ in range(60):
            await client.chat.completions.create(model="m", messages=MSG)
        await client.close()
        assert await metric(proxy, "aiproxy_usage_records_dropped_total") == 20
        store.down = False
        assert await ledger.flush()
        assert (await report(proxy))["total"]["requests"] == 40
        day = time.strftime("d:%Y-%m-%d", time.gmtime())
        spent = await ledger.spent([("key:team-a", day)])
        assert spent[("key:team-a", day)][1] > 0  # tokens of all 60: counters never drop

    async def test_a_slow_database_never_slows_a_request(self, start_proxy):
        proxy, ledger, store = await flaky_proxy(start_proxy)
        store.delay = 3.0
        await proxy.client.chat.completions.create(model="m", messages=MSG)
        await asyncio.sleep(0.1)  # the writer is now stuck in its slow write
        started = time.monotonic()
        for _ in range(20):
            await proxy.client.chat.completions.create(model="m", messages=MSG)
        assert time.monotonic() - started < 1.5
        store.delay = 0.0


def test_settings_reject_an_unknown_database_url():
    from aiproxy.config import ConfigError, settings_from_env

    with pytest.raises(ConfigError, match="DATABASE_URL"):
        settings_from_env({"AUTH_TOKEN": TOKEN, "DATABASE_URL": "mysql://x"})
    settings = settings_from_env({"AUTH_TOKEN": TOKEN, "OTEL_EXPORTER_OTLP_ENDPOINT":
                                  "http://127.0.0.1:4318/"})
    assert settings.otel_endpoint == "http://127.0.0.1:4318/v1/traces"
    assert attrs.evolve(settings).database_url is None


async def test_a_stream_that_asks_for_no_usage_is_priced_all_the_same(start_proxy,
                                                                     fake_upstream):
    fake, url = fake_upstream
    proxy = await start_proxy({"models": [openai_model("openai/gpt-4o", url)],
                               "keys": keys()})
    client = client_for(proxy, KEY)
    stream = await client.chat.completions.create(model="openai/gpt-4o", messages=MSG,
                                                  stream=True)
    chunks = [c async for c in stream]
    await client.close()
    assert all(c.usage is None for c in chunks)  # the client did not ask: it sees none
    assert fake.seen[-1].body["stream_options"] == {"include_usage": True}  # we did
    (row,) = await rows(proxy)
    assert (row["tokens_in"], row["tokens_out"]) == (7, 5)
    assert row["cost"] == pytest.approx(GPT4O)


async def test_sqlite_writes_batches_of_any_size_exactly(tmp_path):
    """Rows go in many to a statement (full chunks, then powers of two): every row of every
    batch size lands once, with its None, bool, int, float and str values as they were."""
    from aiproxy.usage.store import COLUMNS

    store = SQLiteStore(str(tmp_path / "u.db"))
    await store.open()
    try:
        expected = []
        for size in (1, 5, 127, 128, 300):
            rows = []
            for i in range(size):
                n = len(expected)
                values: dict[str, object] = dict.fromkeys(COLUMNS)
                values.update(ts=1000.0 + n, request_id=f"r{n}", route="/v1/chat/completions",
                              status=200, stream=n % 2 == 0, tokens_in=i, total_ms=1.5,
                              latency_bin=3, attempts=1, hedges=0, continuations=0,
                              cost=None if n % 3 else 0.25)
                rows.append(tuple(values[c] for c in COLUMNS))
                expected.append((f"r{n}", int(n % 2 == 0), i, None if n % 3 else 0.25, None))
            write = Write(f"w{size}", 1000.0, rows, {("key:a", "d:1"): (0.5, size)})
            await store.write([write])
            assert write.sent
            await store.write([write])  # sent again (its answer lost): applied once all the same
        got = await store.fetch("SELECT request_id, stream, tokens_in, cost, key_name "
                                "FROM usage_records ORDER BY ts", [])
        assert [tuple(r) for r in got] == expected
        assert await store.spent([("key:a", "d:1")]) == {("key:a", "d:1"): (2.5, 561)}
        assert len(expected) == 561
    finally:
        await store.close()
