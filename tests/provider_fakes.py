"""Fake native upstreams on 127.0.0.1 for the provider end-to-end tests.

One fake per native provider: Gemini (v1beta generateContent / streamGenerateContent /
embedContent / batchEmbedContents), Cohere (v2 chat and embed), GigaChat (its OAuth endpoint
plus REST v1 chat and embeddings) and Cloudflare Workers AI (``/accounts/{id}/ai/run/{model}``).

Each fake checks the credentials it is sent the way the real service does, records every
request (:class:`Seen`), and answers either the next scripted reply (:meth:`FakeUpstream.then`),
a sticky one (:meth:`FakeUpstream.always`), or a sensible default in the provider's documented
shape. The shapes are those of the per-provider unit tests (``tests/test_provider_<name>.py``),
which cite the documentation they follow. Routing, recording and the application come from the
plugin kit's :class:`aiproxy.testing.FakeUpstream`; these fakes add each provider's dialect.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Self

import attrs
import orjson
from aiohttp import web
from multidict import CIMultiDict

from aiproxy import testing as kit

__all__ = [
    "CF_ACCOUNT",
    "JPEG",
    "FakeCloudflare",
    "FakeCohere",
    "FakeGemini",
    "FakeGigaChat",
    "FakeUpstream",
    "Reply",
    "Seen",
    "cf_envelope",
    "cf_failure",
    "cf_stream",
    "cohere_stream",
    "cohere_text",
    "cohere_tool_call",
    "cohere_tool_stream",
    "gemini_call",
    "gemini_error",
    "gemini_stream",
    "gemini_text",
    "giga_completion",
    "giga_stream",
    "json_reply",
    "retry_info",
    "sse_reply",
    "vector_for",
]

Reply = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]

# A small JPEG header (flux-1-schnell answers JPEG) and a PNG one.
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(48))
CF_ACCOUNT = "acc-e2e-0001"


@attrs.define
class Seen:
    """One request a fake received."""

    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: Any  # parsed JSON, or the raw text of a form body


def json_reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    async def reply(request: web.Request, body: Any) -> web.StreamResponse:
        return kit.json_response(data, status=status, headers=headers)
    return reply


def sse_reply(events: list[Any], *, done: bool = False, named: bool = False,
              sep: bytes = b"\n\n") -> Reply:
    """Server-sent events: dicts JSON-encoded (``named`` adds ``event: <type>``), bytes as-is;
    ``done`` ends with ``data: [DONE]``."""
    async def reply(request: web.Request, body: Any) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            if isinstance(event, bytes):
                await resp.write(event)
                continue
            head = b"event: " + event["type"].encode() + b"\n" if named else b""
            await resp.write(head + b"data: " + orjson.dumps(event) + sep)
        if done:
            await resp.write(b"data: [DONE]" + sep)
        await resp.write_eof()
        return resp
    return reply


def vector_for(text: str) -> list[float]:
    """A deterministic embedding, exact in float32 (so base64 round trips compare equal)."""
    return [float(len(text)), 0.5, -0.25]


class FakeUpstream:
    """Records requests; answers scripted replies, then the sticky one, then the default."""

    #: The credentials this fake expects; none may ever reach a client of the proxy.
    SECRETS: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._script: list[Reply] = []
        self._sticky: Reply | None = None
        self.server: Any = None
        # The kit's fake: one editable router over aiohttp-style path patterns.
        self.upstream = kit.FakeUpstream()
        self.routes(self.upstream)

    @classmethod
    async def start(cls, aiohttp_server: Any) -> Self:
        fake = cls()
        fake.server = await aiohttp_server(fake.app())
        fake.upstream.url = str(fake.server.make_url("")).rstrip("/")
        return fake

    def routes(self, upstream: kit.FakeUpstream) -> None:
        """Route this provider's endpoints on ``upstream`` (a subclass may instead build its
        own :meth:`app`)."""

    def app(self) -> web.Application:
        return self.upstream.app

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.SECRETS

    def then(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, one each, in order."""
        self._script.extend(replies)

    def always(self, reply: Reply) -> None:
        """Answer every request (after the scripted ones) with ``reply``."""
        self._sticky = reply

    async def record(self, request: web.Request) -> tuple[Seen, Any]:
        raw = (await kit.RecordedRequest.of(request)).raw
        if request.content_type == "application/json":
            body: Any = orjson.loads(raw) if raw else None
        else:
            body = raw.decode()
        seen = Seen(request.path, dict(request.query), CIMultiDict(request.headers), body)
        self.seen.append(seen)
        return seen, body

    async def answer(self, request: web.Request, body: Any, default: Reply) -> web.StreamResponse:
        if self._script:
            return await self._script.pop(0)(request, body)
        return await (self._sticky or default)(request, body)


