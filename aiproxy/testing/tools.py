"""The tool checks: a tool-call round trip, and a streamed call assembled from its deltas."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from aiproxy.provider import ChatRequest, ChatResponse
from aiproxy.testing.adapter import (
    TEXT,
    TOOL_CALL,
    TOOL_RESULT,
    TOOLS,
    USAGE,
    ConformanceAdapter,
    ToolCall,
)
from aiproxy.testing.shapes import check_completion, check_tool_call, check_tool_chunks
from aiproxy.testing.upstream import RecordedRequest
from aiproxy.testing.world import Check, ConformanceFailure, Run, answer, canonical, expect

__all__ = ["TOOL_CHECKS"]

_ASK = ({"role": "system", "content": "You are a conformance test."},
        {"role": "user", "content": "What is the weather in Paris?"})
_NAMES = tuple(t["function"]["name"] for t in TOOLS)


def _request(*, stream: bool, history: tuple[dict[str, Any], ...] = ()) -> ChatRequest:
    return canonical(stream=stream, include_usage=stream, messages=(*_ASK, *history),
                     tools=[dict(t) for t in TOOLS], tool_choice="auto")


def _expected(run: Run) -> ToolCall | None:
    """The call to expect: the fake's, or (a provider with no upstream) any declared one."""
    return TOOL_CALL if run.adapter.has_upstream else None


async def _round_trip(run: Run) -> None:
    adapter = run.adapter
    history: tuple[dict[str, Any], ...] = ()

    async def handler(request: web.Request) -> web.StreamResponse:
        record = await RecordedRequest.of(request)
        if not history:  # the first leg (history is set for the second): the model calls
            return answer(adapter.answer_tool_call(TOOL_CALL, USAGE, record), "answer_tool_call")
        return answer(adapter.answer_text(TEXT, USAGE, record), "answer_text")

    run.serve(handler)
    _, got, error = await run.call(stream=False, request=_request(stream=False))
    if error is not None:
        raise ConformanceFailure(f"chat() with tools raised {error!r}")
    expect(isinstance(got, ChatResponse), "chat() did not return a ChatResponse")
    message = check_completion(got.data, adapter.exact_usage, text=None, finish="tool_calls")
    call = check_tool_call(message, _expected(run), _NAMES)
    if adapter.has_upstream:
        sent = run.expect_one_call("chat() with tools")
        expect(b"get_weather" in sent.raw and b"city" in sent.raw,
               "the upstream was not sent the tool's name and parameters")

    # The client runs the function and answers with its result, as the openai SDK sends it.
    history = ({"role": "assistant", "content": message.get("content"), "tool_calls": [call]},
               {"role": "tool", "tool_call_id": call["id"], "content": TOOL_RESULT})
    _, got, error = await run.call(stream=False, request=_request(stream=False,
                                                                    history=history))
    if error is not None:
        raise ConformanceFailure(f"chat() with the tool's result raised {error!r}")
    expect(isinstance(got, ChatResponse), "chat() did not return a ChatResponse")
    check_completion(got.data, adapter.exact_usage, text=TEXT if adapter.has_upstream else None)
    if adapter.has_upstream:
        sent = run.expect_one_call("chat() with the tool's result")
        expect(TOOL_RESULT.encode() in sent.raw,
               f"the upstream was not sent the tool's result {TOOL_RESULT!r}")
        expect(b"get_weather" in sent.raw,
               "the upstream was not sent the name of the function called")
        adapter.check_tool_result(sent, TOOL_CALL, TOOL_RESULT)


async def _stream_call(run: Run) -> None:
    adapter = run.adapter

    def native(record: RecordedRequest) -> list[Any]:
        events = adapter.stream_tool_call(TOOL_CALL, USAGE, record)
        if events is None:
            raise ConformanceFailure("the adapter's stream_tool_call returned None")
        return events

    run.serve_events(native)
    _, chunks, error = await run.call(stream=True, request=_request(stream=True))
    if error is not None:
        raise ConformanceFailure(f"stream() with tools raised {error!r} after "
                                 f"{len(chunks)} chunks")
    check_tool_chunks(chunks, _expected(run), _NAMES, exact=adapter.exact_usage)
    if adapter.has_upstream:
        sent = run.expect_one_call("stream() with tools")
        expect(b"get_weather" in sent.raw, "the upstream was not sent the tool's name")


def _skip(method: str) -> Any:
    def skip(adapter: ConformanceAdapter) -> str | None:
        if not adapter.has_upstream:
            return None if adapter.tool_calls else (
                "the provider calls no upstream and the adapter does not say it calls tools "
                "(tool_calls = True)")
        if getattr(type(adapter), method) is getattr(ConformanceAdapter, method):
            return f"the adapter's upstream makes no tool calls ({method} not overridden)"
        return None
    return skip


TOOL_CHECKS: tuple[Check, ...] = (
    Check("tool_round_trip", "a tool call in the OpenAI shape, and the answer to its result",
          _round_trip, _skip("answer_tool_call")),
    Check("tool_call_stream", "a streamed tool call assembles from its deltas into one call",
          _stream_call, _skip("stream_tool_call")),
)
