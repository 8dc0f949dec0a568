"""Failover that finishes the answer (issue 11), as a client sees it through the openai SDK:
the text it assembles, the error it gets, the wall time, and what each upstream saw."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import openai
import orjson
import pytest

from aiproxy.http.state import RUNTIME
from tests.conftest import make_settings, openai_model

MSG = [{"role": "user", "content": "hello"}]
REPLY = "one two three four five six seven eight nine ten eleven twelve"


def group(url: str, *names: str, **extra: dict[str, Any]) -> dict[str, Any]:
    """Models of one group G, in priority order, each with its own extra config."""
    return {"models": [openai_model(name, url, priority=i, model_size="G", **extra.get(name, {}))
                       for i, name in enumerate(names, 1)]}


async def read_stream(stream: Any) -> tuple[str, list[Any]]:
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


class TestSameModelRetries:
    async def test_a_429_with_retry_after_is_waited_out_on_the_same_model(
            self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.retry_after = "1"
        fake.script("m1", "429_once")
        proxy = await start_proxy(group(url, "m1", "m2"))
        started = time.monotonic()
        raw = await proxy.client.chat.completions.with_raw_response.create(
            model="G", messages=MSG)
        took = time.monotonic() - started
        assert raw.headers["x-aiproxy-model"] == "m1"  # the preferred model, a second later
        assert 1.0 <= took < 3.0
        first, second = fake.requests_for("m1")
        assert second.at - first.at >= 1.0
        assert fake.requests_for("m2") == []

    async def test_a_single_500_gets_one_quick_retry(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.script("m1", "500")
        proxy = await start_proxy(group(url, "m1", "m2"))
        started = time.monotonic()
        raw = await proxy.client.chat.completions.with_raw_response.create(
            model="G", messages=MSG)
        assert raw.headers["x-aiproxy-model"] == "m1"
        assert time.monotonic() - started < 1.5
        first, second = fake.requests_for("m1")
        assert 0.0 < second.at - first.at < 1.0
        assert fake.requests_for("m2") == []

    async def test_a_reset_before_headers_gets_one_quick_retry(self, start_proxy,
                                                               fake_upstream):
        fake, url = fake_upstream
        fake.script("m1", "reset", "reset")
        proxy = await start_proxy(group(url, "m1", "m2"))
        raw = await proxy.client.chat.completions.with_raw_response.create(
            model="G", messages=MSG)
        assert raw.headers["x-aiproxy-model"] == "m2"  # two resets: on to the next
        assert len(fake.requests_for("m1")) == 2

    async def test_a_timeout_falls_over_at_once(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "hang"
        proxy = await start_proxy(group(url, "m1", "m2", m1={"timeouts": {"total": 0.5}}))
        started = time.monotonic()
        raw = await proxy.client.chat.completions.with_raw_response.create(
            model="G", messages=MSG)
        assert raw.headers["x-aiproxy-model"] == "m2"
        assert time.monotonic() - started < 1.5
        assert len(fake.requests_for("m1")) == 1  # a silent upstream stays silent

    async def test_a_content_filter_is_never_retried(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "content_filter"
        proxy = await start_proxy(group(url, "m1", "m2"))
        with pytest.raises(openai.BadRequestError):
            await proxy.client.chat.completions.create(model="G", messages=MSG)
        assert len(fake.requests_for("m1")) == 1
        assert fake.requests_for("m2") == []

    async def test_a_dead_upstream_is_answered_without_a_pointless_round(self, start_proxy,
                                                                       fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "503"
        settings = make_settings(retry_base_delay=2.0, retry_max_delay=30.0)
        proxy = await start_proxy({"models": [openai_model("m1", url, circuit_breaker={
            "failures": 2, "cooldown": 30})]}, settings=settings)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            await proxy.client.chat.completions.create(model="m1", messages=MSG)
        # The call and its quick retry opened the breaker: the round after a 2 s backoff
        # would try nothing, so the client is answered now.
        assert info.value.status_code == 502
        assert time.monotonic() - started < 1.5
        assert len(fake.requests_for("m1")) == 2


class TestContinuation:
    async def test_a_shutdown_while_a_stream_is_being_continued_ends_the_continuation(
            self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.reply, fake.chunks = REPLY, 12
        fake.script("m1", "cut")
        fake.script("m2", "slow_first_token")  # the continuation takes a while to start
        fake.slow = 0.5
        proxy = await start_proxy(group(url, "m1", "m2", m2={"continuation": True}))
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                   json={"model": "G", "messages": MSG,
                                         "stream": True}) as resp:
            deadline = time.monotonic() + 10
            # Until the continuation is asked for (polls the fake's record of requests).
            while not fake.requests_for("m2") and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            assert proxy.app[RUNTIME].interrupt_streams("the proxy is shutting down") == 1
            body = await resp.read()
        assert b"[DONE]" not in body
        last = orjson.loads(body.strip().split(b"\n\n")[-1][len(b"data: "):])
        assert last["error"]["code"] == "proxy_shutdown"
        assert "shutting down" in last["error"]["message"]
        assert REPLY.split()[-1].encode() not in body  # not relayed to its end

    async def test_a_cut_stream_is_continued_on_a_fallback_that_accepts_it(
            self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.reply, fake.chunks = REPLY, 12
        fake.script("m1", "cut")
        proxy = await start_proxy(group(url, "m1", "m2", m2={"continuation": True}))
        stream = await proxy.client.chat.completions.create(
            model="G", messages=MSG, stream=True, stream_options={"include_usage": True})
        text, chunks = await read_stream(stream)
        assert text == REPLY  # one seamless answer: nothing missing, nothing twice
        assert len({c.id for c in chunks}) == 1
        assert {c.model for c in chunks} == {"m1"}
        finishes = [c.choices[0].finish_reason for c in chunks
                    if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"]
        roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
        assert roles == ["assistant"]
        usage = chunks[-1].usage
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        (continued,) = fake.requests_for("m2")
        relayed = continued.body["messages"][-1]
        assert relayed["role"] == "assistant"
        assert REPLY.startswith(relayed["content"]) and 0 < len(relayed["content"]) < len(REPLY)
        assert continued.body["messages"][:-1] == MSG
        async with proxy.http.get(proxy.url("/metrics"), headers=proxy.auth) as resp:
            assert 'aiproxy_continuations_total{model="m1"} 1.0' in await resp.text()

    async def test_a_fallback_that_refuses_it_gives_the_real_failure(self, start_proxy,
                                                                     fake_upstream):
        fake, url = fake_upstream
        fake.reply, fake.chunks = REPLY, 12
        fake.script("m1", "cut")
        fake.refuse_continuation.add("m2")
        proxy = await start_proxy(group(url, "m1", "m2", m2={"continuation": True}))
        stream = await proxy.client.chat.completions.create(model="G", messages=MSG,
                                                            stream=True)
        pieces: list[str] = []
        with pytest.raises(openai.APIError) as info:
            async for chunk in stream:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
        message = str(info.value)
        assert "assistant" not in message  # never the continuation's refusal...
        assert "stream" in message  # ...but the real failure: the stream broke
        text = "".join(pieces)
        assert REPLY.startswith(text) and text != REPLY  # what came, once
        assert len(fake.requests_for("m2")) == 1

    async def test_a_model_not_known_to_accept_one_is_never_sent_one(self, start_proxy,
                                                                     fake_upstream):
        fake, url = fake_upstream
        fake.reply, fake.chunks = REPLY, 12
        fake.script("m1", "cut")
        proxy = await start_proxy(group(url, "m1", "m2"))  # openai: no continuation default
        stream = await proxy.client.chat.completions.create(model="G", messages=MSG,
                                                            stream=True)
        with pytest.raises(openai.APIError):
            await read_stream(stream)
        assert fake.requests_for("m2") == []

    async def test_a_stalled_stream_is_continued(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.reply, fake.chunks, fake.slow = REPLY, 12, 10.0
        fake.script("m1", "stall")
        proxy = await start_proxy(group(url, "m1", "m2", m1={"timeouts": {"idle": 0.5}},
                                        m2={"continuation": True}))
        started = time.monotonic()
        stream = await proxy.client.chat.completions.create(model="G", messages=MSG,
                                                            stream=True)
        text, _ = await read_stream(stream)
        assert text == REPLY
        assert time.monotonic() - started < 3.0

    async def test_one_malformed_event_does_not_lose_the_answer(self, start_proxy,
                                                                fake_upstream):
        fake, url = fake_upstream
        fake.reply, fake.chunks = REPLY, 12
        fake.script("m1", "malformed")
        proxy = await start_proxy(group(url, "m1", "m2"))
        stream = await proxy.client.chat.completions.create(model="G", messages=MSG,
                                                            stream=True)
        text, _ = await read_stream(stream)
        # The malformed event replaced one piece upstream: it is dropped, the rest goes on.
        words = REPLY.split()
        assert text.split() == words[:1] + words[2:]
        assert fake.requests_for("m2") == []


class TestContextLength:
    async def test_a_fallback_of_unknown_length_is_tried(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "context_length"
        proxy = await start_proxy(group(url, "m1", "m2", m1={"max_request_length": 100_000}))
        raw = await proxy.client.chat.completions.with_raw_response.create(
            model="G", messages=MSG)
        assert raw.headers["x-aiproxy-model"] == "m2"

    async def test_a_smaller_one_is_not(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "context_length"
        proxy = await start_proxy(group(url, "m1", "m2", m1={"max_request_length": 100_000},
                                        m2={"max_request_length": 50_000}))
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.chat.completions.create(model="G", messages=MSG)
        assert info.value.code == "context_length_exceeded"
        assert fake.requests_for("m2") == []


class TestHedging:
    async def test_a_slow_first_token_is_hedged_after_the_default_delay(self, start_proxy,
                                                                       fake_upstream):
        fake, url = fake_upstream
        fake.slow = 15.0
        fake.script("m1", "slow_first_token")
        proxy = await start_proxy(group(url, "m1", "m2"))
        started = time.monotonic()
        stream = await proxy.client.chat.completions.create(model="G", messages=MSG,
                                                            stream=True)
        text, chunks = await read_stream(stream)
        took = time.monotonic() - started
        assert text.startswith("reply from m2")
        assert 9.5 <= took < 13.0  # the default hedge delay (10 s), not the 60 s bound
        (hedge,) = fake.requests_for("m2")
        (slow,) = fake.requests_for("m1")
        assert 9.5 <= hedge.at - slow.at < 11.0
        async with proxy.http.get(proxy.url("/metrics"), headers=proxy.auth) as resp:
            assert 'aiproxy_hedges_total{model="m1"} 1.0' in await resp.text()

    async def test_a_configured_hedge_and_the_loser_is_closed(self, start_proxy,
                                                              fake_upstream):
        fake, url = fake_upstream
        fake.delay = 0.0
        fake.slow = 5.0
        fake.script("m1", "slow_first_token")
        proxy = await start_proxy(group(url, "m1", "m2", m1={"timeouts": {"hedge": 0.3}}))
        started = time.monotonic()
        stream = await proxy.client.chat.completions.create(model="G", messages=MSG,
                                                            stream=True)
        text, _ = await read_stream(stream)
        assert text.startswith("reply from m2")
        assert time.monotonic() - started < 2.0
        await asyncio.sleep(0.2)
        assert fake.open_streams == 0  # the slow one was closed at once

    async def test_non_streamed_answers_hedge_when_configured(self, start_proxy,
                                                              fake_upstream):
        fake, url = fake_upstream
        fake.script("m1", "hang")
        proxy = await start_proxy(group(url, "m1", "m2", m1={"timeouts": {"hedge": 0.3}}))
        started = time.monotonic()
        raw = await proxy.client.chat.completions.with_raw_response.create(
            model="G", messages=MSG)
        assert raw.headers["x-aiproxy-model"] == "m2"
        assert time.monotonic() - started < 2.0


async def test_a_recovered_primary_carries_traffic_again_within_seconds(start_proxy,
                                                                       fake_upstream):
    """Down for 20 s under one request a second, then healthy: back on the primary within
    5 s of its recovery, and meanwhile probed by one request at a time, never hammered."""
    fake, url = fake_upstream
    fake.defaults["m1"] = "503"
    proxy = await start_proxy(group(url, "m1", "m2"))
    served: list[tuple[float, str]] = []
    started = time.monotonic()
    recovered_at = started + 20.0
    for second in itertools.count():
        now = time.monotonic()
        if now >= recovered_at and fake.defaults.get("m1") == "503":
            fake.defaults["m1"] = "ok"
        if now > recovered_at + 6.0:
            break
        raw = await proxy.client.chat.completions.with_raw_response.create(
            model="G", messages=MSG)
        served.append((time.monotonic(), raw.headers["x-aiproxy-model"]))
        await asyncio.sleep(max(0.0, started + second + 1 - time.monotonic()))
    during = [s for s in fake.requests_for("m1") if s.at < recovered_at]
    assert len(during) <= 20 // 2 + 3  # a probe every few seconds, not every request
    back = [at for at, model in served if model == "m1" and at >= recovered_at]
    assert back and back[0] - recovered_at <= 5.0
    assert all(model == "m1" for at, model in served if at >= back[0])


async def test_a_parameter_one_provider_cannot_take_goes_to_one_that_can(start_proxy):
    from aiproxy.plugins import ProviderRegistry
    from aiproxy.provider import ChatRequest, ChatResponse, Provider, bad_request

    class NoSeed(Provider):
        plugin_api_version = 2

        async def chat(self, request: ChatRequest) -> ChatResponse:
            raise bad_request("'seed' is not supported", param="seed",
                              code="unsupported_parameter")

    registry = ProviderRegistry()
    registry.register("noseed", NoSeed)
    proxy = await start_proxy({"models": [
        {"name": "strict", "provider": "noseed", "url": "http://127.0.0.1:9",
         "model_size": "G", "priority": 1},
        {"name": "mock", "provider": "mock", "model_size": "G", "priority": 2}]},
        registry=registry)
    raw = await proxy.client.chat.completions.with_raw_response.create(
        model="G", messages=MSG, seed=1)
    assert raw.headers["x-aiproxy-model"] == "mock"
    with pytest.raises(openai.BadRequestError) as info:  # alone, the client's 400 stands
        await proxy.client.chat.completions.create(model="strict", messages=MSG, seed=1)
    assert info.value.code == "unsupported_parameter"