# ------------------------------------------------------------------------------------- Gemini


def gemini_text(text: str, *, prompt: int = 7, output: int = 3,
                finish: str = "STOP") -> dict[str, Any]:
    """A GenerateContentResponse with one text candidate."""
    return {
        "candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                        "finishReason": finish, "index": 0}],
        "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": output,
                          "totalTokenCount": prompt + output},
        "modelVersion": "gemini-2.0-flash",
        "responseId": "e2e-response-id",
    }


def gemini_call(name: str, args: dict[str, Any], *, call_id: str | None = None,
                signature: str | None = None) -> dict[str, Any]:
    """A GenerateContentResponse whose candidate calls one function."""
    call: dict[str, Any] = {"name": name, "args": args}
    if call_id:
        call["id"] = call_id
    part: dict[str, Any] = {"functionCall": call}
    if signature:
        part["thoughtSignature"] = signature
    return {
        "candidates": [{"content": {"parts": [part], "role": "model"},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 8,
                          "totalTokenCount": 28},
    }


def gemini_stream(pieces: list[str], *, prompt: int = 4, extra: list[Any] | None = None
                  ) -> Reply:
    """``streamGenerateContent?alt=sse``: one event per piece, the last with finishReason and
    the (cumulative) usage; ``extra`` events go after the pieces, replacing the finish."""
    events: list[Any] = []
    for i, piece in enumerate(pieces):
        candidate: dict[str, Any] = {"content": {"parts": [{"text": piece}], "role": "model"},
                                     "index": 0}
        event: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-2.0-flash",
                                 "usageMetadata": {"promptTokenCount": prompt,
                                                   "totalTokenCount": prompt}}
        if i == len(pieces) - 1 and extra is None:
            candidate["finishReason"] = "STOP"
            event["usageMetadata"] = {"promptTokenCount": prompt,
                                      "candidatesTokenCount": len(pieces),
                                      "totalTokenCount": prompt + len(pieces)}
        events.append(event)
    # Gemini separates its events with CRLF pairs.
    return sse_reply(events + (extra or []), sep=b"\r\n\r\n")


