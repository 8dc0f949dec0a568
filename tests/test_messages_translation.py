"""The Messages door's translations, unit by unit, in Anthropic's documented shapes
(https://docs.anthropic.com/en/api/messages, .../messages-streaming) and OpenAI's
(https://platform.openai.com/docs/api-reference/chat)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from aiproxy.errors import ProxyError
from aiproxy.frontdoor.anthropic.request import (
    MessagesRequest,
    chat_request,
    native_body,
    parse_messages_request,
)
from aiproxy.frontdoor.anthropic.response import EventTranslator, message_from_chat
from aiproxy.frontdoor.anthropic.stream import MessagesEvents
from aiproxy.frontdoor.anthropic.tokens import estimate_input_tokens
from aiproxy.provider import ErrorKind, UpstreamError


def request(stream: bool = False, **body: Any) -> MessagesRequest:
    body.setdefault("model", "m")
    body.setdefault("max_tokens", 100)
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    if stream:
        body["stream"] = True
    return parse_messages_request(body, orjson.dumps(body), {})


def chat_body(**body: Any) -> dict[str, Any]:
    return dict(chat_request(request(**body)).body)


class TestToChat:
    def test_system_blocks_and_the_basics(self) -> None:
        body = chat_body(system=[{"type": "text", "text": "One."},
                                 {"type": "text", "text": "Two.",
                                  "cache_control": {"type": "ephemeral"}}],
                         top_p=0.5, top_k=40, stream=True)
        assert body["messages"][0] == {"role": "system", "content": "One.\n\nTwo."}
        assert (body["top_p"], body["top_k"], body["max_tokens"]) == (0.5, 40, 100)
        assert body["stream_options"] == {"include_usage": True}  # a Messages stream has usage

    def test_tool_results_errors_and_their_images(self) -> None:
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "AAAA"}}
        body = chat_body(messages=[
            {"role": "user", "content": "Look"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "x", "signature": "s"},
                {"type": "text", "text": "Taking a screenshot."},
                {"type": "tool_use", "id": "t1", "name": "shot", "input": {}},
                {"type": "tool_use", "id": "t2", "name": "ls", "input": {"dir": "/"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1",
                 "content": [{"type": "text", "text": "here"}, image]},
                {"type": "tool_result", "tool_use_id": "t2", "content": "denied",
                 "is_error": True}]}])
        assert body["messages"][1:] == [
            {"role": "assistant", "content": "Taking a screenshot.", "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "shot",
                                                              "arguments": "{}"}},
                {"id": "t2", "type": "function", "function": {"name": "ls",
                                                              "arguments": '{"dir":"/"}'}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "here"},
            {"role": "tool", "tool_call_id": "t2", "content": "Error: denied"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {
                "url": "data:image/png;base64,AAAA"}}]}]

    def test_documents(self) -> None:
        body = chat_body(messages=[{"role": "user", "content": [
            {"type": "document", "title": "a.pdf", "source": {
                "type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": "plain words"}}]}])
        assert body["messages"][0]["content"] == [
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE",
                                      "filename": "a.pdf"}},
            {"type": "text", "text": "plain words"}]
        with pytest.raises(UpstreamError, match="can only go to Anthropic"):
            chat_body(messages=[{"role": "user", "content": [{"type": "document", "source": {
                "type": "url", "url": "https://example.com/a.pdf"}}]}])

    def test_tool_choice_and_parallel(self) -> None:
        tool = {"name": "f", "input_schema": {"type": "object"}}
        for choice, expected in (({"type": "auto"}, "auto"), ({"type": "any"}, "required"),
                                 ({"type": "none"}, "none"),
                                 ({"type": "tool", "name": "f"},
                                  {"type": "function", "function": {"name": "f"}})):
            assert chat_body(tools=[tool], tool_choice=choice)["tool_choice"] == expected
        body = chat_body(tools=[tool], tool_choice={"type": "auto",
                                                    "disable_parallel_tool_use": True})
        assert body["parallel_tool_calls"] is False
        assert body["tools"] == [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object"}}}]

    @pytest.mark.parametrize(("thinking", "output_config", "effort"), [
        ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
        ({"type": "enabled", "budget_tokens": 8000}, None, "medium"),
        ({"type": "enabled", "budget_tokens": 32000}, None, "high"),
        ({"type": "adaptive"}, {"effort": "max"}, "xhigh"),
        ({"type": "adaptive"}, None, "medium"),
        ({"type": "disabled"}, None, None)])
    def test_thinking_as_reasoning_effort(self, thinking: Any, output_config: Any,
                                          effort: str | None) -> None:
        extra = {"output_config": output_config} if output_config else {}
        assert chat_body(thinking=thinking, **extra).get("reasoning_effort") == effort

    def test_structured_output(self) -> None:
        schema = {"type": "object", "properties": {"a": {"type": "string"}}}
        body = chat_body(output_config={"format": {"type": "json_schema", "schema": schema}})
        assert body["response_format"] == {"type": "json_schema", "json_schema": {
            "name": "output", "schema": schema}}

    def test_what_only_anthropic_can_do_is_refused(self) -> None:
        with pytest.raises(UpstreamError) as info:
            chat_body(tools=[{"type": "bash_20250124", "name": "bash"}])
        assert info.value.kind is ErrorKind.BAD_REQUEST
        with pytest.raises(UpstreamError, match="max_tokens: 0"):
            chat_body(max_tokens=0)
        with pytest.raises(UpstreamError, match="mcp_servers"):
            chat_body(mcp_servers=[{"type": "url", "url": "https://x", "name": "x"}])

    def test_validation(self) -> None:
        for body, needle in (({"model": "m", "messages": []}, "messages"),
                             ({"model": "", "max_tokens": 1, "messages": [{}]}, "model"),
                             ({"model": "m", "max_tokens": 1, "messages": [
                                 {"role": "user", "content": 5}]}, "messages.0.content"),
                             ({"model": "m", "max_tokens": 1, "messages": [
                                 {"role": "user", "content": [{"text": "x"}]}]},
                              "messages.0.content.0"),
                             ({"model": "m", "max_tokens": 1, "temperature": "hot",
                               "messages": [{"role": "user", "content": "x"}]},
                              "temperature"),
                             ({"model": "m", "max_tokens": True,
                               "messages": [{"role": "user", "content": "x"}]},
                              "max_tokens")):
            with pytest.raises(ProxyError) as info:
                parse_messages_request(body, orjson.dumps(body), {})
            assert info.value.status == 400
            assert needle in info.value.message

    def test_native_body_drops_unsigned_thinking(self) -> None:
        signed = {"type": "thinking", "thinking": "a", "signature": "sig"}
        untouched = request(messages=[{"role": "user", "content": "Hi"},
                                      {"role": "assistant", "content": [signed]},
                                      {"role": "user", "content": "more"}])
        assert native_body(untouched) == (untouched.body, untouched.raw)  # same bytes
        mixed = request(messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "gpt's",
                                               "signature": ""},
                                              {"type": "text", "text": "Answer"}]},
            {"role": "user", "content": "more"}])
        body, raw = native_body(mixed)
        assert body["messages"][1]["content"] == [{"type": "text", "text": "Answer"}]
        assert orjson.loads(raw) == body


class TestFromChat:
    def test_message(self) -> None:
        data = {"choices": [{"index": 0, "finish_reason": "length", "message": {
            "role": "assistant", "content": "Cut", "reasoning_content": "thought"}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
                      "prompt_tokens_details": {"cached_tokens": 60}}}
        message = message_from_chat(data, "gpt")
        assert message["content"] == [
            {"type": "thinking", "thinking": "thought", "signature": ""},
            {"type": "text", "text": "Cut"}]
        assert (message["stop_reason"], message["model"], message["type"]) == (
            "max_tokens", "gpt", "message")
        assert message["usage"] == {"input_tokens": 40, "output_tokens": 5,
                                    "cache_read_input_tokens": 60}

    def test_tool_arguments_that_are_not_an_object(self) -> None:
        data = {"choices": [{"finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "tool_calls": [{
                "id": "c", "type": "function",
                "function": {"name": "f", "arguments": "not json"}}]}}]}
        with pytest.raises(UpstreamError) as info:
            message_from_chat(data, "gpt")
        assert info.value.kind is ErrorKind.PROTOCOL  # another candidate may do better


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class TestEvents:
    def test_interleaved_tool_calls_and_missing_usage(self) -> None:
        translator = EventTranslator("gpt")
        events = []
        for c in (chunk({"role": "assistant", "content": ""}),
                  chunk({"content": "Two calls."}),
                  chunk({"tool_calls": [{"index": 0, "id": "a", "function": {
                      "name": "f", "arguments": '{"x":'}}]}),
                  chunk({"tool_calls": [{"index": 1, "id": "b", "function": {
                      "name": "g", "arguments": "{}"}}]}),
                  chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
                  chunk({}, "tool_calls")):
            events += translator.feed(c)
        events += translator.finish(prompt_estimate=30)
        kinds = [e["type"] for e in events]
        assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
        starts = [e for e in events if e["type"] == "content_block_start"]
        assert [(e["index"], e["content_block"]["type"]) for e in starts] == [
            (0, "text"), (1, "tool_use"), (2, "tool_use")]
        # The late fragment of the first call names its own block.
        late = [e for e in events if e["type"] == "content_block_delta"
                and e["delta"].get("partial_json") == "1}"]
        assert late[0]["index"] == 1
        assert events[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
        # No usage chunk came: the estimate stands in (the prompt, the text at ~4 chars).
        chars = len("Two calls.") + len('{"x":') + len("{}") + len("1}")
        assert events[-2]["usage"] == {"input_tokens": 30, "output_tokens": chars // 4}

    def test_lens_counts_and_settles_a_broken_stream(self) -> None:
        lens = MessagesEvents()
        start = {"type": "message_start", "message": {
            "model": "claude-x", "usage": {"input_tokens": 50, "output_tokens": 1,
                                           "cache_read_input_tokens": 10}}}
        assert lens.rewrite(start, "configured/name")
        assert start["message"]["model"] == "configured/name"
        lens.rewrite({"type": "content_block_delta", "index": 0,
                      "delta": {"type": "text_delta", "text": "x" * 40}}, "m")
        # Broken here: input as reported, output at least what was relayed.
        assert lens.usage is not None
        assert (lens.usage["prompt_tokens"], lens.usage["completion_tokens"]) == (60, 10)
        lens.rewrite({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                      "usage": {"output_tokens": 12}}, "m")
        assert lens.usage["completion_tokens"] == 12
        assert lens.usage["prompt_tokens_details"] == {"cached_tokens": 10}


class TestEstimate:
    def test_rules(self) -> None:
        pdf = base64.b64encode(b"%PDF-1.7 /Type /Pages /Type /Page x /Type/Page y").decode()
        body = {"system": "s" * 40, "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "t" * 80},
                {"type": "image", "source": {"type": "url", "url": "https://x"}},
                {"type": "document", "source": {"type": "base64",
                                                "media_type": "application/pdf",
                                                "data": pdf}}]}]}
        # 120 chars / 4 + 4 framing + 1600 image + 2 pages x 2000
        assert estimate_input_tokens(body) == 30 + 4 + 1600 + 4000
        tools = [{"name": "f", "input_schema": {"type": "object"}}]
        with_tools = estimate_input_tokens({**body, "tools": tools})
        assert with_tools == (120 + len(orjson.dumps(tools))) // 4 + 4 + 1600 + 4000 + 346
