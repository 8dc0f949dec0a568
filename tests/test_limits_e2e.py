"""Rate limits as a client sees them: headers, skipping limited models, 429 with Retry-After."""

from __future__ import annotations

import openai
import pytest

from aiproxy.limits import InMemoryRateLimiter
from tests.conftest import openai_model

MSG = [{"role": "user", "content": "hello"}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_ratelimit_headers_describe_the_serving_model(start_proxy):
    proxy = await start_proxy({"models": [{"name": "m", "provider": "mock",
                                           "requests_per_minute": 5,
                                           "requests_per_day": 100}]})
    raw = await proxy.client.chat.completions.with_raw_response.create(model="m", messages=MSG)
    assert raw.headers["x-ratelimit-limit-requests"] == "5"
    assert raw.headers["x-ratelimit-remaining-requests"] == "4"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" not in raw.headers


async def test_group_skips_a_limited_model_then_429_with_retry_after(start_proxy):
    clock = Clock()
    proxy = await start_proxy({"models": [
        {"name": "first", "provider": "mock", "priority": 1, "model_size": "G",
         "requests_per_minute": 1},
        {"name": "second", "provider": "mock", "priority": 2, "model_size": "G",
         "requests_per_minute": 1}]}, limiter=InMemoryRateLimiter(clock=clock))
    one = await proxy.client.chat.completions.with_raw_response.create(model="G", messages=MSG)
    assert one.headers["x-aiproxy-model"] == "first"
    clock.now += 20
    two = await proxy.client.chat.completions.with_raw_response.create(model="G", messages=MSG)
    assert two.headers["x-aiproxy-model"] == "second"
    clock.now += 10
    with pytest.raises(openai.RateLimitError) as info:
        await proxy.client.chat.completions.create(model="G", messages=MSG)
    # "first" frees 60 s after it was taken: 30 s from now, before "second" (50 s).
    assert info.value.response.headers["Retry-After"] == "30"
    body = info.value.body
    assert body["type"] == "rate_limit_error"
    assert body["code"] == "rate_limit_exceeded"
    # The window rolls: once the minute has passed the model is admitted again.
    clock.now += 30
    again = await proxy.client.chat.completions.with_raw_response.create(model="G", messages=MSG)
    assert again.headers["x-aiproxy-model"] == "first"


async def test_explicit_model_names_are_limited_too(start_proxy):
    proxy = await start_proxy({"models": [{"name": "m", "provider": "mock",
                                           "requests_per_minute": 2}]})
    for _ in range(2):
        await proxy.client.chat.completions.create(model="m", messages=MSG)
    with pytest.raises(openai.RateLimitError):
        await proxy.client.chat.completions.create(model="m", messages=MSG)


async def test_token_limit_counts_reported_usage_for_streams(start_proxy, fake_upstream):
    fake, url = fake_upstream
    proxy = await start_proxy({"models": [openai_model("m", url, tokens_per_minute=30)]})
    # The stream's usage (12 tokens) is counted although the client did not ask for it...
    stream = await proxy.client.chat.completions.create(model="m", messages=MSG, stream=True)
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)  # ...and it is not shown to that client
    assert fake.seen[-1].body["stream_options"] == {"include_usage": True}
    raw = await proxy.client.chat.completions.with_raw_response.create(model="m", messages=MSG)
    assert raw.headers["x-ratelimit-limit-tokens"] == "30"
    # The stream's 12 tokens are counted, and this request's estimate is reserved.
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 30 - 12
    with pytest.raises(openai.RateLimitError):
        await proxy.client.chat.completions.create(model="m", messages=MSG, max_tokens=100)


async def test_upstream_exhausted_budget_parks_the_model(start_proxy, fake_upstream):
    fake, url = fake_upstream
    fake.extra_headers = {"x-ratelimit-remaining-requests": "0",
                          "x-ratelimit-reset-requests": "20s",
                          "x-ratelimit-limit-requests": "100"}
    proxy = await start_proxy({"models": [openai_model("m1", url, priority=1, model_size="G"),
                                          openai_model("m2", url, priority=2, model_size="G")]})
    first = await proxy.client.chat.completions.with_raw_response.create(model="G", messages=MSG)
    assert first.headers["x-aiproxy-model"] == "m1"
    fake.extra_headers = {}
    # m1 said it has nothing left for 20 s: the next request goes to m2 without trying m1.
    second = await proxy.client.chat.completions.with_raw_response.create(model="G",
                                                                          messages=MSG)
    assert second.headers["x-aiproxy-model"] == "m2"
    assert len(fake.requests_for("m1")) == 1