def gemini_error(code: int, status: str, message: str, *details: Any) -> dict[str, Any]:
    """A google.rpc.Status error body."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


def retry_info(seconds: int) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{seconds}s"}


_GRPC = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
         429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


class FakeGemini(FakeUpstream):
    """``POST /v1beta/models/{model}:{method}``, keyed by ``x-goog-api-key``."""

    KEY = "AIzaSy-e2e-gemini-key-0123456789"
    SECRETS = (KEY,)

    @property
    def base_url(self) -> str:
        return self.url("/v1beta")

    def model(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "provider": "gemini", "url": self.base_url, "token": self.KEY,
                **extra}

    def routes(self, upstream: kit.FakeUpstream) -> None:
        upstream.route("POST", "/v1beta/models/{target}", self.handle)

    def calls(self, method: str) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith(f":{method}")]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        _, body = await self.record(request)
        if request.headers.get("x-goog-api-key") != self.KEY or "key" in request.query:
            return await json_reply(gemini_error(
                400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                 "reason": "API_KEY_INVALID"}), status=400)(request, body)
        method = request.match_info["target"].partition(":")[2]
        default: Reply
        if method == "generateContent":
            default = json_reply(gemini_text("Hello from Gemini"))
        elif method == "streamGenerateContent" and request.query.get("alt") == "sse":
            default = gemini_stream(["Hello", " from", " Gemini"])
        elif method == "embedContent":
            text = body["content"]["parts"][0]["text"]
            default = json_reply({"embedding": {"values": vector_for(text)}})
        elif method == "batchEmbedContents":
            default = json_reply({"embeddings": [
                {"values": vector_for(r["content"]["parts"][0]["text"])}
                for r in body["requests"]]})
        else:
            default = json_reply(gemini_error(404, "NOT_FOUND", f"no method {method}"), 404)
        return await self.answer(request, body, default)

    def echo_error(self, status: int) -> Reply:
        """The provider's error, quoting back the key it was sent (as a careless server might)."""
        async def reply(request: web.Request, body: Any) -> web.StreamResponse:
            key = request.headers.get("x-goog-api-key", "")
            details = [retry_info(30)] if status == 429 else []
            return await json_reply(gemini_error(
                status, _GRPC[status], f"Request with key {key} refused", *details),
                status=status)(request, body)
        return reply

    @staticmethod
    def tool_call_stream(name: str, args: dict[str, Any]) -> Reply:
        """A streamed answer whose one event carries a whole functionCall (Gemini never splits
        one) with the finishReason."""
        return sse_reply([gemini_call(name, args)], sep=b"\r\n\r\n")

    def echo_stream_error(self) -> Reply:
        """Some text, then an error event inside the stream quoting the key."""
        async def reply(request: web.Request, body: Any) -> web.StreamResponse:
            key = request.headers.get("x-goog-api-key", "")
            error = gemini_error(500, "INTERNAL", f"internal error for key {key}")
            return await gemini_stream(["Partial"], extra=[error])(request, body)
        return reply


# ------------------------------------------------------------------------------------- Cohere


def cohere_text(text: str, *, answer_id: str = "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
                prompt: int = 71, output: int = 9) -> dict[str, Any]:
    """A v2 chat answer: text content items, finish_reason COMPLETE."""
    return {
        "id": answer_id,
        "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
        "usage": {"billed_units": {"input_tokens": 5, "output_tokens": output},
                  "tokens": {"input_tokens": prompt, "output_tokens": output}},
    }


