"""Chat-core answers as Messages API answers: a whole ``message``, or its event stream.

Shapes: https://docs.anthropic.com/en/api/messages (the Message object, ``stop_reason``,
``usage`` in which ``input_tokens`` leaves out cache reads) and
https://docs.anthropic.com/en/api/messages-streaming (``message_start`` with empty content;
per block ``content_block_start``, deltas, ``content_block_stop``; ``message_delta`` with the
``stop_reason`` and cumulative usage; ``message_stop``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from aiproxy.provider import ErrorKind, UpstreamError

__all__ = ["EventTranslator", "anthropic_usage", "message_from_chat", "message_id",
           "openai_usage"]

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "function_call": "tool_use", "content_filter": "refusal"}


def message_id() -> str:
    """A new message id in Anthropic's form: ``msg_`` and 24 hex digits."""
    return f"msg_{uuid.uuid4().hex[:24]}"


def _tool_id(value: Any) -> str:
    """The call's own id, or a new one in Anthropic's form when the upstream gave none."""
    return str(value) if value else f"toolu_{uuid.uuid4().hex[:24]}"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def anthropic_usage(usage: Any) -> dict[str, int]:
    """OpenAI usage as Anthropic's: cached prompt tokens are reads, not ``input_tokens``."""
    if not isinstance(usage, Mapping):
        return {"input_tokens": 0, "output_tokens": 0}
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    prompt = _int(usage.get("prompt_tokens"))
    out = {"input_tokens": max(0, prompt - cached),
           "output_tokens": _int(usage.get("completion_tokens"))}
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def openai_usage(usage: Any) -> dict[str, Any] | None:
    """Anthropic usage as OpenAI's, for the settlement: the prompt is every input token."""
    if not isinstance(usage, Mapping):
        return None
    read = _int(usage.get("cache_read_input_tokens"))
    prompt = _int(usage.get("input_tokens")) + read + _int(usage.get(
        "cache_creation_input_tokens"))
    completion = _int(usage.get("output_tokens"))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": read}}


def _input(arguments: Any) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) and arguments.strip() \
            else arguments or {}
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        # A Messages tool_use input is an object: an answer without one cannot be given as
        # it is; another candidate may do better.
        raise UpstreamError(ErrorKind.PROTOCOL, "the model answered a tool call whose "
                            "arguments are not a JSON object")
    return value


def _reasoning(message: Mapping[str, Any]) -> str | None:
    for key in ("reasoning_content", "reasoning"):  # DeepSeek / OpenRouter spellings
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def message_from_chat(data: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A Messages ``message`` for a ``chat.completion``."""
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise UpstreamError(ErrorKind.PROTOCOL, "the upstream answer has no message")
    content: list[dict[str, Any]] = []
    reasoning = _reasoning(message)
    if reasoning:
        # No signature: another model's thinking cannot be verified by Anthropic, and the
        # Messages door leaves such blocks out if the client sends them to Claude later.
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": _tool_id(call.get("id")),
                        "name": str(function.get("name")),
                        "input": _input(function.get("arguments"))})
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    return {"id": message_id(), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": _STOP_REASONS.get(str(finish), "end_turn"),
            "stop_sequence": None, "usage": anthropic_usage(data.get("usage"))}


class EventTranslator:
    """Turns one answer's ``chat.completion.chunk`` objects into Messages stream events."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self._index = -1  # the open block's index, -1 before the first
        self._open: tuple[str, int] | None = None  # ("text" | "thinking" | "tool", call index)
        self._tools: dict[int, int] = {}  # OpenAI tool call index → block index
        self._stop_reason = "end_turn"
        self._usage: Mapping[str, Any] | None = None
        self._chars = 0

    def _start(self) -> list[dict[str, Any]]:
        self.started = True
        return [{"type": "message_start", "message": {
            "id": message_id(), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}}]

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        self._open = None
        return [{"type": "content_block_stop", "index": self._index}]

    def _block(self, kind: str, block: dict[str, Any], key: int = 0) -> list[dict[str, Any]]:
        out = self._close()
        self._index += 1
        self._open = (kind, key)
        out.append({"type": "content_block_start", "index": self._index,
                    "content_block": block})
        return out

    def _delta(self, index: int, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": index, "delta": delta}

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        out = [] if self.started else self._start()
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._usage = usage
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                out += self._content(delta)
            finish = choice.get("finish_reason")
            if finish:
                self._stop_reason = _STOP_REASONS.get(str(finish), "end_turn")
                out += self._close()
        return out

    def _content(self, delta: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        reasoning = _reasoning(delta)
        if reasoning:
            if self._open != ("thinking", 0):
                out += self._block("thinking", {"type": "thinking", "thinking": "",
                                                "signature": ""})
            out.append(self._delta(self._index, {"type": "thinking_delta",
                                                 "thinking": reasoning}))
            self._chars += len(reasoning)
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self._open != ("text", 0):
                out += self._block("text", {"type": "text", "text": ""})
            out.append(self._delta(self._index, {"type": "text_delta", "text": text}))
            self._chars += len(text)
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                out += self._tool(call)
        return out

    def _tool(self, call: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        key = call.get("index", 0)
        key = key if isinstance(key, int) else 0
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        if key not in self._tools:
            out += self._block("tool", {
                "type": "tool_use", "id": _tool_id(call.get("id")),
                "name": str(function.get("name") or ""), "input": {}}, key)
            self._tools[key] = self._index
        fragment = function.get("arguments")
        if isinstance(fragment, str) and fragment:
            # A later fragment of a call that is no longer the open block still names its
            # own block (deltas carry their index).
            out.append(self._delta(self._tools[key], {"type": "input_json_delta",
                                                      "partial_json": fragment}))
            self._chars += len(fragment)
        return out

    def finish(self, prompt_estimate: int) -> list[dict[str, Any]]:
        """The events that end the message: the last block's stop, the stop reason with the
        usage (estimated from the text when the upstream reported none), ``message_stop``."""
        out = [] if self.started else self._start()
        out += self._close()
        usage = anthropic_usage(self._usage) if self._usage is not None else {
            "input_tokens": prompt_estimate, "output_tokens": self._chars // 4}
        out.append({"type": "message_delta",
                    "delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
                    "usage": usage})
        out.append({"type": "message_stop"})
        return out
