"""The Messages API front door end to end: the official ``anthropic`` SDK against a real
aiproxy, served natively by a fake Anthropic API and, translated, by a fake OpenAI-compatible
one; failover between the two; Anthropic's errors. Shapes: https://docs.anthropic.com/en/api/messages,
.../messages-streaming, .../errors, .../messages-count-tokens.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import orjson
import pytest

from tests.anthropic_fakes import (
    FakeAnthropic,
    FakeChat,
    anthropic_error,
    chat_completion,
    chat_stream,
    claude_events,
    claude_message,
    claude_stream,
    text_block,
    thinking_block,
    tool_block,
)
from tests.conftest import TOKEN, Proxy, StartProxy, make_settings
from tests.provider_fakes import json_reply

CLAUDE = "claude-sonnet-4-5"
GPT = "gpt-4o"
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
       "AAAABJRU5ErkJggg==")
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}
HI = [{"role": "user", "content": "Hi"}]

# The SDK warns that claude-sonnet-4-5 is deprecated; the name is only a label here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def claude(aiohttp_server: Any) -> FakeAnthropic:
    return await FakeAnthropic.start(aiohttp_server)


@pytest.fixture
async def gpt(aiohttp_server: Any) -> FakeChat:
    return await FakeChat.start(aiohttp_server)


@pytest.fixture
async def proxy(start_proxy: StartProxy, claude: FakeAnthropic, gpt: FakeChat) -> Proxy:
    return await start_proxy({
        "models": [claude.model(CLAUDE, priority=1), gpt.model(GPT, priority=2)],
        "groups": {"pool": [CLAUDE, GPT]}})


@pytest.fixture
async def client(proxy: Proxy) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(base_url=proxy.url(""), api_key=TOKEN, max_retries=0)
    yield sdk
    await sdk.close()


async def raw_events(proxy: Proxy, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The ``(event name, data)`` pairs of a streamed answer, as they came on the wire."""
    async with proxy.http.post(proxy.url("/v1/messages"), json={**body, "stream": True},
                               headers={"x-api-key": TOKEN}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        text = (await resp.read()).decode()
    events = []
    for frame in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((lines["event"], orjson.loads(lines["data"])))
    return events


class TestNative:
    """A Claude model behind the door: the request goes through as Anthropic, untranslated."""

    async def test_plain(self, client: anthropic.AsyncAnthropic, claude: FakeAnthropic) -> None:
        claude.then(json_reply(claude_message(text_block("Hello!"), input_tokens=30,
                                              output_tokens=3, cache_read_input_tokens=1200)))
        raw = await client.messages.with_raw_response.create(
            model=CLAUDE, max_tokens=64, system=[{"type": "text", "text": "Be brief.",
                                                  "cache_control": {"type": "ephemeral"}}],
            messages=HI, metadata={"user_id": "u-1"}, extra_body={"top_k": 3})
        message = await raw.parse()
        assert message.content[0].text == "Hello!"  # type: ignore[union-attr]
        assert message.model == CLAUDE
        assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (30, 1200)
        assert raw.headers["x-aiproxy-provider"] == "anthropic"
        assert raw.headers["request-id"]
        [seen] = claude.calls()
        # The client's request, as sent: only the model id is the upstream's.
        assert seen.body == {"max_tokens": 64, "messages": HI, "model": CLAUDE,
                             "system": [{"type": "text", "text": "Be brief.",
                                         "cache_control": {"type": "ephemeral"}}],
                             "metadata": {"user_id": "u-1"}, "top_k": 3}
        assert seen.headers["x-api-key"] == FakeAnthropic.KEY
        assert seen.headers["anthropic-version"]  # the client's version, passed on

    async def test_stream_helper_and_exact_event_sequence(
            self, client: anthropic.AsyncAnthropic, claude: FakeAnthropic,
            proxy: Proxy) -> None:
        message = claude_message(thinking_block("Hmm."), text_block("Hello from Claude"),
                                 input_tokens=20, output_tokens=9)
        claude.always(claude_stream(message))
        async with client.messages.stream(model=CLAUDE, max_tokens=64, messages=HI) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
        assert text == "Hello from Claude"
        assert [b.type for b in final.content] == ["thinking", "text"]
        assert final.content[0].signature == message["content"][0]["signature"]  # type: ignore[union-attr]
        assert (final.usage.input_tokens, final.usage.output_tokens) == (20, 9)
        assert final.stop_reason == "end_turn" and final.model == CLAUDE
        events = await raw_events(proxy, {"model": CLAUDE, "max_tokens": 64, "messages": HI})
        upstream = [e for e in claude_events(message) if e["type"] != "ping"]
        assert [name for name, _ in events] == [e["type"] for e in upstream]
        assert all(name == data["type"] for name, data in events)
        assert events[0][1]["message"]["model"] == CLAUDE
        assert [d for _, d in events[1:]] == upstream[1:]  # passed through untouched

    async def test_tools_and_thinking_round_trip(self, client: anthropic.AsyncAnthropic,
                                                 claude: FakeAnthropic) -> None:
        thought = thinking_block("I should call get_weather.")
        claude.then(json_reply(claude_message(thought, tool_block("get_weather",
                                                                  {"city": "Paris"}),
                                              stop_reason="tool_use")))
        first = await client.messages.create(
            model=CLAUDE, max_tokens=2048, tools=[WEATHER],  # type: ignore[list-item]
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "Weather in Paris?"}])
        assert first.stop_reason == "tool_use"
        call = first.content[1]
        assert call.type == "tool_use" and call.input == {"city": "Paris"}
        history = [{"role": "user", "content": "Weather in Paris?"}, first.to_param(),
                   {"role": "user", "content": [{"type": "tool_result",
                                                 "tool_use_id": call.id, "content": "21C"}]}]
        second = await client.messages.create(model=CLAUDE, max_tokens=2048,
                                              tools=[WEATHER],  # type: ignore[list-item]
                                              thinking={"type": "enabled",
                                                        "budget_tokens": 1024},
                                              messages=history)  # type: ignore[arg-type]
        assert second.content[0].text == "Hello from Claude"  # type: ignore[union-attr]
        sent = claude.calls()[-1].body
        assert sent["messages"][1]["content"][0] == thought  # signature kept, untouched
        assert sent["tools"] == [WEATHER]

    async def test_images_go_through_as_sent(self, client: anthropic.AsyncAnthropic,
                                             claude: FakeAnthropic) -> None:
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}}
        await client.messages.create(model=CLAUDE, max_tokens=64, messages=[
            {"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}])
        assert claude.calls()[-1].body["messages"][0]["content"][0] == image

    async def test_count_tokens_passes_through(self, client: anthropic.AsyncAnthropic,
                                               claude: FakeAnthropic, proxy: Proxy) -> None:
        count = await client.messages.count_tokens(model=CLAUDE, messages=HI)
        assert count.input_tokens == 42
        [seen] = claude.calls("messages/count_tokens")
        assert seen.body == {"model": CLAUDE, "messages": HI}
        async with proxy.http.post(proxy.url("/v1/messages/count_tokens"), headers={
                "x-api-key": TOKEN}, json={"model": CLAUDE, "messages": HI}) as resp:
            assert resp.headers["x-aiproxy-token-count"] == "exact"


class TestTranslated:
    """An OpenAI-compatible model behind the door: translated to chat and back."""

    async def test_plain(self, client: anthropic.AsyncAnthropic, gpt: FakeChat) -> None:
        gpt.then(json_reply(chat_completion("Bonjour", usage={
            "prompt_tokens": 50, "completion_tokens": 4, "total_tokens": 54,
            "prompt_tokens_details": {"cached_tokens": 32}})))
        message = await client.messages.create(
            model=GPT, max_tokens=100, system="Answer in French.", stop_sequences=["END"],
            metadata={"user_id": "u-7"}, messages=HI,
            # This SDK release dropped temperature (the newest models refuse it); older
            # clients and models still send it.
            extra_body={"temperature": 0.2})
        assert message.content[0].text == "Bonjour"  # type: ignore[union-attr]
        assert message.model == GPT and message.stop_reason == "end_turn"
        assert message.id.startswith("msg_")
        assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
                message.usage.output_tokens) == (18, 32, 4)
        [seen] = gpt.seen
        assert seen.body == {"model": GPT, "max_tokens": 100, "temperature": 0.2,
                             "stop": ["END"], "user": "u-7", "messages": [
                                 {"role": "system", "content": "Answer in French."},
                                 {"role": "user", "content": "Hi"}]}

    async def test_stream_helper(self, client: anthropic.AsyncAnthropic, gpt: FakeChat,
                                 proxy: Proxy) -> None:
        gpt.always(chat_stream(["Hello", " from", " GPT"], reasoning=["Let me ", "think."]))
        async with client.messages.stream(model=GPT, max_tokens=64, messages=HI) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
        assert text == "Hello from GPT"
        assert [b.type for b in final.content] == ["thinking", "text"]
        assert final.content[0].thinking == "Let me think."  # type: ignore[union-attr]
        assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 7)
        assert gpt.seen[0].body["stream_options"] == {"include_usage": True}
        names = [name for name, _ in await raw_events(proxy, {
            "model": GPT, "max_tokens": 64, "messages": HI})]
        assert names == ["message_start",
                         "content_block_start", *["content_block_delta"] * 2,
                         "content_block_stop",
                         "content_block_start", *["content_block_delta"] * 3,
                         "content_block_stop", "message_delta", "message_stop"]

    async def test_tools_plain_and_streamed(self, client: anthropic.AsyncAnthropic,
                                            gpt: FakeChat) -> None:
        call = {"id": "call_abc", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        gpt.then(json_reply(chat_completion(None, tool_calls=[call], finish="tool_calls")))
        first = await client.messages.create(model=GPT, max_tokens=64,
                                             tools=[WEATHER],  # type: ignore[list-item]
                                             tool_choice={"type": "any"},
                                             messages=[{"role": "user", "content": "Paris?"}])
        assert first.stop_reason == "tool_use"
        [use] = first.content
        assert (use.type, use.id, use.name, use.input) == (  # type: ignore[union-attr]
            "tool_use", "call_abc", "get_weather", {"city": "Paris"})
        sent = gpt.seen[-1].body
        assert sent["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "description": WEATHER["description"],
            "parameters": WEATHER["input_schema"]}}]
        assert sent["tool_choice"] == "required"
        # Streamed: the arguments arrive in fragments, as input_json_delta events.
        gpt.then(chat_stream([], finish="tool_calls", tool_calls=[
            {"index": 0, "id": "call_xyz", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}},
            {"index": 0, "function": {"arguments": '{"ci'}},
            {"index": 0, "function": {"arguments": 'ty": "Rome"}'}}]))
        async with client.messages.stream(model=GPT, max_tokens=64,
                                          tools=[WEATHER],  # type: ignore[list-item]
                                          messages=[{"role": "user", "content": "Rome?"}]
                                          ) as stream:
            final = await stream.get_final_message()
        assert final.stop_reason == "tool_use"
        assert final.content[0].input == {"city": "Rome"}  # type: ignore[union-attr]
        # The tool result goes back as a tool message right after the call.
        await client.messages.create(model=GPT, max_tokens=64, messages=[
            {"role": "user", "content": "Paris?"}, first.to_param(),
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_abc", "content": "21C"},
                {"type": "text", "text": "And tomorrow?"}]}])  # type: ignore[list-item]
        assert gpt.seen[-1].body["messages"] == [
            {"role": "user", "content": "Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_abc", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_abc", "content": "21C"},
            {"role": "user", "content": "And tomorrow?"}]

    async def test_images(self, client: anthropic.AsyncAnthropic, gpt: FakeChat) -> None:
        await client.messages.create(model=GPT, max_tokens=64, messages=[{"role": "user",
            "content": [{"type": "image", "source": {"type": "base64",
                                                     "media_type": "image/png", "data": PNG}},
                        {"type": "image", "source": {"type": "url",
                                                     "url": "https://example.com/a.jpg"}},
                        {"type": "text", "text": "Compare."}]}])
        assert gpt.seen[-1].body["messages"][0]["content"] == [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
            {"type": "text", "text": "Compare."}]

    async def test_count_tokens_is_an_estimate(self, proxy: Proxy, gpt: FakeChat) -> None:
        body = {"model": GPT, "messages": [{"role": "user", "content": "x" * 400}]}
        async with proxy.http.post(proxy.url("/v1/messages/count_tokens"), json=body,
                                   headers={"x-api-key": TOKEN}) as resp:
            assert resp.status == 200
            assert resp.headers["x-aiproxy-token-count"] == "estimate"
            assert await resp.json() == {"input_tokens": 104}  # 400 chars / 4 + 4 framing
        assert not gpt.seen

    async def test_upstream_errors_are_typed(self, client: anthropic.AsyncAnthropic,
                                             gpt: FakeChat) -> None:
        gpt.then(json_reply({"error": {"message": "Invalid 'messages[0]'", "type":
                                       "invalid_request_error", "code": "invalid_value"}}, 400),
                 json_reply({"error": {"message": "Rate limit reached", "type": "requests",
                                       "code": "rate_limit_exceeded"}}, 429,
                            {"Retry-After": "40"}))
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(model=GPT, max_tokens=8, messages=HI)
        assert "Invalid 'messages[0]'" in bad.value.message
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client.messages.create(model=GPT, max_tokens=8, messages=HI)
        assert limited.value.type == "rate_limit_error"
        assert int(limited.value.response.headers["retry-after"]) >= 39
        assert FakeChat.KEY not in str(bad.value.body) + str(limited.value.body)

    async def test_anthropic_only_features_are_a_clear_400(
            self, client: anthropic.AsyncAnthropic, gpt: FakeChat) -> None:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(model=GPT, max_tokens=64, messages=HI, tools=[
                {"type": "web_search_20250305", "name": "web_search"}])  # type: ignore[list-item]
        assert info.value.type == "invalid_request_error"
        assert "web_search_20250305" in info.value.message
        assert not gpt.seen


class TestFailover:
    async def test_overloaded_claude_falls_over_to_gpt(self, client: anthropic.AsyncAnthropic,
                                                       claude: FakeAnthropic,
                                                       gpt: FakeChat) -> None:
        claude.always(anthropic_error(529, "overloaded_error", "Overloaded"))
        message = await client.messages.create(model="pool", max_tokens=64, messages=HI)
        assert message.model == GPT
        assert message.content[0].text == "Hello from GPT"  # type: ignore[union-attr]
        async with client.messages.stream(model="pool", max_tokens=64, messages=HI) as stream:
            assert await stream.get_final_text() == "Hello from GPT"
        assert claude.calls() and len(gpt.seen) == 2

    async def test_failing_gpt_falls_over_to_claude(self, start_proxy: StartProxy,
                                                    claude: FakeAnthropic,
                                                    gpt: FakeChat) -> None:
        gpt.always(json_reply({"error": {"message": "boom", "type": "server_error"}}, 500))
        proxy = await start_proxy({"models": [gpt.model(GPT, priority=1),
                                              claude.model(CLAUDE, priority=2)],
                                   "groups": {"pool": [GPT, CLAUDE]}})
        async with anthropic.AsyncAnthropic(base_url=proxy.url(""), api_key=TOKEN,
                                            max_retries=0) as sdk:
            message = await sdk.messages.create(model="pool", max_tokens=64, messages=HI)
            async with sdk.messages.stream(model="pool", max_tokens=64,
                                           messages=HI) as stream:
                text = await stream.get_final_text()
        assert message.model == CLAUDE and text == "Hello from Claude"
        assert claude.calls()[0].body["messages"] == HI  # natively, as the client sent it

    async def test_a_failure_before_the_first_token_falls_over_invisibly(
            self, client: anthropic.AsyncAnthropic, claude: FakeAnthropic,
            gpt: FakeChat) -> None:
        # The upstream began its stream, then failed before any content: nothing had reached
        # the client, so the next candidate answers.
        claude.always(claude_stream(claude_message(text_block("Hi")), error_after=3))
        async with client.messages.stream(model="pool", max_tokens=64, messages=HI) as stream:
            assert await stream.get_final_text() == "Hello from GPT"


class TestErrors:
    """Anthropic's envelope and statuses, so the SDK raises its typed exceptions."""

    async def test_authentication(self, proxy: Proxy) -> None:
        async with anthropic.AsyncAnthropic(base_url=proxy.url(""), api_key="wrong",
                                            max_retries=0) as sdk:
            with pytest.raises(anthropic.AuthenticationError) as info:
                await sdk.messages.create(model=CLAUDE, max_tokens=8, messages=HI)
        assert info.value.type == "authentication_error"
        assert info.value.body["type"] == "error"  # type: ignore[index]
        # Authorization: Bearer works too, as for the OpenAI API; no key is a 401 as well.
        body = {"model": CLAUDE, "max_tokens": 8, "messages": HI}
        async with proxy.http.post(proxy.url("/v1/messages"), json=body,
                                   headers=proxy.auth) as resp:
            assert resp.status == 200
        async with proxy.http.post(proxy.url("/messages"), json=body) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["type"] == "authentication_error"

    async def test_invalid_requests(self, client: anthropic.AsyncAnthropic,
                                    proxy: Proxy) -> None:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(model=CLAUDE, max_tokens=-1, messages=HI)
        assert "max_tokens" in info.value.message
        for body, needle in ((b"{", "not valid JSON"),
                             (orjson.dumps({"model": CLAUDE, "messages": HI}), "max_tokens"),
                             (orjson.dumps({"model": CLAUDE, "max_tokens": 5,
                                            "messages": [{"role": "bot", "content": "x"}]}),
                              "messages.0.role")):
            async with proxy.http.post(proxy.url("/v1/messages"), data=body, headers={
                    "x-api-key": TOKEN, "Content-Type": "application/json"}) as resp:
                assert resp.status == 400
                err = await resp.json()
                assert err["type"] == "error"
                assert err["error"]["type"] == "invalid_request_error"
                assert needle in err["error"]["message"]
        async with proxy.http.get(proxy.url("/v1/messages"), headers={"x-api-key": TOKEN}
                                  ) as resp:
            assert resp.status == 405
            assert (await resp.json())["error"]["type"] == "invalid_request_error"

    async def test_a_client_key_and_its_models(self, start_proxy: StartProxy,
                                               claude: FakeAnthropic, gpt: FakeChat) -> None:
        key = "team-key-0123456789abcdef"
        proxy = await start_proxy({"models": [claude.model(CLAUDE), gpt.model(GPT)],
                                   "keys": [{"name": "team", "key": key, "models": [GPT],
                                             "requests_per_minute": 1}]})
        async with anthropic.AsyncAnthropic(base_url=proxy.url(""), api_key=key,
                                            max_retries=0) as sdk:
            with pytest.raises(anthropic.PermissionDeniedError) as denied:
                await sdk.messages.create(model=CLAUDE, max_tokens=8, messages=HI)
            with pytest.raises(anthropic.PermissionDeniedError):
                await sdk.messages.count_tokens(model=CLAUDE, messages=HI)
            assert (await sdk.messages.create(model=GPT, max_tokens=8, messages=HI)).model == GPT
            with pytest.raises(anthropic.RateLimitError) as limited:  # the key's own limit
                await sdk.messages.create(model=GPT, max_tokens=8, messages=HI)
        assert denied.value.type == "permission_error"
        assert limited.value.response.headers["retry-after"]
        assert not claude.seen and len(gpt.seen) == 1

    async def test_unknown_model(self, client: anthropic.AsyncAnthropic) -> None:
        with pytest.raises(anthropic.NotFoundError) as info:
            await client.messages.create(model="nope", max_tokens=8, messages=HI)
        assert info.value.type == "not_found_error"

    async def test_overloaded_everywhere_is_a_529(self, client: anthropic.AsyncAnthropic,
                                                  claude: FakeAnthropic) -> None:
        claude.always(anthropic_error(529, "overloaded_error", "Overloaded"))
        with pytest.raises(anthropic.OverloadedError) as info:
            await client.messages.create(model=CLAUDE, max_tokens=8, messages=HI)
        assert info.value.status_code == 529
        assert info.value.type == "overloaded_error"
        assert len(claude.calls()) == 3  # the retries ran first (1 + RETRY_MAX_RETRIES)

    async def test_rate_limited_with_retry_after(self, client: anthropic.AsyncAnthropic,
                                                 claude: FakeAnthropic) -> None:
        claude.always(anthropic_error(429, "rate_limit_error", "slow down",
                                      {"retry-after": "30"}))
        with pytest.raises(anthropic.RateLimitError) as info:
            await client.messages.create(model=CLAUDE, max_tokens=8, messages=HI)
        assert info.value.type == "rate_limit_error"
        assert int(info.value.response.headers["retry-after"]) >= 29

    async def test_upstream_client_error_is_relayed(self, client: anthropic.AsyncAnthropic,
                                                    claude: FakeAnthropic) -> None:
        claude.then(anthropic_error(400, "invalid_request_error",
                                    "prompt is too long: 210000 tokens > 200000 maximum"))
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(model=CLAUDE, max_tokens=8, messages=HI)
        assert "prompt is too long" in info.value.message
        assert FakeAnthropic.KEY not in str(info.value.body)

    async def test_mid_stream_error_event(self, client: anthropic.AsyncAnthropic,
                                          claude: FakeAnthropic, proxy: Proxy) -> None:
        claude.always(claude_stream(claude_message(text_block("Hello from Claude")),
                                    error_after=5))
        got = []
        with pytest.raises(anthropic.APIStatusError) as info:
            async with client.messages.stream(model=CLAUDE, max_tokens=8,
                                              messages=HI) as stream:
                async for piece in stream.text_stream:
                    got.append(piece)
        assert got  # the answer had begun: the stream ends with an error event
        assert info.value.type == "overloaded_error"
        events = await raw_events(proxy, {"model": CLAUDE, "max_tokens": 8, "messages": HI})
        assert events[-1][0] == "error"
        assert events[-1][1]["error"]["type"] == "overloaded_error"
        assert "message_stop" not in [name for name, _ in events]

    async def test_body_too_large(self, start_proxy: StartProxy,
                                  claude: FakeAnthropic) -> None:
        proxy = await start_proxy({"models": [claude.model(CLAUDE)]},
                                  settings=make_settings(max_body_size=1024))
        async with anthropic.AsyncAnthropic(base_url=proxy.url(""), api_key=TOKEN,
                                            max_retries=0) as sdk:
            with pytest.raises(anthropic.APIStatusError) as info:
                await sdk.messages.create(model=CLAUDE, max_tokens=8, messages=[
                    {"role": "user", "content": "x" * 5000}])
        assert info.value.status_code == 413
        assert info.value.type == "request_too_large"


def test_no_warnings_leak() -> None:
    # The module-level filter is only for the SDK's deprecation notice on the model name.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert anthropic.__version__