def cohere_tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A v2 chat answer in the tool calling step (tool_plan + tool_calls, TOOL_CALL)."""
    return {
        "id": "0d2bd8a1-0a5a-4a1b-9a6e-1e3ce3e9d2a1",
        "finish_reason": "TOOL_CALL",
        "message": {"role": "assistant", "tool_plan": f"I will call {name}.",
                    "tool_calls": [{"id": call_id, "type": "function",
                                    "function": {"name": name, "arguments": arguments}}]},
        "usage": {"billed_units": {"input_tokens": 37, "output_tokens": 28},
                  "tokens": {"input_tokens": 913, "output_tokens": 83}},
    }


COHERE_STREAM_ID = "a8fc192e-4bb8-4e15-ae1f-a174e8b02ae8"


def _cohere_start() -> dict[str, Any]:
    return {"id": COHERE_STREAM_ID, "type": "message-start", "delta": {"message": {
        "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [],
        "citations": []}}}


def _cohere_end(finish: str, error: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {"finish_reason": finish, "usage": {
        "billed_units": {"input_tokens": 21, "output_tokens": 3},
        "tokens": {"input_tokens": 186.0, "output_tokens": 3.0}}}
    if error is not None:
        delta["error"] = error
    return {"type": "message-end", "delta": delta}


def cohere_stream(pieces: list[str], *, finish: str = "COMPLETE",
                  error: str | None = None) -> Reply:
    """The documented event sequence of a streamed text answer."""
    events = [_cohere_start(), {"type": "content-start", "index": 0, "delta": {
        "message": {"content": {"type": "text", "text": ""}}}}]
    events += [{"type": "content-delta", "index": 0,
                "delta": {"message": {"content": {"text": piece}}}} for piece in pieces]
    events += [{"type": "content-end", "index": 0}, _cohere_end(finish, error)]
    return sse_reply(events, named=True)


def cohere_tool_stream(call_id: str, name: str, fragments: list[str]) -> Reply:
    """A streamed tool calling step: the arguments arrive in several tool-call-delta events."""
    events: list[Any] = [
        _cohere_start(),
        {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will look it up"}}},
        {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
            "id": call_id, "type": "function",
            "function": {"name": name, "arguments": ""}}}}},
    ]
    events += [{"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {
        "function": {"arguments": fragment}}}}} for fragment in fragments]
    events += [{"type": "tool-call-end", "index": 0}, _cohere_end("TOOL_CALL")]
    return sse_reply(events, named=True)


class FakeCohere(FakeUpstream):
    """``POST /v2/chat`` and ``POST /v2/embed``, keyed by a Bearer token."""

    KEY = "co-e2e-cohere-key-0123456789"
    SECRETS = (KEY,)

    def model(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "provider": "cohere", "url": self.url("/"), "token": self.KEY,
                **extra}

    def routes(self, upstream: kit.FakeUpstream) -> None:
        upstream.route("POST", "/v2/chat", self.handle)
        upstream.route("POST", "/v2/embed", self.handle)

    def calls(self, endpoint: str) -> list[Seen]:
        return [s for s in self.seen if s.path == f"/v2/{endpoint}"]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        _, body = await self.record(request)
        if request.headers.get("Authorization") != f"Bearer {self.KEY}":
            return await json_reply({"message": "invalid api token"}, 401)(request, body)
        default: Reply
        if request.path == "/v2/embed":
            default = json_reply({
                "id": "da6e531f-83b9-4a6b-9a1c-1b9c7a1a1f1e",
                "embeddings": {"float": [vector_for(t) for t in body["texts"]]},
                "texts": body["texts"],
                "meta": {"api_version": {"version": "2"},
                         "billed_units": {"input_tokens": len(body["texts"]) * 2}},
                "response_type": "embeddings_by_type"})
        elif body.get("stream"):
            default = cohere_stream(["Hello", " from", " Cohere"])
        else:
            default = json_reply(cohere_text("Hello from Cohere"))
        return await self.answer(request, body, default)

    def echo_error(self, status: int) -> Reply:
        async def reply(request: web.Request, body: Any) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            headers = {"Retry-After": "30"} if status == 429 else None
            return await json_reply({"id": "err-1", "message": f"refused for {auth}"}, status,
                                    headers)(request, body)
        return reply

    @staticmethod
    def tool_call_stream(name: str, args: dict[str, Any]) -> Reply:
        """The arguments' JSON split over three tool-call-delta events."""
        text = orjson.dumps(args).decode()
        cut = len(text) // 3
        return cohere_tool_stream(f"{name}_p1t92w7gfgq7", name,
                                  [text[:cut], text[cut:2 * cut], text[2 * cut:]])

    def echo_stream_error(self) -> Reply:
        async def reply(request: web.Request, body: Any) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            return await cohere_stream(["Partial"], finish="ERROR",
                                       error=f"internal failure for {auth}")(request, body)
        return reply


# ----------------------------------------------------------------------------------- GigaChat


