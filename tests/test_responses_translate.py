"""The Responses and legacy completions translations, piece by piece: requests to chat, chat
answers and streams to Responses objects and events, the passthrough body, truncation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from aiproxy.errors import ProxyError
from aiproxy.frontdoor import completions
from aiproxy.frontdoor.responses import (
    ResponseEvents,
    Stored,
    Turn,
    from_chat,
    parse_request,
    to_chat,
    translate_stream,
)
from aiproxy.frontdoor.responses.convert import next_drop
from aiproxy.frontdoor.responses.passthrough import native_body
from aiproxy.provider import ErrorKind, UpstreamError


def turn(body: dict[str, Any], context: tuple[dict[str, Any], ...] | None = None) -> Turn:
    request = parse_request({"model": "m", **body}, orjson.dumps(body))
    return Turn(request, request.input if context is None else context + request.input)


def chat_of(body: dict[str, Any]) -> dict[str, Any]:
    return dict(to_chat(turn(body), stream=False).body)


class TestRequest:
    def test_items_get_ids_and_plain_shapes(self):
        request = parse_request({"model": "m", "input": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
            {"type": "reasoning", "id": "rs_1", "summary": []}]}, b"")
        kinds = [(i["type"], i["id"][:3]) for i in request.input]
        assert kinds == [("message", "msg"), ("message", "msg"), ("function_call", "fc_"),
                         ("function_call_output", "fco"), ("reasoning", "rs_")]
        assert request.input[0]["content"] == [{"type": "input_text", "text": "hi"}]
        assert request.input[1]["content"][0]["type"] == "output_text"
        assert request.native_only is None
        assert request.store and not request.stream

    @pytest.mark.parametrize(("body", "reason"), [
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools of type 'web_search'"),
        ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]},
         "input items of type 'computer_call_output'"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f",
                                                  "detail": "auto"}]}]}, "images by file_id"),
        ({"input": "x", "tool_choice": {"type": "file_search"}},
         "tool_choice of type 'file_search'"),
        ({"prompt": {"id": "pmpt_1"}}, "stored prompts ('prompt')"),
    ])
    def test_what_only_a_native_upstream_serves(self, body, reason):
        assert parse_request({"model": "m", **body}, b"").native_only == reason

    @pytest.mark.parametrize(("body", "param"), [
        ({"input": 3}, "input"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "stream": "yes"}, "stream"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        ({"input": [{"role": "user", "content": [{"type": "output_audio"}]}]},
         "input[0].content[0].type"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
         "text.format"),
        ({"input": "x", "metadata": {"k": 1}}, "metadata"),
        ({"input": "x", "truncation": "sometimes"}, "truncation"),
    ])
    def test_bad_fields_name_themselves(self, body, param):
        with pytest.raises(ProxyError) as err:
            parse_request({"model": "m", **body}, b"")
        assert err.value.status == 400
        assert err.value.param == param


class TestToChat:
    def test_messages_tools_and_settings(self):
        chat = chat_of({
            "instructions": "sys", "input": [
                {"role": "developer", "content": "dev rules"},
                {"role": "user", "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
                    {"type": "input_file", "file_data": "data:application/pdf;base64,AA",
                     "filename": "a.pdf"}]},
                {"role": "assistant", "content": [{"type": "output_text", "text": "I will"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2",
                 "output": [{"type": "input_text", "text": "two"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []}],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}},
                      {"type": "function", "name": "g", "description": "G"}],
            "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": False,
            "temperature": 0.5, "top_p": 0.9, "max_output_tokens": 99,
            "reasoning": {"effort": "high", "summary": "auto"}, "safety_identifier": "u1",
            "include": ["message.output_text.logprobs"], "top_logprobs": 3,
            "metadata": {"a": "b"}, "store": False})
        assert chat["messages"] == [
            {"role": "system", "content": "sys"},
            {"role": "system", "content": "dev rules"},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,AA",
                                          "filename": "a.pdf"}}]},
            {"role": "assistant", "content": "I will", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "one"},
            {"role": "tool", "tool_call_id": "c2", "content": "two"}]
        assert chat["tools"] == [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "g", "description": "G"}}]
        assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
        assert chat["parallel_tool_calls"] is False
        assert (chat["temperature"], chat["top_p"], chat["max_completion_tokens"]) == (
            0.5, 0.9, 99)
        assert chat["reasoning_effort"] == "high"
        assert chat["user"] == "u1"
        assert (chat["logprobs"], chat["top_logprobs"]) == (True, 3)
        assert not {"metadata", "store", "include", "instructions", "input"} & chat.keys()

    def test_allowed_tools_offers_only_those(self):
        chat = chat_of({"input": "x", "tools": [
            {"type": "function", "name": "a"}, {"type": "function", "name": "b"}],
            "tool_choice": {"type": "allowed_tools", "mode": "required",
                            "tools": [{"type": "function", "name": "b"}]}})
        assert [t["function"]["name"] for t in chat["tools"]] == ["b"]
        assert chat["tool_choice"] == "required"

    def test_stream_asks_for_usage(self):
        chat = to_chat(turn({"input": "x"}), stream=True).body
        assert chat["stream"] is True
        assert chat["stream_options"] == {"include_usage": True}


class TestFromChat:
    def test_reasoning_text_and_calls(self):
        t = turn({"input": "x", "metadata": {"k": "v"}})
        response = from_chat(t, {"choices": [{"finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me check.", "reasoning_content": "think",
            "tool_calls": [{"id": "c9", "type": "function",
                            "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}, "m1")
        assert [o["type"] for o in response["output"]] == ["reasoning", "message",
                                                           "function_call"]
        assert response["output"][0]["content"] == [{"type": "reasoning_text",
                                                     "text": "think"}]
        assert response["output"][2]["call_id"] == "c9"
        assert response["status"] == "completed"
        assert response["model"] == "m1"
        assert response["metadata"] == {"k": "v"}
        assert response["usage"]["total_tokens"] == 11
        assert response["id"] == t.id

    def test_refusal_and_content_filter(self):
        response = from_chat(turn({"input": "x"}), {"choices": [{
            "finish_reason": "content_filter",
            "message": {"role": "assistant", "content": None, "refusal": "No."}}]}, "m")
        assert response["output"][0]["content"] == [{"type": "refusal", "refusal": "No."}]
        assert response["status"] == "incomplete"
        assert response["incomplete_details"] == {"reason": "content_filter"}


async def events_of(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async def source():
        for chunk in chunks:
            yield chunk

    lens = ResponseEvents()
    out = []
    async for event in translate_stream(turn({"input": "x"}), source(), "m"):
        lens.rewrite(event, "m")
        out.append(event)
    return out


def delta(**d: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": d, "finish_reason": None}]}


class TestStreamEvents:
    async def test_reasoning_then_text_then_a_call(self):
        events = await events_of([
            delta(role="assistant", content=""), delta(reasoning_content="hmm "),
            delta(reasoning_content="ok"), delta(content="Hi"),
            delta(tool_calls=[{"index": 0, "id": "c1", "function": {"name": "f",
                                                                  "arguments": "{\"a\""}}]),
            delta(tool_calls=[{"index": 0, "function": {"arguments": ":1}"}}]),
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
            {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}])
        kinds = [e["type"] for e in events]
        assert kinds == [
            "response.created", "response.in_progress",
            "response.output_item.added", "response.content_part.added",
            "response.reasoning_text.delta", "response.reasoning_text.delta",
            "response.reasoning_text.done", "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added", "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done", "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added", "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done", "response.output_item.done",
            "response.completed"]
        assert [e.get("output_index") for e in events if e["type"].endswith("item.added")] == [
            0, 1, 2]
        final = events[-1]["response"]
        assert final["output"][0]["content"][0]["text"] == "hmm ok"
        assert final["output"][2]["arguments"] == '{"a":1}'
        assert final["usage"]["output_tokens"] == 2
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        # An event already sent is never changed by a later delta.
        added = next(e for e in events if e["type"] == "response.output_item.added"
                     and e["item"]["type"] == "function_call")
        assert added["item"]["arguments"] == ""

    async def test_an_empty_answer_is_one_empty_message(self):
        events = await events_of([delta(role="assistant", content=""), {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}])
        final = events[-1]["response"]
        assert final["output"][0]["content"][0]["text"] == ""
        assert events[-1]["type"] == "response.completed"

    async def test_failure_keeps_what_was_done(self):
        events = await events_of([delta(content="Hi"), {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}])
        lens = ResponseEvents()
        for event in events[:-1]:  # the stream broke before response.completed
            lens.rewrite(event, "m")
        end = lens.failure(UpstreamError(ErrorKind.TIMEOUT, "stalled", code="upstream_timeout"))
        assert [e["type"] for e in end] == ["error", "response.failed"]
        assert end[0]["code"] == "upstream_timeout"
        failed = end[1]["response"]
        assert failed["status"] == "failed"
        assert failed["output"][0]["content"][0]["text"] == "Hi"
        assert end[1]["sequence_number"] == len(events)


class TestTruncation:
    def test_drops_whole_turns_and_never_the_new_input(self):
        history = []
        for i in range(4):
            history += [{"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": f"q{i}"}]},
                {"type": "function_call", "call_id": f"c{i}", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": f"c{i}", "output": "r"}]
        t = turn({"input": "now"}, tuple(history))
        first = next_drop(t, 0)
        assert first == 6  # half of 12, where a user message starts
        assert next_drop(t, first) == 9
        assert next_drop(t, 9) == 12  # only the new input left
        assert next_drop(t, 12) is None


class TestPassthroughBody:
    def stored(self, origin: str, upstream: bool) -> Stored:
        return Stored("o", {"id": "resp_1", "output": [
            {"id": "rs_1", "type": "reasoning", "summary": []},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "hello", "annotations": []}]}]},
            [{"id": "msg_0", "type": "message", "role": "user", "status": "completed",
              "content": [{"type": "input_text", "text": "hi"}]}], origin, upstream)

    def test_the_upstream_that_holds_it_gets_only_the_id(self):
        t = turn({"input": "next", "previous_response_id": "resp_1"})
        body = native_body(t, [self.stored("nat", True)], "nat", {})
        assert body["previous_response_id"] == "resp_1"
        assert body["input"] == "next"

    def test_another_gets_the_turns_as_items(self):
        t = turn({"input": "next", "previous_response_id": "resp_1"})
        body = native_body(t, [self.stored("chatty", False)], "nat", {})
        assert "previous_response_id" not in body
        assert body["input"] == [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "next"}]


class TestCompletions:
    def test_request_and_answers(self):
        request = completions.parse_completion_request(
            {"model": "m", "prompt": ["a", "b"], "n": 2, "echo": True, "logprobs": 1,
             "stop": "\n", "seed": 4}, b"")
        assert request.native_only == "echo with logprobs (the prompt's own logprobs)"
        request = completions.parse_completion_request(
            {"model": "m", "prompt": ["a", "b"], "n": 2, "logprobs": 1, "seed": 4}, b"")
        chat = completions.to_chat(request, "a", stream=False).body
        assert chat["messages"] == [{"role": "user", "content": "a"}]
        assert (chat["n"], chat["seed"], chat["logprobs"], chat["top_logprobs"]) == (2, 4, True,
                                                                                    1)
        assert chat["max_completion_tokens"] == 16
        lp = {"content": [{"token": "x", "logprob": -0.5,
                           "top_logprobs": [{"token": "x", "logprob": -0.5}]},
                          {"token": "yz", "logprob": -1.0, "top_logprobs": []}]}
        answer = {"choices": [{"index": 0, "message": {"content": "xyz"}, "logprobs": lp,
                               "finish_reason": "stop"},
                              {"index": 1, "message": {"content": "q"},
                               "finish_reason": "length"}],
                  "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
        out = completions.from_chat(request, [answer, answer], "m")
        assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
        assert out["choices"][0]["logprobs"] == {
            "tokens": ["x", "yz"], "token_logprobs": [-0.5, -1.0],
            "top_logprobs": [{"x": -0.5}, {}], "text_offset": [0, 1]}
        assert out["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}

    @pytest.mark.parametrize(("body", "native"), [
        ({"prompt": [[1, 2], [3]]}, "token prompts"),
        ({"prompt": "x", "suffix": "end"}, "suffix (insertion)"),
        ({"prompt": "x", "best_of": 3}, "best_of greater than n"),
    ])
    def test_native_only(self, body, native):
        request = completions.parse_completion_request({"model": "m", **body}, b"")
        assert request.native_only == native

    def test_bad_prompt(self):
        with pytest.raises(ProxyError) as err:
            completions.parse_completion_request({"model": "m", "prompt": [1, "a"]}, b"")
        assert err.value.param == "prompt"


_ODD = ({}, [], [{}], 1, 1.5, "s", True, None, [1], [[1]], {"type": {}})
_FIELDS = ("input", "instructions", "tools", "tool_choice", "text", "reasoning", "metadata",
           "max_output_tokens", "temperature", "top_p", "stream", "store", "truncation",
           "include", "parallel_tool_calls", "previous_response_id", "background", "prompt")


@pytest.mark.parametrize("field", _FIELDS)
def test_no_field_value_is_a_crash(field):
    """Whatever JSON a client sends, the answer is the request or a 400, never a 500."""
    for value in _ODD:
        for body in ({"input": "x", field: value},
                     {"input": [{"role": "user", "content": "x", field: value}]},
                     {"input": [{"type": "message", "role": value, "content": value}]},
                     {"input": [{"role": "user", "content": [{"type": value, "text": value}]}]},
                     {"input": "x", "tools": [{"type": "function", "name": "f", field: value}]},
                     {"input": "x", "text": {"format": {"type": "json_schema", field: value}}}):
            try:
                request = parse_request({"model": "m", **body}, b"")
            except ProxyError as err:
                status = err.status
            else:
                status = 200
                if request.native_only is None:
                    to_chat(Turn(request, request.input), stream=False)
            assert status in (200, 400)


@pytest.mark.parametrize("field", ["prompt", "max_tokens", "n", "best_of", "logprobs", "echo",
                                   "stream", "stop", "suffix", "temperature", "seed"])
def test_no_completion_field_value_is_a_crash(field):
    for value in _ODD:
        try:
            request = completions.parse_completion_request(
                {"model": "m", "prompt": "x", field: value}, b"")
        except ProxyError as err:
            status = err.status
        else:
            status = 200
            if request.native_only is None:
                for prompt in request.prompts:
                    completions.to_chat(request, str(prompt), stream=False)
        assert status in (200, 400)
