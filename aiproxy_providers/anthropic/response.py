"""Anthropic answers as OpenAI chat completions: whole messages and stream events.

- Message: https://docs.anthropic.com/en/api/messages (``content`` blocks ``text``,
  ``tool_use``, ``thinking`` with ``signature``, ``redacted_thinking``; ``stop_reason``;
  ``usage`` with ``cache_read_input_tokens`` / ``cache_creation_input_tokens``, which
  ``input_tokens`` does not include: https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching)
- Stop reasons: https://docs.anthropic.com/en/api/handling-stop-reasons
- Stream events: https://docs.anthropic.com/en/api/messages-streaming (``message_start``,
  ``content_block_start/delta/stop`` with ``text_delta``, ``input_json_delta``,
  ``thinking_delta``, ``signature_delta``; ``message_delta`` with the cumulative usage and the
  ``stop_reason``; ``message_stop``; ``ping``; ``error``; unknown types are to be ignored)

Thinking never reaches ``content``: its text is ``reasoning_content`` (the field OpenAI-style
clients of reasoning models read) and the blocks themselves, signatures included, are
``thinking_blocks``, which a client sends back on the assistant message to keep a tool-use loop
with thinking going.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from aiproxy.provider import ErrorKind, StreamChunks, UpstreamError, completion_id

from .errors import error_from_event
from .request import Plan

__all__ = ["FINISH_REASONS", "ChunkTranslator", "chat_completion", "openai_usage"]

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # a server tool paused the turn; the answer so far is complete
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _count(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def openai_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic usage as OpenAI's: the prompt counts cached reads and cache writes too, and
    the reads are ``prompt_tokens_details.cached_tokens``."""
    read = _count(usage, "cache_read_input_tokens")
    written = _count(usage, "cache_creation_input_tokens")
    prompt = _count(usage, "input_tokens") + read + written
    completion = _count(usage, "output_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": read},
            # Anthropic's own counts, for clients that price cache writes apart.
            "cache_read_input_tokens": read, "cache_creation_input_tokens": written}


def _finish(stop_reason: Any, plan: Plan) -> str:
    finish = FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    if plan.json_tool is not None and finish == "tool_calls":
        return "stop"  # the forced JSON tool's input is the answer itself
    return finish


def chat_completion(message: Mapping[str, Any], model: str, plan: Plan) -> dict[str, Any]:
    """A whole ``chat.completion`` for an Anthropic ``message``."""
    content = message.get("content")
    if not isinstance(content, list):
        raise UpstreamError(ErrorKind.PROTOCOL, "the upstream answer has no content")
    texts: list[str] = []
    reasoning: list[str] = []
    blocks: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            args = orjson.dumps(block.get("input") or {}).decode()
            if block.get("name") == plan.json_tool:
                texts.append(args)
                continue
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": args}})
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking") or ""))
            blocks.append(block)
        elif kind == "redacted_thinking":
            blocks.append(block)
        # server tool blocks (web search results...) have no OpenAI form: not in the answer
    text = "".join(texts)
    if plan.trimmed_prefill:
        text = text.lstrip()
    out: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        out["tool_calls"] = calls
    if blocks:
        out["reasoning_content"] = "".join(reasoning)
        out["thinking_blocks"] = blocks
    usage = message.get("usage")
    return {
        "id": completion_id(), "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": out,
                     "finish_reason": _finish(message.get("stop_reason"), plan),
                     "logprobs": None}],
        "usage": openai_usage(usage if isinstance(usage, dict) else {}),
    }


class ChunkTranslator:
    """Turns one answer's Anthropic stream events into ``chat.completion.chunk`` objects."""

    def __init__(self, model: str, plan: Plan, *, include_usage: bool) -> None:
        self.chunks = StreamChunks(model)
        self.plan = plan
        self.include_usage = include_usage
        self.done = False
        self._role_sent = False
        self._usage: dict[str, Any] = {}
        self._stop_reason: Any = None
        self._blocks: dict[int, dict[str, Any]] = {}  # open blocks by their event index
        self._calls = 0  # tool calls so far: the OpenAI index of the next one
        self._trim = plan.trimmed_prefill  # drop the continuation's leading whitespace

    def _emit(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        out = [] if self._role_sent else [self.chunks.role()]
        self._role_sent = True
        out.append(self.chunks.chunk(delta))
        return out

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "content_block_start":
            return self._start(event)
        if kind == "content_block_stop":
            return self._stop(event)
        if kind == "message_start":
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self._usage.update(usage)
        elif kind == "message_delta":
            delta, usage = event.get("delta"), event.get("usage")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self._stop_reason = delta["stop_reason"]
            if isinstance(usage, dict):  # cumulative counts: the latest wins
                self._usage.update({k: v for k, v in usage.items() if v is not None})
        elif kind == "message_stop":
            self.done = True
            return self.chunks.end(_finish(self._stop_reason, self.plan),
                                   openai_usage(self._usage), include_usage=self.include_usage,
                                   role_sent=self._role_sent)
        elif kind == "error":
            raise error_from_event(event)
        return []  # ping, and event types added later

    def _start(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        block = event.get("content_block")
        index = event.get("index")
        if not isinstance(block, dict) or not isinstance(index, int):
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream sent a malformed "
                                "content_block_start")
        state: dict[str, Any] = {"type": block.get("type")}
        self._blocks[index] = state
        if state["type"] == "tool_use":
            if block.get("name") == self.plan.json_tool:
                state["json"] = True
                return []
            state["call"] = self._calls
            self._calls += 1
            return self._emit({"tool_calls": [{
                "index": state["call"], "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": ""}}]})
        if state["type"] == "thinking":
            state["text"] = [str(block.get("thinking") or "")]
            state["signature"] = block.get("signature") or ""
        elif state["type"] == "redacted_thinking":
            state["block"] = dict(block)
        elif state["type"] == "text" and block.get("text"):
            return self._text(str(block["text"]))
        return []

    def _text(self, text: str) -> list[dict[str, Any]]:
        if self._trim:
            text = text.lstrip()
            if not text:
                return []
            self._trim = False
        return self._emit({"content": text})

    def _delta(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        delta, index = event.get("delta"), event.get("index")
        state = self._blocks.get(index) if isinstance(index, int) else None
        if not isinstance(delta, dict) or state is None:
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream sent a delta for no open "
                                "content block")
        kind = delta.get("type")
        if kind == "text_delta":
            return self._text(str(delta.get("text") or ""))
        if kind == "input_json_delta":
            fragment = str(delta.get("partial_json") or "")
            if not fragment:
                return []
            if state.get("json"):
                return self._emit({"content": fragment})
            return self._emit({"tool_calls": [{"index": state.get("call", 0),
                                               "function": {"arguments": fragment}}]})
        if kind == "thinking_delta":
            text = str(delta.get("thinking") or "")
            state.setdefault("text", []).append(text)
            return self._emit({"reasoning_content": text}) if text else []
        if kind == "signature_delta":
            state["signature"] = str(delta.get("signature") or "")
        return []  # citations_delta and later kinds: no OpenAI form

    def _stop(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        index = event.get("index")
        state = self._blocks.pop(index, None) if isinstance(index, int) else None
        if state is None:
            return []
        if state["type"] == "thinking":
            block = {"type": "thinking", "thinking": "".join(state.get("text", ())),
                     "signature": state.get("signature", "")}
            return self._emit({"thinking_blocks": [block]})
        if state["type"] == "redacted_thinking":
            return self._emit({"thinking_blocks": [state["block"]]})
        return []
