"""The anthropic provider end to end: the ``openai`` SDK → aiproxy's /v1/chat/completions → a
fake Anthropic Messages API on 127.0.0.1 (shapes: https://docs.anthropic.com/en/api/messages,
.../messages-streaming, .../errors)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.anthropic_fakes import (
    FakeAnthropic,
    FakeChat,
    anthropic_error,
    claude_message,
    claude_stream,
    text_block,
    thinking_block,
    tool_block,
)
from tests.conftest import Proxy, StartProxy
from tests.provider_fakes import json_reply

CLAUDE = "anthropic/claude-sonnet-4-5"
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture
async def claude(aiohttp_server: Any) -> FakeAnthropic:
    return await FakeAnthropic.start(aiohttp_server)


@pytest.fixture
async def proxy(start_proxy: StartProxy, claude: FakeAnthropic) -> Proxy:
    return await start_proxy({"models": [claude.model(CLAUDE),
                                         claude.model("anthropic/claude-opus-4-6")]})


async def test_plain_with_cached_usage(proxy: Proxy, claude: FakeAnthropic) -> None:
    claude.then(json_reply(claude_message(text_block("Bonjour !"), input_tokens=12,
                                          output_tokens=4, cache_read_input_tokens=3000,
                                          cache_creation_input_tokens=0)))
    answer = await proxy.client.chat.completions.create(model=CLAUDE, max_tokens=50, messages=[
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"}])
    assert answer.choices[0].message.content == "Bonjour !"
    assert answer.model == CLAUDE
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3012, 4)
    assert answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 3000
    [seen] = claude.calls()
    assert seen.body == {"model": "claude-sonnet-4-5", "max_tokens": 50,
                         "system": "Answer in French.",
                         "messages": [{"role": "user", "content": "Hello"}]}


async def test_stream_with_tool_call_deltas(proxy: Proxy, claude: FakeAnthropic) -> None:
    claude.then(claude_stream(claude_message(
        text_block("Looking it up."), tool_block("get_weather", {"city": "Paris"}, "toolu_P"),
        stop_reason="tool_use", input_tokens=40, output_tokens=22)))
    async with proxy.client.chat.completions.stream(
            model=CLAUDE, tools=[WEATHER],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            stream_options={"include_usage": True}) as stream:
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Looking it up."
    [call] = choice.message.tool_calls or []
    assert (call.id, call.function.name, call.function.arguments) == (
        "toolu_P", "get_weather", '{"city":"Paris"}')
    assert final.usage is not None and final.usage.total_tokens == 62


async def test_tool_loop_with_thinking_keeps_the_signature(proxy: Proxy,
                                                           claude: FakeAnthropic) -> None:
    thought = thinking_block("Call the weather tool for Paris.")
    claude.then(json_reply(claude_message(thought, tool_block("get_weather", {"city": "Paris"}),
                                          stop_reason="tool_use")))
    first = await proxy.client.chat.completions.create(
        model=CLAUDE, tools=[WEATHER], reasoning_effort="low",  # type: ignore[list-item]
        messages=[{"role": "user", "content": "Weather in Paris?"}])
    message = first.choices[0].message
    assert message.content is None
    extra = message.model_extra or {}
    assert extra["reasoning_content"] == thought["thinking"]
    # The client sends the assistant message back as it got it (thinking_blocks included).
    history: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": (message.tool_calls or [])[0].id, "content": "21C"}]
    second = await proxy.client.chat.completions.create(
        model=CLAUDE, tools=[WEATHER], reasoning_effort="low",  # type: ignore[list-item]
        messages=history)
    assert second.choices[0].message.content == "Hello from Claude"
    sent = claude.calls()[-1].body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert sent["messages"][1]["content"][0] == thought


async def test_images(proxy: Proxy, claude: FakeAnthropic) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4A=="}}
    await proxy.client.chat.completions.create(model=CLAUDE, messages=[{"role": "user",
        "content": [{"type": "text", "text": "What is this?"}, image]}])
    assert claude.calls()[-1].body["messages"][0]["content"][1] == {
        "type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                    "data": "/9j/4A=="}}


class TestErrors:
    async def test_rate_limited(self, proxy: Proxy, claude: FakeAnthropic) -> None:
        claude.always(anthropic_error(429, "rate_limit_error", "slow down",
                                      {"retry-after": "30"}))
        with pytest.raises(openai.RateLimitError) as info:
            await proxy.client.chat.completions.create(model=CLAUDE, messages=[
                {"role": "user", "content": "Hi"}])
        assert int(info.value.response.headers["retry-after"]) >= 29
        assert len(claude.calls()) == 1  # parked: its Retry-After is longer than we hold

    async def test_overloaded(self, proxy: Proxy, claude: FakeAnthropic) -> None:
        claude.always(anthropic_error(529, "overloaded_error", "Overloaded"))
        with pytest.raises(openai.APIStatusError) as info:
            await proxy.client.chat.completions.create(model=CLAUDE, messages=[
                {"role": "user", "content": "Hi"}])
        assert info.value.status_code == 502
        assert len(claude.calls()) == 3  # retried: an overload passes

    async def test_prompt_too_long(self, proxy: Proxy, claude: FakeAnthropic) -> None:
        claude.then(anthropic_error(400, "invalid_request_error",
                                    "prompt is too long: 210000 tokens > 200000 maximum"))
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.chat.completions.create(model=CLAUDE, messages=[
                {"role": "user", "content": "Hi"}])
        assert info.value.code == "context_length_exceeded"

    async def test_prefill_on_a_model_that_refuses_it(self, proxy: Proxy,
                                                      claude: FakeAnthropic) -> None:
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.chat.completions.create(
                model="anthropic/claude-opus-4-6", messages=[
                    {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "He"}])
        assert info.value.code == "prefill_not_supported"
        assert not claude.calls()

    async def test_mid_stream_error_event(self, proxy: Proxy, claude: FakeAnthropic) -> None:
        claude.always(claude_stream(claude_message(text_block("Hello from Claude")),
                                    error_after=5))
        stream = await proxy.client.chat.completions.create(
            model=CLAUDE, stream=True, messages=[{"role": "user", "content": "Hi"}])
        text = ""
        with pytest.raises(openai.APIError, match="interrupted"):
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
        assert text  # part of the answer had gone out before the error event


async def test_failover_to_an_openai_model(start_proxy: StartProxy, claude: FakeAnthropic,
                                           aiohttp_server: Any) -> None:
    gpt = await FakeChat.start(aiohttp_server)
    claude.always(anthropic_error(529, "overloaded_error", "Overloaded"))
    proxy = await start_proxy({"models": [claude.model(CLAUDE, priority=1),
                                          gpt.model("gpt-4o", priority=2)],
                               "groups": {"pool": [CLAUDE, "gpt-4o"]}})
    answer = await proxy.client.chat.completions.create(model="pool", messages=[
        {"role": "user", "content": "Hi"}])
    assert (answer.model, answer.choices[0].message.content) == ("gpt-4o", "Hello from GPT")
