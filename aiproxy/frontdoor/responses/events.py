"""Responses API streams: chat chunks as the semantic events, and the lens every Responses
stream (translated or passed through) is read through.

Events and their order: https://platform.openai.com/docs/api-reference/responses-streaming
(``response.created``, ``response.in_progress``, then per output item ``output_item.added``,
``content_part.added``, the deltas, their ``.done``, ``content_part.done``,
``output_item.done``, and last ``response.completed`` / ``.incomplete`` / ``.failed``); the
``openai`` SDK's ``types/responses/response_*_event.py`` give each event's fields.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiproxy.frontdoor.responses.convert import (
    INCOMPLETE,
    Turn,
    chat_usage,
    finish_response,
    function_call_item,
    logprobs_of,
    message_item,
    output_text_part,
    reasoning_item,
    response_usage,
    skeleton,
)
from aiproxy.frontdoor.responses.request import new_id
from aiproxy.provider import ErrorKind, UpstreamError, tool_call_id

__all__ = ["TERMINAL", "ResponseEvents", "translate_stream"]

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Events whose text is output the client paid for (for a settlement without usage).
_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta",
                     "response.function_call_arguments.delta", "response.reasoning_text.delta"})
Event = dict[str, Any]


async def translate_stream(turn: Turn, chunks: AsyncIterator[dict[str, Any]],
                           model: str) -> AsyncIterator[Event]:
    """The Responses events of a chat completion stream, from its first chunk (nothing is
    yielded before the upstream answered) to ``response.completed``."""
    builder = _Builder(turn, model)
    try:
        async for chunk in chunks:
            for event in builder.feed(chunk):
                yield event
        for event in builder.finish():
            yield event
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


class _Builder:
    """The state of one translated stream: the output items opened so far."""

    def __init__(self, turn: Turn, model: str) -> None:
        self.response = skeleton(turn, model)
        self.items: list[dict[str, Any]] = []  # by output_index
        self.started = False
        self.message: int | None = None  # output index of the open message item
        self.reasoning: int | None = None
        self.calls: dict[int, int] = {}  # chat tool call index -> output index
        self.open_calls: list[int] = []
        self.finish_reason: str | None = None
        self.usage: Any = None

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        if not self.started:
            self.started = True
            events += [{"type": "response.created", "response": dict(self.response)},
                       {"type": "response.in_progress", "response": dict(self.response)}]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # one answer per response: n is not a Responses parameter
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                events += self._reasoning(reasoning)
            text = delta.get("content")
            if isinstance(text, str) and text:
                events += self._text("output_text", text, logprobs_of(choice))
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                events += self._text("refusal", refusal, [])
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    events += self._call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def finish(self) -> list[Event]:
        incomplete = INCOMPLETE.get(self.finish_reason or "")
        events: list[Event] = []
        if not self.items:  # an empty answer is still one (empty) message
            events += self._text("output_text", "", [])
        events += self._close_text(incomplete)
        for index in self.open_calls:
            events += self._close_call(index)
        self.open_calls = []
        response = {**self.response, "output": list(self.items)}
        finish_response(response, incomplete, response_usage(self.usage))
        kind = "response.incomplete" if incomplete else "response.completed"
        return [*events, {"type": kind, "response": response}]

    # --- items -------------------------------------------------------------------------

    def _open(self, item: dict[str, Any]) -> tuple[int, list[Event]]:
        index = len(self.items)
        self.items.append(item)
        return index, [{"type": "response.output_item.added", "output_index": index,
                        "item": _copy(item)}]

    def _reasoning(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self.reasoning is None:
            events += self._close_text(None)
            item = reasoning_item(new_id("rs"), None, "in_progress")
            self.reasoning, events = self._opened(item, events)
            part = {"type": "reasoning_text", "text": ""}
            item["content"].append(part)
            events.append(self._part("response.content_part.added", self.reasoning, dict(part)))
        item = self.items[self.reasoning]
        item["content"][0]["text"] += text
        events.append({"type": "response.reasoning_text.delta", "item_id": item["id"],
                       "output_index": self.reasoning, "content_index": 0, "delta": text})
        return events

    def _opened(self, item: dict[str, Any], events: list[Event]) -> tuple[int, list[Event]]:
        index, added = self._open(item)
        return index, events + added

    def _text(self, kind: str, text: str, logprobs: list[dict[str, Any]]) -> list[Event]:
        events: list[Event] = []
        if self.reasoning is not None:
            events += self._close_reasoning()
        if self.message is None:
            item = message_item(new_id("msg"), None, "in_progress")
            self.message, events = self._opened(item, events)
            part = (output_text_part("") if kind == "output_text"
                    else {"type": "refusal", "refusal": ""})
            item["content"].append(part)
            events.append(self._part("response.content_part.added", self.message, _copy(part)))
        item = self.items[self.message]
        part = item["content"][0]
        if part["type"] == "refusal":
            part["refusal"] += text
            events.append({"type": "response.refusal.delta", "item_id": item["id"],
                           "output_index": self.message, "content_index": 0, "delta": text})
            return events
        part["text"] += text
        part["logprobs"] = part["logprobs"] + logprobs  # events already sent keep theirs
        events.append({"type": "response.output_text.delta", "item_id": item["id"],
                       "output_index": self.message, "content_index": 0, "delta": text,
                       "logprobs": logprobs})
        return events

    def _call(self, call: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        position = call.get("index", 0)
        function = call.get("function") or {}
        arguments = function.get("arguments") or ""
        if position not in self.calls:
            events += self._close_text(None)
            item = function_call_item(new_id("fc"), call.get("id") or tool_call_id(),
                                      function.get("name") or "", "", "in_progress")
            index, events = self._opened(item, events)
            self.calls[position] = index
            self.open_calls.append(index)
        index = self.calls[position]
        item = self.items[index]
        if function.get("name") and not item["name"]:
            item["name"] = function["name"]
        if arguments:
            item["arguments"] += arguments
            events.append({"type": "response.function_call_arguments.delta",
                           "item_id": item["id"], "output_index": index, "delta": arguments})
        return events

    def _close_text(self, incomplete: str | None) -> list[Event]:
        events = self._close_reasoning() if self.reasoning is not None else []
        if self.message is None:
            return events
        index, self.message = self.message, None
        item = self.items[index]
        item["status"] = "incomplete" if incomplete else "completed"
        part = item["content"][0]
        if part["type"] == "refusal":
            events.append({"type": "response.refusal.done", "item_id": item["id"],
                           "output_index": index, "content_index": 0,
                           "refusal": part["refusal"]})
        else:
            events.append({"type": "response.output_text.done", "item_id": item["id"],
                           "output_index": index, "content_index": 0, "text": part["text"],
                           "logprobs": list(part["logprobs"])})
        events.append(self._part("response.content_part.done", index, _copy(part)))
        events.append({"type": "response.output_item.done", "output_index": index,
                       "item": _copy(item)})
        return events

    def _close_reasoning(self) -> list[Event]:
        assert self.reasoning is not None
        index, self.reasoning = self.reasoning, None
        item = self.items[index]
        item["status"] = "completed"
        part = item["content"][0]
        return [{"type": "response.reasoning_text.done", "item_id": item["id"],
                 "output_index": index, "content_index": 0, "text": part["text"]},
                self._part("response.content_part.done", index, dict(part)),
                {"type": "response.output_item.done", "output_index": index,
                 "item": _copy(item)}]

    def _close_call(self, index: int) -> list[Event]:
        item = self.items[index]
        item["status"] = "completed"
        return [{"type": "response.function_call_arguments.done", "item_id": item["id"],
                 "output_index": index, "arguments": item["arguments"]},
                {"type": "response.output_item.done", "output_index": index,
                 "item": _copy(item)}]

    def _part(self, kind: str, index: int, part: dict[str, Any]) -> Event:
        return {"type": kind, "item_id": self.items[index]["id"], "output_index": index,
                "content_index": 0, "part": part}


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of an item as it is now (later deltas change the builder's own copy)."""
    out = dict(item)
    if "content" in out:
        out["content"] = [dict(part) for part in out["content"]]
    return out