def giga_completion(content: str, *, finish: str = "stop", function_call: Any = None,
                    usage: dict[str, int] | None = None) -> dict[str, Any]:
    """A GigaChat chat answer as post-chat documents it."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if function_call is not None:
        message["function_call"] = function_call
        message["functions_state_id"] = "77d3fb14-457a-46ba-937e-8d856156d003"
    return {"choices": [{"message": message, "index": 0, "finish_reason": finish}],
            "created": 1678878333, "model": "GigaChat:1.0.26.20", "object": "chat.completion",
            "usage": usage or {"prompt_tokens": 18, "completion_tokens": 6,
                               "total_tokens": 24}}


def _giga_event(delta: dict[str, Any], finish: str | None = None,
                usage: dict[str, int] | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"delta": delta, "index": 0}
    if finish:
        choice["finish_reason"] = finish
    event: dict[str, Any] = {"choices": [choice], "created": 1683034756,
                             "model": "GigaChat:latest", "object": "chat.completion"}
    if usage:
        event["usage"] = usage
    return event


def giga_stream(pieces: list[str], *, extra: list[Any] | None = None) -> Reply:
    """The documented stream: deltas, the last one with finish_reason and usage, then [DONE];
    ``extra`` events go after the pieces instead of the finish (and no [DONE] is sent)."""
    events = [_giga_event({"content": p, **({"role": "assistant"} if i == 0 else {})})
              for i, p in enumerate(pieces)]
    if extra is not None:
        return sse_reply(events + extra)
    events.append(_giga_event({"content": ""}, "stop",
                              {"prompt_tokens": 5, "completion_tokens": len(pieces),
                               "total_tokens": 5 + len(pieces)}))
    return sse_reply(events, done=True)


class FakeGigaChat(FakeUpstream):
    """Sber's OAuth endpoint (``/api/v2/oauth``) and REST API v1 (chat, embeddings).

    The OAuth endpoint wants Basic ``base64(client_id:client_secret)``, an ``RqUID`` uuid4 and a
    form body with the scope; it issues short-lived access tokens that the API then requires.
    """

    CLIENT_ID = "e2e-client-id"
    CLIENT_SECRET = "e2e-client-secret-0123456789"
    AUTH_KEY = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    SCOPE = "GIGACHAT_API_PERS"

    def __init__(self) -> None:
        super().__init__()
        self.oauth_calls: list[Seen] = []
        self.oauth_reply: Reply | None = None
        self.valid_tokens: set[str] = set()
        self.issued: list[str] = []

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.CLIENT_SECRET, self.AUTH_KEY, *self.issued)

    def model(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "provider": "gigachat", "url": self.url("/api/v1"),
                "token": f"{self.CLIENT_ID}:{self.CLIENT_SECRET}",
                "options": {"oauth_url": self.url("/api/v2/oauth"), "scope": self.SCOPE},
                **extra}

    def routes(self, upstream: kit.FakeUpstream) -> None:
        upstream.route("POST", "/api/v2/oauth", self.oauth)
        upstream.route("POST", "/api/v1/chat/completions", self.api)
        upstream.route("POST", "/api/v1/embeddings", self.api)

    def calls(self, endpoint: str) -> list[Seen]:
        return [s for s in self.seen if s.path == f"/api/v1/{endpoint}"]

    def revoke(self) -> None:
        """Every access token issued so far stops working (as on expiry or revocation)."""
        self.valid_tokens.clear()

    async def oauth(self, request: web.Request) -> web.StreamResponse:
        raw = (await request.read()).decode()
        seen = Seen(request.path, dict(request.query), CIMultiDict(request.headers), raw)
        self.oauth_calls.append(seen)
        if self.oauth_reply is not None:
            return await self.oauth_reply(request, raw)
        try:
            rq_uid = uuid.UUID(request.headers.get("RqUID", ""))
        except ValueError:
            rq_uid = None
        if request.headers.get("Authorization") != f"Basic {self.AUTH_KEY}" \
                or rq_uid is None or rq_uid.version != 4 \
                or request.content_type != "application/x-www-form-urlencoded" \
                or raw != f"scope={self.SCOPE}":
            return web.json_response({"code": 6, "message": "credentials doesn't match"},
                                     status=401)
        token = f"giga-access-{len(self.issued) + 1}-{uuid.uuid4().hex}"
        self.issued.append(token)
        self.valid_tokens.add(token)
        return web.json_response({"access_token": token,
                                  "expires_at": int((time.time() + 1800) * 1000)})

    async def api(self, request: web.Request) -> web.StreamResponse:
        _, body = await self.record(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.valid_tokens:
            return web.json_response({"status": 401, "message": "Unauthorized"}, status=401)
        default: Reply
        if request.path.endswith("/embeddings"):
            default = json_reply({"object": "list", "model": body["model"], "data": [
                {"object": "embedding", "embedding": vector_for(text), "index": i,
                 "usage": {"prompt_tokens": 3}} for i, text in enumerate(body["input"])]})
        elif body.get("stream"):
            default = giga_stream(["Hello", " from", " GigaChat"])
        else:
            default = json_reply(giga_completion("Hello from GigaChat"))
        return await self.answer(request, body, default)

    def echo_error(self, status: int) -> Reply:
        async def reply(request: web.Request, body: Any) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            headers = {"Retry-After": "30"} if status == 429 else None
            return web.json_response({"status": status, "message": f"refused for {auth}"},
                                     status=status, headers=headers)
        return reply

    @staticmethod
    def tool_call_stream(name: str, args: dict[str, Any]) -> Reply:
        """GigaChat sends a function call whole, in one event, with finish_reason
        function_call."""
        return sse_reply([_giga_event(
            {"role": "assistant", "content": "",
             "function_call": {"name": name, "arguments": args},
             "functions_state_id": "77d3fb14-457a-46ba-937e-8d856156d003"},
            "function_call", {"prompt_tokens": 30, "completion_tokens": 9,
                              "total_tokens": 39})], done=True)

    def echo_stream_error(self) -> Reply:
        async def reply(request: web.Request, body: Any) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            error = {"status": 500, "message": f"internal failure for {auth}"}
            return await giga_stream(["Partial"], extra=[error])(request, body)
        return reply


# --------------------------------------------------------------------------------- Cloudflare


def cf_envelope(result: Any) -> dict[str, Any]:
    """Cloudflare's API v4 envelope around a successful result."""
    return {"result": result, "success": True, "errors": [], "messages": []}


