"""Budgets: the request after a budget is spent is refused with 429 naming the budget and its
reset, on SQLite and on PostgreSQL with two proxies; spent models are skipped in a group."""

from __future__ import annotations

import asyncio
import calendar
import time

import openai
import pytest

from aiproxy.config import parse_config
from aiproxy.http.usage import LEDGER
from tests.conftest import make_settings, openai_model

KEY = "budget-key-0123456789"
MSG = [{"role": "user", "content": "hi"}]
# At 1000 USD per million tokens each way, the fake's 7 + 5 tokens cost 0.012 a request.
PRICE = {"input": 1000, "output": 1000}
COST = 0.012


def config(url: str, *, key_budget: dict | None = None, **model: dict) -> dict:
    key = {"name": "team", "key": KEY}
    if key_budget is not None:
        key["budget"] = key_budget
    return {"models": [openai_model("m", url, price=PRICE, **model)], "keys": [key]}


def client_for(proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)


async def admitted_until_refused(clients, limit: int = 20) -> tuple[int, openai.RateLimitError]:
    """Send requests (round robin over ``clients``) until one is refused: how many passed."""
    for i in range(limit):
        try:
            await clients[i % len(clients)].chat.completions.create(model="m", messages=MSG)
        except openai.RateLimitError as exc:
            return i, exc
    raise AssertionError(f"no request was refused in {limit}")


def next_midnight() -> float:
    t = time.gmtime()
    return calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86400.0


class TestOnSQLite:
    async def test_daily_spend_refuses_the_request_after_it_is_spent(self, start_proxy,
                                                                     fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy(config(url, key_budget={"daily": 0.03}))
        client = client_for(proxy)
        passed, refused = await admitted_until_refused([client])
        # 0.012, 0.024 are below 0.03: the third is admitted and takes it to 0.036.
        assert passed == 3
        assert len(fake.seen) == 3  # the refused one never reached the upstream
        assert refused.status_code == 429
        body = refused.body
        assert body["code"] == "budget_exceeded" and body["type"] == "insufficient_quota"
        midnight = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(next_midnight()))
        assert body["message"] == (f"budget exceeded for key 'team': the daily spend budget "
                                   f"of $0.03 (spent $0.0360) is used up; it resets at "
                                   f"{midnight}")
        retry_after = int(refused.response.headers["Retry-After"])
        assert abs(retry_after - (next_midnight() - time.time())) < 5
        await client.close()
        # The admin token has no budget of its own.
        await proxy.client.chat.completions.create(model="m", messages=MSG)

    async def test_token_budget(self, start_proxy, fake_upstream):
        _, url = fake_upstream
        proxy = await start_proxy(config(url, key_budget={"monthly_tokens": 24}))
        client = client_for(proxy)
        passed, refused = await admitted_until_refused([client])
        assert passed == 2
        assert "monthly token budget of 24 (used 24)" in refused.message
        await client.close()

    async def test_a_spent_model_is_skipped_in_its_group(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy({"models": [
            openai_model("pricey", url, price=PRICE, model_size="G", priority=0,
                         budget={"daily": 0.01}),
            openai_model("cheap", url, price=PRICE, model_size="G", priority=1)]})
        served = [(await proxy.client.chat.completions.create(model="G", messages=MSG)).model
                  for _ in range(3)]
        assert served == ["pricey", "cheap", "cheap"]
        with pytest.raises(openai.RateLimitError, match="budget exceeded for model 'pricey'"):
            await proxy.client.chat.completions.create(model="pricey", messages=MSG)
        assert [s.model for s in fake.seen] == ["pricey", "cheap", "cheap"]

    async def test_a_key_budget_on_one_model(self, start_proxy, fake_upstream):
        _, url = fake_upstream
        proxy = await start_proxy({"models": [openai_model("m", url, price=PRICE),
                                              openai_model("n", url, price=PRICE)],
                                   "keys": [{"name": "team", "key": KEY,
                                             "model_budgets": {"m": {"daily": 0.01}}}]})
        client = client_for(proxy)
        await client.chat.completions.create(model="m", messages=MSG)
        with pytest.raises(openai.RateLimitError, match="key 'team' on model 'm'"):
            await client.chat.completions.create(model="m", messages=MSG)
        await client.chat.completions.create(model="n", messages=MSG)  # another model: fine
        await client.close()

    async def test_a_stream_that_crosses_the_budget_finishes(self, start_proxy, fake_upstream):
        _, url = fake_upstream
        proxy = await start_proxy(config(url, key_budget={"daily": 0.01}))
        client = client_for(proxy)
        stream = await client.chat.completions.create(
            model="m", messages=MSG, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert chunks[-1].usage.total_tokens == 12  # all of it, usage included
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "reply from m: hi"
        for _ in range(50):  # the charge lands as the stream's settlement is observed
            try:
                await client.chat.completions.create(model="m", messages=MSG)
            except openai.RateLimitError:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the stream's spend was never charged")
        await client.close()

    async def test_a_budget_added_by_a_reload_counts_what_was_spent(self, start_proxy,
                                                                    fake_upstream):
        _, url = fake_upstream
        current = {"config": config(url)}

        def source():
            return parse_config(current["config"], {}), make_settings()

        proxy = await start_proxy(current["config"], source=source)
        client = client_for(proxy)
        for _ in range(2):
            await client.chat.completions.create(model="m", messages=MSG)
        current["config"] = config(url, key_budget={"daily": 0.02})
        async with proxy.http.post(proxy.url("/admin/reload"), headers=proxy.auth) as resp:
            assert resp.status == 200
        with pytest.raises(openai.RateLimitError, match=r"spent \$0\.0240"):
            await client.chat.completions.create(model="m", messages=MSG)
        await client.close()


class TestOnPostgres:
    async def test_two_proxies_refuse_at_the_same_request(self, start_proxy, fake_upstream,
                                                           postgres_url):
        fake, url = fake_upstream
        settings = make_settings(database_url=postgres_url)
        budgeted = config(url, key_budget={"daily": 0.05})
        one = await start_proxy(budgeted, settings=settings)
        two = await start_proxy(budgeted, settings=settings)
        clients = [client_for(one), client_for(two)]
        passed, refused = await admitted_until_refused(clients)
        # 4 x 0.012 = 0.048 is below 0.05: the fifth is admitted, the sixth refused, whichever
        # proxy each one reached.
        assert passed == 5
        assert len(fake.seen) == 5
        assert "spent $0.0600" in refused.message
        with pytest.raises(openai.RateLimitError):
            await clients[passed % 2 ^ 1].chat.completions.create(model="m", messages=MSG)
        for client in clients:
            await client.close()
        assert await two.app[LEDGER].flush()  # the other replica's rows (a second's batch)
        async with one.http.get(one.url("/admin/usage"), headers=one.auth,
                                params={"group_by": "status", "bucket": "none"}) as resp:
            totals = {r["status"]: r for r in (await resp.json())["totals"]}
        assert totals[200]["requests"] == 5  # both proxies' records, in one database
        assert totals[429]["requests"] == 2
        assert totals[200]["cost"] == pytest.approx(5 * COST)