class ResponseEvents:
    """The lens of Responses streams, translated or passed through: numbers the events, names
    the model that answers, keeps the usage (in the chat shape the router settles with), the
    latest response snapshot and the finished items, so a broken stream still ends with a
    ``response.failed`` that holds what was done."""

    __slots__ = ("done", "final", "previous_id", "relayed_chars", "sequence", "snapshot",
                 "usage")

    def __init__(self, previous_id: str | None = None) -> None:
        # The conversation's link, on responses an upstream made without it (it was sent the
        # earlier turns as items).
        self.previous_id = previous_id
        self.usage: Mapping[str, Any] | None = None
        self.relayed_chars = 0
        self.sequence = 0
        self.snapshot: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None  # the response of the terminal event
        self.done: dict[int, dict[str, Any]] = {}

    def rewrite(self, chunk: dict[str, Any], model: str) -> bool:
        chunk["sequence_number"] = self.sequence
        self.sequence += 1
        kind = chunk.get("type")
        response = chunk.get("response")
        if isinstance(response, dict):
            response["model"] = model
            if self.previous_id and not response.get("previous_response_id"):
                response["previous_response_id"] = self.previous_id
            self.snapshot = response
            if kind in TERMINAL:
                self.final = response
                self.usage = chat_usage(response.get("usage"))
        elif kind in _DELTAS:
            delta = chunk.get("delta")
            if isinstance(delta, str):
                self.relayed_chars += len(delta)
        elif kind == "response.output_item.done" and isinstance(chunk.get("output_index"), int):
            self.done[chunk["output_index"]] = chunk.get("item") or {}
        return True

    def failure(self, err: UpstreamError) -> list[Event]:
        """The events that end a stream the upstream broke: ``error`` with the reason, then
        ``response.failed`` with the items finished so far; numbered after the last event."""
        code = "rate_limit_exceeded" if err.kind is ErrorKind.RATE_LIMITED else "server_error"
        message = f"the stream was interrupted: {err.message}"
        response = dict(self.snapshot or {})
        response.update(status="failed", usage=None,
                        error={"code": code, "message": message},
                        output=[self.done[i] for i in sorted(self.done)])
        self.final = response
        events: list[Event] = [
            {"type": "error", "code": err.code or code, "message": message, "param": None},
            {"type": "response.failed", "response": response}]
        for event in events:
            event["sequence_number"] = self.sequence
            self.sequence += 1
        return events
