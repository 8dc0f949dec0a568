"""A fake Anthropic Messages API and a scriptable OpenAI-compatible chat API on 127.0.0.1.

The Anthropic fake answers in the shapes of Anthropic's reference:
https://docs.anthropic.com/en/api/messages (the Message object),
https://docs.anthropic.com/en/api/messages-streaming (the event sequence: ``message_start``, a
``ping``, per block ``content_block_start`` / deltas / ``content_block_stop``, ``message_delta``
with the stop reason and cumulative usage, ``message_stop``),
https://docs.anthropic.com/en/api/errors (``{"type": "error", "error": {"type", "message"}}``)
and https://docs.anthropic.com/en/api/messages-count-tokens. It checks ``x-api-key`` and
``anthropic-version`` as the real API does.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.provider_fakes import FakeUpstream, Reply, json_reply, sse_reply

__all__ = ["FakeAnthropic", "FakeChat", "anthropic_error", "chat_completion", "chat_stream",
           "claude_message", "claude_stream", "text_block", "thinking_block", "tool_block"]

USAGE = {"input_tokens": 25, "output_tokens": 12, "cache_creation_input_tokens": 0,
         "cache_read_input_tokens": 0}


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_block(name: str, args: dict[str, Any], call_id: str = "toolu_01A09q90qw90lq917835lq9"
               ) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": args}


def thinking_block(text: str, signature: str = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3d"
                   ) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": signature}


def claude_message(*content: dict[str, Any], stop_reason: str = "end_turn",
                   model: str = "claude-sonnet-4-5-20250929", **usage: int) -> dict[str, Any]:
    return {"id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
            "model": model, "content": list(content), "stop_reason": stop_reason,
            "stop_sequence": None, "usage": {**USAGE, **usage}}


def _pieces(text: str, n: int = 3) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i:i + size] for i in range(0, len(text), size)]


def claude_events(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The documented event sequence of a whole ``message``: text and thinking in pieces,
    tool input as partial JSON fragments, a signature_delta closing each thinking block."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1}}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start},
                                    {"type": "ping"}]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {"type": "text", "text": ""}})
            events += [{"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": p}} for p in _pieces(
                            block["text"])]
        elif kind == "thinking":
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {"type": "thinking", "thinking": "",
                                             "signature": ""}})
            events += [{"type": "content_block_delta", "index": index,
                        "delta": {"type": "thinking_delta", "thinking": p}} for p in _pieces(
                            block["thinking"])]
            events.append({"type": "content_block_delta", "index": index,
                           "delta": {"type": "signature_delta",
                                     "signature": block["signature"]}})
        elif kind == "tool_use":
            events.append({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
            events += [{"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": p}}
                       for p in _pieces(orjson.dumps(block["input"]).decode())]
        else:
            events.append({"type": "content_block_start", "index": index,
                           "content_block": block})
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta",
                   "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                   "usage": {"output_tokens": usage["output_tokens"]}})
    events.append({"type": "message_stop"})
    return events


def claude_stream(message: dict[str, Any], *, cut_after: int | None = None,
                  error_after: int | None = None, error_type: str = "overloaded_error"
                  ) -> Reply:
    """``message`` as a named-event stream; ``cut_after`` events it stops (no message_stop),
    ``error_after`` events it sends an ``error`` event instead of the rest."""
    events: list[Any] = claude_events(message)
    if error_after is not None:
        events = [*events[:error_after], {"type": "error", "error": {
            "type": error_type, "message": "Overloaded"}}]
    elif cut_after is not None:
        events = events[:cut_after]
    return sse_reply(events, named=True)


def anthropic_error(status: int, kind: str, message: str,
                    headers: dict[str, str] | None = None) -> Reply:
    return json_reply({"type": "error", "error": {"type": kind, "message": message},
                       "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}, status, headers)


class FakeAnthropic(FakeUpstream):
    """``POST /v1/messages`` and ``/v1/messages/count_tokens``, keyed by ``x-api-key``."""

    KEY = "sk-ant-api03-e2e-fake-key-0123456789"
    SECRETS = (KEY,)

    def model(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "provider": "anthropic", "url": self.url("/"), "token": self.KEY,
                **extra}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self.handle)
        app.router.add_post("/v1/messages/count_tokens", self.handle)
        return app

    def calls(self, endpoint: str = "messages") -> list[Any]:
        return [s for s in self.seen if s.path == f"/v1/{endpoint}"]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        _, body = await self.record(request)
        if request.headers.get("x-api-key") != self.KEY:
            return await anthropic_error(401, "authentication_error", "invalid x-api-key")(
                request, body)
        if not request.headers.get("anthropic-version"):
            return await anthropic_error(400, "invalid_request_error",
                                         "anthropic-version: header is required")(request, body)
        default: Reply
        if request.path.endswith("/count_tokens"):
            default = json_reply({"input_tokens": 42})
        elif body.get("stream"):
            default = claude_stream(claude_message(text_block("Hello from Claude"),
                                                   model=body["model"]))
        else:
            default = json_reply(claude_message(text_block("Hello from Claude"),
                                                model=body["model"]))
        return await self.answer(request, body, default)


# ------------------------------------------------------------------ OpenAI-compatible chat

CHAT_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def chat_completion(content: str | None = "Hello from GPT", *, tool_calls: Any = None,
                    finish: str = "stop", usage: dict[str, Any] | None = None,
                    **message: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content, **message}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return {"id": "chatcmpl-e2e", "object": "chat.completion", "created": 1700000000,
            "model": "gpt-4o", "choices": [{"index": 0, "message": msg,
                                             "finish_reason": finish, "logprobs": None}],
            "usage": usage or CHAT_USAGE}


def chat_stream(pieces: list[str], *, tool_calls: list[dict[str, Any]] | None = None,
                finish: str = "stop", usage: dict[str, Any] | None = None,
                reasoning: list[str] | None = None, cut: bool = False) -> Reply:
    """OpenAI chunks: role, reasoning pieces, text pieces, tool-call fragments (a list of
    per-chunk ``tool_calls`` deltas), the finish chunk, the usage chunk, ``[DONE]``."""
    base = {"id": "chatcmpl-e2e", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "gpt-4o"}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta,
                                     "finish_reason": finish_reason}]}

    events: list[Any] = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"reasoning_content": p}) for p in reasoning or ()]
    events += [chunk({"content": p}) for p in pieces]
    events += [chunk({"tool_calls": [call]}) for call in tool_calls or ()]
    if cut:
        return sse_reply(events)
    events.append(chunk({}, finish))
    events.append({**base, "choices": [], "usage": usage or CHAT_USAGE})
    return sse_reply(events, done=True)


class FakeChat(FakeUpstream):
    """``POST /v1/chat/completions`` keyed by a Bearer token; scriptable."""

    KEY = "sk-e2e-openai-fake-key-0123456789"
    SECRETS = (KEY,)

    def model(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "provider": "openai", "url": self.url("/v1"), "token": self.KEY,
                **extra}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        _, body = await self.record(request)
        if request.headers.get("Authorization") != f"Bearer {self.KEY}":
            refused = {"error": {"message": "bad key", "type": "invalid_request_error",
                                 "code": "invalid_api_key"}}
            return await json_reply(refused, 401)(request, body)
        default = chat_stream(["Hello", " from", " GPT"]) if body.get("stream") \
            else json_reply(chat_completion())
        return await self.answer(request, body, default)
