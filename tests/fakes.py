"""A fault-injecting fake OpenAI-compatible upstream, served on 127.0.0.1 by the tests.

Each model id may be given a script of faults, consumed one per request; when the script is
empty the model answers normally (or with its ``default`` fault). It is built on the plugin
kit's :class:`aiproxy.testing.FakeUpstream` (routing, recording, the application, the JSON
and SSE framing); what it adds is the OpenAI dialect and the faults.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from typing import Any

import attrs
import orjson
from aiohttp import web

from aiproxy.testing import FakeUpstream, RecordedRequest, encode_stream, json_response


@attrs.define
class Seen:
    """One request the fake upstream received."""

    at: float
    path: str
    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    raw: bytes


class FakeOpenAI:
    """Answers ``/v1/chat/completions`` (plain and SSE), ``/v1/embeddings``,
    ``/v1/images/generations``. Faults per model:

    ok, 429_once / 429 (with ``retry_after``), 500, 503, 400, 404, context_length,
    content_filter, reset (connection dropped before headers), hang (never answers),
    slow_first_token, cut (stream cut mid-way), stall (stream stops sending), malformed,
    no_done (clean end without [DONE]), long_line (a 300 KiB chunk), error_event.
    """

    def __init__(self) -> None:
        self.upstream = FakeUpstream()
        for prefix in ("", "/v1"):
            self.upstream.route("POST", prefix + "/chat/completions", self.chat)
            self.upstream.route("POST", prefix + "/embeddings", self.embeddings)
            self.upstream.route("POST", prefix + "/images/generations", self.images)
        self.seen: list[Seen] = []
        self.scripts: dict[str, deque[str]] = defaultdict(deque)
        self.defaults: dict[str, str] = {}
        self.retry_after: str | None = "1"
        self.chunks = 5
        self.delay = 0.0  # before answering
        self.chunk_delay = 0.0
        self.slow = 5.0  # seconds of slow_first_token / stall
        self.extra_headers: dict[str, str] = {}
        self.disconnects = 0  # streams whose client went away before the end
        self.open_streams = 0
        self.embedding_tokens = 3  # the usage each embeddings answer reports
        self.reply: str | None = None  # every model's answer, when set
        # Models that answer a trailing assistant turn with a 400 (no continuation).
        self.refuse_continuation: set[str] = set()

    def script(self, model: str, *faults: str) -> None:
        self.scripts[model].extend(faults)

    def requests_for(self, model: str) -> list[Seen]:
        return [s for s in self.seen if s.model == model]

    def app(self) -> web.Application:
        """The kit's application, for ``aiohttp_server`` to serve."""
        return self.upstream.app

    def _fault(self, model: str) -> str:
        script = self.scripts.get(model)
        if script:
            return script.popleft()
        return self.defaults.get(model, "ok")

    async def _record(self, request: web.Request) -> tuple[dict[str, Any], str]:
        record = await RecordedRequest.of(request)
        body = record.json if record.json is not None else orjson.loads(record.raw)
        model = str(body.get("model"))
        self.seen.append(Seen(time.monotonic(), request.path, model, body,
                              dict(request.headers), record.raw))
        return body, model

    @staticmethod
    def _error(status: int, message: str, code: str | None = None, typ: str = "server_error",
               headers: dict[str, str] | None = None) -> web.Response:
        body = {"error": {"message": message, "type": typ, "param": None, "code": code}}
        return json_response(body, status=status, headers=headers)

    async def _pre_answer_fault(self, request: web.Request, fault: str) -> web.Response | None:
        if fault in ("429", "429_once"):
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return self._error(429, "Rate limit reached", "rate_limit_exceeded",
                               "requests", headers)
        if fault == "500":
            return self._error(500, "internal upstream failure")
        if fault == "503":
            return self._error(503, "overloaded")
        if fault == "400":
            return self._error(400, "bad parameter 'foo'", "invalid_value", "invalid_request_error")
        if fault == "404":
            return self._error(404, "The model does not exist", "model_not_found",
                               "invalid_request_error")
        if fault == "401":
            return self._error(401, "Incorrect API key provided: sk-abc***", "invalid_api_key",
                               "invalid_request_error")
        if fault == "context_length":
            return self._error(400, "This model's maximum context length is 8192 tokens.",
                               "context_length_exceeded", "invalid_request_error")
        if fault == "content_filter":
            return self._error(400, "The response was filtered due to the prompt triggering "
                               "content management policy.", "content_filter",
                               "invalid_request_error")
        if fault == "reset":
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(0.05)
            return web.Response(status=500)
        if fault == "hang":
            await asyncio.sleep(3600)
        return None

    @staticmethod
    def _text(body: dict[str, Any]) -> str:
        last = ""
        for message in body.get("messages") or []:
            if message.get("role") == "user" and isinstance(message.get("content"), str):
                last = message["content"]
        return last

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body, model = await self._record(request)
        fault = self._fault(model)
        if self.delay:
            await asyncio.sleep(self.delay)
        early = await self._pre_answer_fault(request, fault)
        if early is not None:
            return early
        text = self.reply if self.reply is not None else f"reply from {model}: {self._text(body)}"
        messages = body.get("messages") or []
        if messages and messages[-1].get("role") == "assistant":
            if model in self.refuse_continuation:
                return self._error(400, "the last message may not be an assistant message",
                                   "invalid_value", "invalid_request_error")
            prefix = str(messages[-1].get("content") or "")
            text = text[len(prefix):] if text.startswith(prefix) else text
        if not body.get("stream"):
            if fault == "malformed":
                return web.Response(body=b"{not json", content_type="application/json")
            data = {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
            }
            return json_response(data, headers=self.extra_headers)
        return await self._stream(request, body, model, fault, text)

    async def _stream(self, request: web.Request, body: dict[str, Any], model: str, fault: str,
                      text: str) -> web.StreamResponse:
        if fault == "slow_first_token":
            await asyncio.sleep(self.slow)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               **self.extra_headers})
        await response.prepare(request)
        self.open_streams += 1
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                "created": 1700000000, "model": model}
        words = text.split(" ")
        size = max(1, len(words) // self.chunks + (len(words) % self.chunks > 0))
        pieces = [" ".join(words[i:i + size]) for i in range(0, len(words), size)]
        pieces = [p if i == 0 else " " + p for i, p in enumerate(pieces)]
        completed = False
        try:
            first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                "content": ""},
                                          "finish_reason": None}]}
            await response.write(encode_stream([first]))
            for i, piece in enumerate(pieces):
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                if fault == "cut" and i == len(pieces) // 2:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if fault == "stall" and i == len(pieces) // 2:
                    await asyncio.sleep(self.slow)
                if fault == "malformed" and i == 1:
                    await response.write(b"data: {\"choices\": [ broken\n\n")
                    continue
                if fault == "error_event" and i == 1:
                    err = {"error": {"message": "upstream exploded", "code": 502}}
                    await response.write(encode_stream([err]))
                    return response
                delta: dict[str, Any] = {"content": piece}
                if fault == "long_line" and i == 0:
                    delta = {"content": piece + " " + "x" * 300_000}
                chunk = {**base, "choices": [{"index": 0, "delta": delta,
                                              "finish_reason": None}]}
                await response.write(encode_stream([chunk]))
            final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            await response.write(encode_stream([final]))
            opts = body.get("stream_options") or {}
            if opts.get("include_usage"):
                usage = {**base, "choices": [], "usage": {"prompt_tokens": 7,
                                                          "completion_tokens": 5,
                                                          "total_tokens": 12}}
                await response.write(encode_stream([usage]))
            if fault != "no_done":
                await response.write(encode_stream([b"[DONE]"]))
            completed = True
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        finally:
            self.open_streams -= 1
            if not completed and fault not in ("cut", "error_event"):
                pass
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        body, model = await self._record(request)
        early = await self._pre_answer_fault(request, self._fault(model))
        if early is not None:
            return early
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1 * (i + 1), 0.2, 0.3]}
                for i in range(len(inputs))]
        return json_response({"object": "list", "data": data, "model": model,
                              "usage": {"prompt_tokens": self.embedding_tokens,
                                        "total_tokens": self.embedding_tokens}})

    async def images(self, request: web.Request) -> web.Response:
        import base64

        from aiproxy_providers.mock import mock_png

        body, model = await self._record(request)
        early = await self._pre_answer_fault(request, self._fault(model))
        if early is not None:
            return early
        n = body.get("n") or 1
        data = [{"b64_json": base64.b64encode(mock_png(seed=bytes([i]))).decode()}
                for i in range(n)]
        return json_response({"created": 1700000000, "data": data})
