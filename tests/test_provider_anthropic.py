"""The anthropic provider against a fake Messages API on 127.0.0.1: OpenAI chat in, Anthropic
out, and back. Fixtures follow Anthropic's documented shapes (see ``tests/anthropic_fakes.py``
for the pages): messages, streaming events, errors, prompt caching, extended thinking.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from aiproxy.config import ConfigError, ModelConfig
from aiproxy.provider import ChatRequest, ErrorKind, RateLimitHint, UpstreamError
from aiproxy_providers.anthropic import AnthropicProvider
from aiproxy_providers.anthropic.models import profile_of
from aiproxy_providers.anthropic.request import CHAT_PARAMETERS
from tests.anthropic_fakes import (
    FakeAnthropic,
    anthropic_error,
    claude_message,
    claude_stream,
    text_block,
    thinking_block,
    tool_block,
)
from tests.provider_fakes import json_reply, sse_reply

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
       "AAAABJRU5ErkJggg==")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture
async def claude(aiohttp_server: Any) -> FakeAnthropic:
    return await FakeAnthropic.start(aiohttp_server)


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


def make(claude: FakeAnthropic, session: aiohttp.ClientSession, model: str = "claude-sonnet-4-5",
         *, url: str | None = None, **options: Any) -> AnthropicProvider:
    config = ModelConfig(name=f"anthropic/{model}", provider="anthropic",
                         url=url or claude.url("/"), token=FakeAnthropic.KEY, options=options)
    return AnthropicProvider(config, session)


def chat(stream: bool = False, include_usage: bool = False, **body: Any) -> ChatRequest:
    body.setdefault("model", "anthropic/claude-sonnet-4-5")
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return ChatRequest(body=body, raw=orjson.dumps(body), stream=stream)


async def sent(claude: FakeAnthropic, provider: AnthropicProvider, **body: Any) -> Any:
    """What the upstream received for one plain chat call."""
    await provider.chat(chat(**body))
    return claude.calls()[-1].body


async def collect(provider: AnthropicProvider, request: ChatRequest) -> list[dict[str, Any]]:
    return [chunk async for chunk in provider.stream(request)]


class TestConfig:
    async def test_headers_and_both_url_forms(self, claude: FakeAnthropic, session: Any) -> None:
        for url in (claude.url("/"), claude.url("/v1"), claude.url("/v1/messages")):
            provider = make(claude, session, url=url)
            await provider.chat(chat())
            seen = claude.calls()[-1]
            assert seen.path == "/v1/messages"
            assert seen.headers["x-api-key"] == FakeAnthropic.KEY
            assert seen.headers["anthropic-version"] == "2023-06-01"
            assert "Authorization" not in seen.headers

    async def test_options_version_betas_and_unknown_keys(self, claude: FakeAnthropic,
                                                           session: Any) -> None:
        provider = make(claude, session, version="2024-01-01",
                        betas=["prompt-caching-2024-07-31", "token-efficient-tools-2025-02-19"])
        await provider.chat(chat())
        seen = claude.calls()[-1]
        assert seen.headers["anthropic-version"] == "2024-01-01"
        assert seen.headers["anthropic-beta"] == \
            "prompt-caching-2024-07-31,token-efficient-tools-2025-02-19"
        with pytest.raises(ConfigError, match="nope"):
            make(claude, session, nope=1)
        with pytest.raises(ConfigError, match="thinking_budgets"):
            make(claude, session, thinking_budgets={"high": 100})

    def test_profiles_from_the_model_id(self) -> None:
        # https://platform.claude.com/docs/en/about-claude/models/migration-guide: prefill is
        # refused from Claude 4.6; budget thinking only up to 4.5, adaptive only from Opus 4.7.
        old, mid, new = (profile_of("claude-3-7-sonnet-20250219"),
                         profile_of("claude-sonnet-4-6"), profile_of("claude-opus-4-7"))
        assert (old.prefill, old.thinking, old.sampling, old.structured) == (
            True, "budget", True, "tool")
        assert (mid.prefill, mid.thinking, mid.sampling) == (False, "adaptive", True)
        assert (new.prefill, new.sampling, new.xhigh) == (False, False, True)
        assert profile_of("claude-sonnet-4-5-20250929").structured == "native"
        assert profile_of("claude-haiku-4-5").prefill is True
        assert profile_of("claude-opus-5").thinking == "adaptive"
        unknown = profile_of("kimi-k2-instruct")
        assert (unknown.prefill, unknown.thinking, unknown.version) == (False, "budget", None)

    async def test_continuation_setting(self, claude: FakeAnthropic, session: Any) -> None:
        assert make(claude, session, "claude-sonnet-4-5").accepts_continuation
        assert not make(claude, session, "claude-opus-4-6").accepts_continuation
        assert make(claude, session, "claude-opus-4-6", prefill=True).accepts_continuation


class TestRequest:
    """https://docs.anthropic.com/en/api/messages"""

    async def test_system_developer_and_merged_turns(self, claude: FakeAnthropic,
                                                     session: Any) -> None:
        body = await sent(claude, make(claude, session), messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "Are you there?"}]},
            {"role": "assistant", "content": "Oui."},
            {"role": "assistant", "content": ""},  # empty: says nothing, dropped
            {"role": "user", "content": "Bien."},
        ])
        assert body["system"] == "Be brief.\n\nAnswer in French."
        assert body["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "Hello"},
                                         {"type": "text", "text": "Are you there?"}]},
            {"role": "assistant", "content": "Oui."},
            {"role": "user", "content": "Bien."},
        ]
        assert body["model"] == "claude-sonnet-4-5"
        assert body["max_tokens"] == 4096  # the documented default; Anthropic requires one
        assert "stream" not in body

    async def test_images_and_pdf(self, claude: FakeAnthropic, session: Any) -> None:
        body = await sent(claude, make(claude, session), messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=",
                                      "filename": "doc.pdf"}},
        ]}])
        assert body["messages"][0]["content"][1:] == [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {"type": "document", "title": "doc.pdf", "source": {
                "type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
        ]

    async def test_tools_choice_calls_and_results(self, claude: FakeAnthropic,
                                                  session: Any) -> None:
        provider = make(claude, session)
        call = {"id": "toolu_01", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        call2 = {"id": "toolu_02", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
        body = await sent(claude, provider, tools=[WEATHER], tool_choice="required",
                          parallel_tool_calls=False, messages=[
                              {"role": "user", "content": "Weather in Paris and Rome?"},
                              {"role": "assistant", "content": "Checking.",
                               "tool_calls": [call, call2]},
                              {"role": "tool", "tool_call_id": "toolu_01", "content": "21C"},
                              {"role": "tool", "tool_call_id": "toolu_02",
                               "content": [{"type": "text", "text": "25C"}]},
                          ])
        assert body["tools"] == [{"name": "get_weather",
                                  "description": "Current weather in a city",
                                  "input_schema": WEATHER["function"]["parameters"]}]
        assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
        assert body["messages"][1:] == [
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
                 "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_02", "name": "get_weather",
                 "input": {"city": "Rome"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "21C"},
                {"type": "tool_result", "tool_use_id": "toolu_02",
                 "content": [{"type": "text", "text": "25C"}]}]},
        ]
        named = await sent(claude, provider, tools=[WEATHER], tool_choice={
            "type": "function", "function": {"name": "get_weather"}})
        assert named["tool_choice"] == {"type": "tool", "name": "get_weather"}
        assert (await sent(claude, provider, tools=[WEATHER], tool_choice="none"))[
            "tool_choice"] == {"type": "none"}
        assert "tool_choice" not in await sent(claude, provider, tools=[WEATHER])

    async def test_sampling_stop_user(self, claude: FakeAnthropic, session: Any) -> None:
        body = await sent(claude, make(claude, session), temperature=1.6, top_p=0.9,
                          stop=["END", "STOP"], max_completion_tokens=300, user="u-42",
                          presence_penalty=0, n=1)
        assert body["temperature"] == 1.0  # Anthropic's range is 0..1
        assert (body["top_p"], body["max_tokens"]) == (0.9, 300)
        assert body["stop_sequences"] == ["END", "STOP"]
        assert body["metadata"] == {"user_id": "u-42"}
        assert (await sent(claude, make(claude, session), stop="X"))["stop_sequences"] == ["X"]
        # Opus 4.7 refuses sampling parameters: they are dropped, not sent to fail.
        dropped = await sent(claude, make(claude, session, "claude-opus-4-7"), temperature=0.2,
                             top_p=0.5)
        assert "temperature" not in dropped and "top_p" not in dropped

    async def test_unsupported_parameters_are_refused(self, claude: FakeAnthropic,
                                                      session: Any) -> None:
        provider = make(claude, session)
        for params in ({"n": 2}, {"logprobs": True}, {"logit_bias": {"1": 2}},
                       {"frequency_penalty": 0.5}, {"modalities": ["audio"]}):
            with pytest.raises(UpstreamError) as info:
                await provider.chat(chat(**params))
            assert info.value.kind is ErrorKind.BAD_REQUEST
            assert info.value.param == next(iter(params))
            assert info.value.code == "unsupported_parameter"
        assert not claude.calls()

    async def test_cache_control_passes_through(self, claude: FakeAnthropic,
                                                session: Any) -> None:
        # https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching
        ephemeral = {"type": "ephemeral"}
        tool = {**WEATHER, "cache_control": ephemeral}
        body = await sent(claude, make(claude, session), tools=[tool], messages=[
            {"role": "system", "content": [{"type": "text", "text": "Long manual...",
                                            "cache_control": ephemeral}]},
            {"role": "user", "content": "Q1", "cache_control": ephemeral},
        ])
        assert body["system"] == [{"type": "text", "text": "Long manual...",
                                   "cache_control": ephemeral}]
        assert body["messages"][0]["content"] == [{"type": "text", "text": "Q1",
                                                   "cache_control": ephemeral}]
        assert body["tools"][0]["cache_control"] == ephemeral

    async def test_structured_output_native_and_forced_tool(self, claude: FakeAnthropic,
                                                            session: Any) -> None:
        schema = {"type": "object", "properties": {"x": {"type": "integer"}},
                  "required": ["x"], "additionalProperties": False}
        fmt = {"type": "json_schema", "json_schema": {"name": "point", "schema": schema}}
        # https://docs.anthropic.com/en/docs/build-with-claude/structured-outputs
        native = await sent(claude, make(claude, session), response_format=fmt)
        assert native["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
        assert "tools" not in native
        # Older models: a forced tool whose input is the answer (documented JSON mode).
        claude.then(json_reply(claude_message(tool_block("point", {"x": 3}),
                                              stop_reason="tool_use")))
        provider = make(claude, session, "claude-3-5-haiku-20241022")
        answer = await provider.chat(chat(response_format=fmt))
        body = claude.calls()[-1].body
        assert body["tools"] == [{"name": "point", "description": "Answer with the requested "
                                  "JSON.", "input_schema": schema}]
        assert body["tool_choice"] == {"type": "tool", "name": "point"}
        choice = answer.data["choices"][0]
        assert orjson.loads(choice["message"]["content"]) == {"x": 3}
        assert choice["finish_reason"] == "stop"
        assert "tool_calls" not in choice["message"]

    async def test_reasoning_effort_budget_and_adaptive(self, claude: FakeAnthropic,
                                                        session: Any) -> None:
        # https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking
        body = await sent(claude, make(claude, session), reasoning_effort="medium",
                          temperature=0.3, top_p=0.9)
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 8192}
        assert body["max_tokens"] == 4096 + 8192  # the output bound plus the budget
        assert "temperature" not in body and "top_p" not in body  # refused with thinking
        capped = await sent(claude, make(claude, session), reasoning_effort="high",
                            max_tokens=5000)
        assert capped["thinking"]["budget_tokens"] == 4999 and capped["max_tokens"] == 5000
        with pytest.raises(UpstreamError, match="max_tokens above 1024"):
            await make(claude, session).chat(chat(reasoning_effort="low", max_tokens=800))
        assert "thinking" not in await sent(claude, make(claude, session),
                                            reasoning_effort="none")
        adaptive = await sent(claude, make(claude, session, "claude-opus-4-6"),
                              reasoning_effort="xhigh")
        assert adaptive["thinking"] == {"type": "adaptive"}
        assert adaptive["output_config"] == {"effort": "high"}  # xhigh is Opus 4.7's
        assert (await sent(claude, make(claude, session, "claude-opus-4-7"),
                           reasoning_effort="xhigh"))["output_config"] == {"effort": "xhigh"}

    async def test_prefill_continuation(self, claude: FakeAnthropic, session: Any) -> None:
        claude.then(json_reply(claude_message(text_block(" blue, like the sea."))))
        provider = make(claude, session, "claude-3-7-sonnet-20250219")
        answer = await provider.chat(chat(messages=[
            {"role": "user", "content": "Sky colour?"},
            {"role": "assistant", "content": "The sky is "}]))
        # Anthropic refuses a prefill ending in whitespace; the continuation's own leading
        # whitespace is dropped so the client's text joins without a double space.
        assert claude.calls()[-1].body["messages"][-1] == {"role": "assistant",
                                                           "content": "The sky is"}
        assert answer.data["choices"][0]["message"]["content"] == "blue, like the sea."
        # Prefill and thinking do not go together: a continuation goes on without thinking.
        await provider.chat(chat(reasoning_effort="high", messages=[
            {"role": "user", "content": "Sky colour?"},
            {"role": "assistant", "content": "The sky is"}]))
        assert "thinking" not in claude.calls()[-1].body
        with pytest.raises(UpstreamError) as info:
            await make(claude, session, "claude-opus-4-6").chat(chat(messages=[
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]))
        assert info.value.kind is ErrorKind.BAD_REQUEST
        assert info.value.code == "prefill_not_supported"
        assert len(claude.calls()) == 2  # never sent


class TestResponse:
    async def test_text_usage_and_cache_counts(self, claude: FakeAnthropic,
                                               session: Any) -> None:
        claude.then(json_reply(claude_message(text_block("Hello"), text_block(" there"),
                                              input_tokens=10, output_tokens=4,
                                              cache_read_input_tokens=2000,
                                              cache_creation_input_tokens=300)))
        answer = (await make(claude, session).chat(chat())).data
        assert answer["object"] == "chat.completion"
        assert answer["model"] == "anthropic/claude-sonnet-4-5"
        choice = answer["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": "Hello there"}
        assert choice["finish_reason"] == "stop"
        usage = answer["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
            2310, 4, 2314)
        assert usage["prompt_tokens_details"] == {"cached_tokens": 2000}
        assert usage["cache_creation_input_tokens"] == 300

    @pytest.mark.parametrize(("stop_reason", "finish"), [
        ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
        ("tool_use", "tool_calls"), ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length")])
    async def test_stop_reasons(self, claude: FakeAnthropic, session: Any, stop_reason: str,
                                finish: str) -> None:
        # https://docs.anthropic.com/en/api/handling-stop-reasons
        claude.always(json_reply(claude_message(text_block("x"), stop_reason=stop_reason)))
        answer = await make(claude, session).chat(chat())
        assert answer.data["choices"][0]["finish_reason"] == finish

    async def test_tool_use_round_trip_with_thinking(self, claude: FakeAnthropic,
                                                     session: Any) -> None:
        # Extended thinking with tool use: the thinking block (with its signature) of the
        # assistant turn that called the tool goes back unchanged with the tool result.
        thought = thinking_block("The user wants Paris weather; call the tool.")
        claude.then(json_reply(claude_message(
            thought, text_block("Let me check."), tool_block("get_weather", {"city": "Paris"}),
            stop_reason="tool_use")))
        provider = make(claude, session)
        first = (await provider.chat(chat(tools=[WEATHER], reasoning_effort="low",
                                          messages=[{"role": "user",
                                                     "content": "Paris weather?"}]))).data
        message = first["choices"][0]["message"]
        assert first["choices"][0]["finish_reason"] == "tool_calls"
        assert message["content"] == "Let me check."  # thinking never in content
        assert message["reasoning_content"] == thought["thinking"]
        assert message["thinking_blocks"] == [thought]
        assert message["tool_calls"] == [{"id": "toolu_01A09q90qw90lq917835lq9",
                                          "type": "function", "function": {
                                              "name": "get_weather",
                                              "arguments": '{"city":"Paris"}'}}]
        claude.then(json_reply(claude_message(text_block("21°C in Paris."))))
        second = await provider.chat(chat(tools=[WEATHER], reasoning_effort="low", messages=[
            {"role": "user", "content": "Paris weather?"}, message,
            {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"],
             "content": "21C"}]))
        assert second.data["choices"][0]["message"]["content"] == "21°C in Paris."
        body = claude.calls()[-1].body
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
        assert body["messages"][1]["content"] == [
            thought, {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
             "input": {"city": "Paris"}}]
        assert body["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
             "content": "21C"}]

    async def test_a_loop_that_lost_its_thinking_blocks_runs_without_thinking(
            self, claude: FakeAnthropic, session: Any) -> None:
        # Anthropic refuses thinking when the tool-calling turn has no thinking block; a
        # client that dropped thinking_blocks still gets an answer.
        call = {"id": "toolu_9", "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"}}
        body = await sent(claude, make(claude, session), reasoning_effort="high",
                          tools=[WEATHER], messages=[
                              {"role": "user", "content": "Weather?"},
                              {"role": "assistant", "content": None, "tool_calls": [call]},
                              {"role": "tool", "tool_call_id": "toolu_9", "content": "sun"}])
        assert "thinking" not in body


class TestStream:
    """https://docs.anthropic.com/en/api/messages-streaming"""

    async def test_text_and_final_usage(self, claude: FakeAnthropic, session: Any) -> None:
        claude.then(claude_stream(claude_message(text_block("Hello from Claude"),
                                                 input_tokens=9, output_tokens=5,
                                                 cache_read_input_tokens=100)))
        chunks = await collect(make(claude, session), chat(stream=True, include_usage=True))
        assert claude.calls()[-1].body["stream"] is True
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                       if c["choices"])
        assert text == "Hello from Claude"
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == []
        usage = chunks[-1]["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (109, 5)
        assert usage["prompt_tokens_details"] == {"cached_tokens": 100}

    async def test_no_usage_chunk_unless_asked(self, claude: FakeAnthropic,
                                               session: Any) -> None:
        chunks = await collect(make(claude, session), chat(stream=True))
        assert all(c["choices"] for c in chunks) and "usage" not in chunks[-1]

    async def test_tool_call_deltas_and_thinking(self, claude: FakeAnthropic,
                                                 session: Any) -> None:
        thought = thinking_block("Need the tool.")
        claude.then(claude_stream(claude_message(
            thought, text_block("Checking."),
            tool_block("get_weather", {"city": "Paris"}, "toolu_A"),
            tool_block("get_weather", {"city": "Rome"}, "toolu_B"), stop_reason="tool_use")))
        chunks = await collect(make(claude, session), chat(stream=True, tools=[WEATHER]))
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        assert "".join(d.get("reasoning_content") or "" for d in deltas) == "Need the tool."
        assert "".join(d.get("content") or "" for d in deltas) == "Checking."
        [blocks] = [d["thinking_blocks"] for d in deltas if "thinking_blocks" in d]
        assert blocks == [thought]
        calls: dict[int, dict[str, str]] = {}
        for delta in deltas:
            for call in delta.get("tool_calls") or ():
                entry = calls.setdefault(call["index"], {"id": "", "name": "", "args": ""})
                entry["id"] += call.get("id") or ""
                entry["name"] += call.get("function", {}).get("name") or ""
                entry["args"] += call.get("function", {}).get("arguments") or ""
        assert calls == {0: {"id": "toolu_A", "name": "get_weather", "args": '{"city":"Paris"}'},
                         1: {"id": "toolu_B", "name": "get_weather", "args": '{"city":"Rome"}'}}
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    async def test_mid_stream_error_event_breaks_the_stream(self, claude: FakeAnthropic,
                                                            session: Any) -> None:
        claude.then(claude_stream(claude_message(text_block("Hello from Claude")),
                                  error_after=4))
        got: list[dict[str, Any]] = []
        with pytest.raises(UpstreamError) as info:
            async for chunk in make(claude, session).stream(chat(stream=True)):
                got.append(chunk)
        assert info.value.kind is ErrorKind.OVERLOADED  # retryable: continuation may apply
        assert "Overloaded" in info.value.message
        assert got  # text had gone out before the error

    async def test_cut_stream_is_a_protocol_error(self, claude: FakeAnthropic,
                                                  session: Any) -> None:
        claude.then(claude_stream(claude_message(text_block("Hello from Claude")),
                                  cut_after=5))
        with pytest.raises(UpstreamError) as info:
            await collect(make(claude, session), chat(stream=True))
        assert info.value.kind is ErrorKind.PROTOCOL

    async def test_unknown_events_are_ignored(self, claude: FakeAnthropic,
                                              session: Any) -> None:
        events = [{"type": "message_start", "message": claude_message()},
                  {"type": "future_event", "x": 1},
                  {"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}},
                  {"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": "ok"}},
                  {"type": "content_block_delta", "index": 0,
                   "delta": {"type": "citations_delta", "citation": {}}},
                  {"type": "content_block_stop", "index": 0},
                  {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                   "usage": {"output_tokens": 1}},
                  {"type": "message_stop"}]
        claude.then(sse_reply(events, named=True))
        chunks = await collect(make(claude, session), chat(stream=True))
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "ok"


class TestErrors:
    """https://docs.anthropic.com/en/api/errors"""

    async def fail(self, claude: FakeAnthropic, session: Any, reply: Any,
                   stream: bool = False) -> UpstreamError:
        claude.then(reply)
        provider = make(claude, session)
        with pytest.raises(UpstreamError) as info:
            if stream:
                await collect(provider, chat(stream=True))
            else:
                await provider.chat(chat())
        return info.value

    async def test_429_with_retry_after(self, claude: FakeAnthropic, session: Any) -> None:
        err = await self.fail(claude, session, anthropic_error(
            429, "rate_limit_error", "Number of request tokens has exceeded your per-minute "
            "rate limit", {"retry-after": "17"}))
        assert (err.kind, err.status, err.retry_after) == (ErrorKind.RATE_LIMITED, 429, 17.0)

    async def test_429_reset_from_the_ratelimit_headers(self, claude: FakeAnthropic,
                                                        session: Any) -> None:
        reset = (datetime.now(UTC) + timedelta(seconds=40)).isoformat().replace("+00:00", "Z")
        err = await self.fail(claude, session, anthropic_error(429, "rate_limit_error", "slow", {
            "anthropic-ratelimit-requests-remaining": "12",
            "anthropic-ratelimit-input-tokens-remaining": "0",
            "anthropic-ratelimit-input-tokens-reset": reset}))
        assert err.kind is ErrorKind.RATE_LIMITED
        assert err.retry_after is not None and 35 < err.retry_after <= 40

    async def test_exhausted_budget_on_success_parks_the_model(self, claude: FakeAnthropic,
                                                               session: Any) -> None:
        reset = datetime.fromtimestamp(time.time() + 30, UTC).isoformat()

        async def reply(request: Any, body: Any) -> Any:
            return await json_reply(claude_message(text_block("ok")), headers={
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": reset,
                "anthropic-ratelimit-tokens-remaining": "5000"})(request, body)

        claude.then(reply)
        provider = make(claude, session)
        hints: list[RateLimitHint] = []
        provider.rate_limit_listener = hints.append
        await provider.chat(chat())
        [hint] = hints
        assert hint.remaining == 0 and hint.reset_after is not None and hint.reset_after > 25

    @pytest.mark.parametrize(("reply", "kind", "status"), [
        (anthropic_error(529, "overloaded_error", "Overloaded"), ErrorKind.OVERLOADED, 502),
        (anthropic_error(500, "api_error", "Internal server error"), ErrorKind.OVERLOADED, 502),
        (anthropic_error(504, "timeout_error", "Request timeout"), ErrorKind.TIMEOUT, 504),
        (anthropic_error(401, "authentication_error", "invalid x-api-key"), ErrorKind.AUTH, 502),
        (anthropic_error(403, "permission_error", "no access"), ErrorKind.AUTH, 502),
        (anthropic_error(402, "billing_error", "credit balance too low"), ErrorKind.AUTH, 502),
        (anthropic_error(413, "request_too_large", "Request exceeds the maximum size"),
         ErrorKind.CONTEXT_LENGTH, 413),
        (anthropic_error(400, "invalid_request_error",
                         "prompt is too long: 210123 tokens > 200000 maximum"),
         ErrorKind.CONTEXT_LENGTH, 400),
        (anthropic_error(404, "not_found_error", "model: claude-x"), ErrorKind.BAD_REQUEST, 404),
        (anthropic_error(400, "invalid_request_error", "messages.0: bad"),
         ErrorKind.BAD_REQUEST, 400),
    ], ids=["529", "500", "504", "401", "403", "402", "413", "prompt-too-long", "404", "400"])
    async def test_error_kinds(self, claude: FakeAnthropic, session: Any, reply: Any,
                               kind: ErrorKind, status: int) -> None:
        for stream in (False, True):
            err = await self.fail(claude, session, reply, stream=stream)
            assert (err.kind, err.status) == (kind, status), stream

    async def test_the_key_never_appears(self, claude: FakeAnthropic, session: Any) -> None:
        err = await self.fail(claude, session, anthropic_error(
            401, "authentication_error", f"invalid x-api-key {FakeAnthropic.KEY}"))
        assert FakeAnthropic.KEY not in str(err)


class TestNative:
    """The Messages API passed through (the /v1/messages front door's native path)."""

    async def test_messages_swaps_only_the_model(self, claude: FakeAnthropic,
                                                 session: Any) -> None:
        provider = make(claude, session)
        body = {"model": "anthropic/claude-sonnet-4-5", "max_tokens": 10, "top_k": 5,
                "messages": [{"role": "user", "content": "Hi"}]}
        answer = await provider.messages(body, orjson.dumps(body), {
            "anthropic-version": "2023-06-01", "anthropic-beta": "context-1m-2025-08-07"})
        assert answer["content"] == [text_block("Hello from Claude")]
        seen = claude.calls()[-1]
        assert seen.body == {**body, "model": "claude-sonnet-4-5"}
        assert seen.headers["anthropic-beta"] == "context-1m-2025-08-07"

    async def test_the_clients_bytes_when_the_model_id_matches(self, claude: FakeAnthropic,
                                                               session: Any) -> None:
        provider = make(claude, session)
        raw = b'{"model":"claude-sonnet-4-5", "max_tokens":10,"messages":[{"role":"user",' \
              b'"content":"Hi"}]}'
        await provider.messages(orjson.loads(raw), raw, {})
        assert claude.calls()[-1].body == orjson.loads(raw)

    async def test_stream_holds_events_until_the_first_delta(self, claude: FakeAnthropic,
                                                             session: Any) -> None:
        provider = make(claude, session)
        claude.then(claude_stream(claude_message(text_block("abc")), error_after=3))
        body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": True,
                "messages": [{"role": "user", "content": "Hi"}]}
        got: list[dict[str, Any]] = []
        with pytest.raises(UpstreamError):
            async for event in provider.messages_stream(body, orjson.dumps(body), {}):
                got.append(event)
        assert got == []  # message_start and the block start never left: failover is open
        events = [e async for e in provider.messages_stream(body, orjson.dumps(body), {})]
        assert [e["type"] for e in events][:3] == ["message_start", "content_block_start",
                                                   "content_block_delta"]
        assert events[-1]["type"] == "message_stop"

    async def test_count_tokens(self, claude: FakeAnthropic, session: Any) -> None:
        body = {"model": "x", "messages": [{"role": "user", "content": "Hi"}]}
        answer = await make(claude, session).count_tokens(body, orjson.dumps(body), {})
        assert answer == {"input_tokens": 42}
        assert claude.calls("messages/count_tokens")[-1].body["model"] == "claude-sonnet-4-5"


def test_the_docs_print_the_parameter_declaration() -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "providers" / "anthropic.md"
    assert CHAT_PARAMETERS.markdown() in page.read_text()