def cf_failure(code: int, message: str) -> dict[str, Any]:
    return {"result": None, "success": False, "errors": [{"code": code, "message": message}],
            "messages": []}


def cf_stream(pieces: list[str], *, extra: list[Any] | None = None) -> Reply:
    """Text generation with ``"stream": true``: ``data: {"response": ...}`` events, a last one
    with the usage, then ``data: [DONE]``; ``extra`` replaces that end."""
    events: list[Any] = [{"response": p, "p": "abc"} for p in pieces]
    if extra is not None:
        return sse_reply(events + extra)
    events.append({"response": "", "usage": {"prompt_tokens": 8,
                                             "completion_tokens": len(pieces),
                                             "total_tokens": 8 + len(pieces)}})
    return sse_reply(events, done=True)


class FakeCloudflare(FakeUpstream):
    """``POST /client/v4/accounts/{account}/ai/run/{model}``, keyed by a Bearer API token."""

    TOKEN = "cf-e2e-api-token-0123456789"
    SECRETS = (TOKEN,)

    def model(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "provider": "cloudflare", "url": self.url("/client/v4"),
                "token": self.TOKEN, "options": {"account_id": CF_ACCOUNT}, **extra}

    def routes(self, upstream: kit.FakeUpstream) -> None:
        upstream.route("POST", "/client/v4/accounts/{account}/ai/run/{model:.+}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        _, body = await self.record(request)
        if request.headers.get("Authorization") != f"Bearer {self.TOKEN}" \
                or request.match_info["account"] != CF_ACCOUNT:
            return await json_reply(cf_failure(10000, "Authentication error"), 401)(request,
                                                                                   body)
        default: Reply
        if "flux" in request.match_info["model"]:
            default = json_reply(cf_envelope({"image": base64.b64encode(JPEG).decode()}))
        elif body.get("stream"):
            default = cf_stream(["Hello", " from", " Workers AI"])
        else:
            default = json_reply(cf_envelope({"response": "Hello from Workers AI", "usage": {
                "prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}}))
        return await self.answer(request, body, default)

    def echo_error(self, status: int) -> Reply:
        codes = {400: 8000, 401: 10000, 429: 3040, 500: 3043}

        async def reply(request: web.Request, body: Any) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            headers = {"Retry-After": "30"} if status == 429 else None
            return await json_reply(cf_failure(codes[status], f"refused for {auth}"), status,
                                    headers)(request, body)
        return reply

    @staticmethod
    def tool_call_stream(name: str, args: dict[str, Any]) -> Reply:
        """Workers AI's streamed tool call: whole, with object arguments, then the usage."""
        return cf_stream([], extra=[
            {"response": "", "tool_calls": [{"name": name, "arguments": args}]},
            {"response": "", "usage": {"prompt_tokens": 40, "completion_tokens": 9,
                                       "total_tokens": 49}},
            b"data: [DONE]\n\n"])

    def echo_stream_error(self) -> Reply:
        async def reply(request: web.Request, body: Any) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            error = cf_failure(3043, f"internal failure for {auth}")
            return await cf_stream(["Partial"], extra=[error])(request, body)
        return reply
