"""Test kit for provider plugins: a fake upstream on 127.0.0.1 and a conformance suite.

A plugin's own tests use it to check the plugin against the contract of ``aiproxy.provider``
with no network and no key::

    from aiproxy.testing import ConformanceAdapter, conformance_tests

    class MyAdapter(ConformanceAdapter):
        provider = MyProvider
        chat_paths = ("/v1/chat",)
        def answer_text(self, text, usage, request): ...   # a plain answer, as the upstream says it
        def stream_text(self, pieces, usage, request): ... # the same answer as stream events
        def error(self, kind, message, request): ...       # that failure, or None if none

    TestMyProviderConformance = conformance_tests(MyAdapter())

The adapter describes how the upstream speaks; the suite plays that upstream on a
:class:`FakeUpstream` (an aiohttp server on 127.0.0.1) and checks what the provider makes of it:
OpenAI shapes, stream invariants, cut streams, early close, error kinds, no leaked key.
``docs/plugins.md`` walks through it. Only :func:`conformance_tests` imports pytest.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import socket
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import aiohttp
import attrs
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from aiproxy.config import ModelConfig
from aiproxy.provider import (
    Capability,
    ChatRequest,
    ChatResponse,
    ErrorKind,
    Provider,
    UpstreamError,
)
from aiproxy.sse import SSEEvent

__all__ = [
    "CHECKS",
    "CHECK_TIMEOUT",
    "ERROR_KINDS",
    "RETRY_AFTER",
    "TEXT",
    "TEXT_PIECES",
    "USAGE",
    "Check",
    "CheckResult",
    "ConformanceAdapter",
    "ConformanceReport",
    "FakeUpstream",
    "Handler",
    "RecordedRequest",
    "SSEEvent",
    "StreamEvent",
    "Usage",
    "applicable_checks",
    "chat_request",
    "collect_stream",
    "conformance_tests",
    "encode_stream",
    "json_response",
    "run_check",
    "run_conformance",
    "stream_response",
]

Handler: TypeAlias = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: One stream event: a dict (JSON-encoded), bytes (sent as the event's data / the line), or
#: an :class:`SSEEvent` when the event needs an ``event:`` name.
StreamEvent: TypeAlias = bytes | dict[str, Any] | SSEEvent
StreamFormat: TypeAlias = Literal["sse", "ndjson"]


@attrs.frozen
class Usage:
    """Token counts the fake upstream reports."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# The canonical answer. Non-ASCII on purpose: it catches providers that mangle encodings.
TEXT_PIECES: tuple[str, ...] = ("Hello", ", conformance", " wörld", "!")
TEXT = "".join(TEXT_PIECES)
USAGE = Usage(prompt_tokens=11, completion_tokens=7)
#: Seconds the fake asks the provider to wait on RATE_LIMITED; the error must carry it.
RETRY_AFTER = 7.0
#: The error kinds the suite asks an adapter for, one check each.
ERROR_KINDS: tuple[ErrorKind, ...] = (
    ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED, ErrorKind.BAD_REQUEST, ErrorKind.AUTH,
    ErrorKind.CONTEXT_LENGTH, ErrorKind.CONTENT_FILTER,
)
#: Bound on one check: a hang (an unreleased connection, a stream that never ends) fails it.
CHECK_TIMEOUT = 15.0

_PING = "/__aiproxy_testing__/ping"


# ---------------------------------------------------------------------------------------------
# The fake upstream


@attrs.frozen
class RecordedRequest:
    """One request the fake upstream received; ``json`` is ``None`` when the body is not JSON."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    raw: bytes
    json: Any

    @classmethod
    async def of(cls, request: web.Request) -> RecordedRequest:
        raw = await request.read()  # cached by aiohttp: a handler may read the body again
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        return cls(request.method, request.path, dict(request.query),
                   CIMultiDictProxy(CIMultiDict(request.headers)), raw, parsed)


class FakeUpstream:
    """An upstream played by the test: an aiohttp server on 127.0.0.1 with an ephemeral port.

    Register handlers with :meth:`route` (any time, also while running); every request is
    recorded in :attr:`requests`; a request no route matches gets a 404 and is also kept in
    :attr:`unrouted`. Use it as ``async with FakeUpstream() as fake:``; ``fake.url`` is the
    root URL, e.g. ``http://127.0.0.1:41234``.
    """

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.unrouted: list[RecordedRequest] = []
        self.url = ""
        self.disconnects = 0
        self._routes: dict[tuple[str, str], Handler] = {}
        self._disconnected = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app[_FAKE] = self
        # One catch-all route: aiohttp freezes its router at start, ours stays editable.
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Answer ``method path`` (exact path, no query) with ``handler``; replaces any before."""
        self._routes[(method.upper(), path)] = handler

    def url_for(self, path: str) -> str:
        return self.url + path

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    async def wait_for_disconnect(self, within: float = 2.0) -> bool:
        """True once a held stream (``stream_response(hold=...)``) saw its client go away."""
        try:
            async with asyncio.timeout(within):
                await self._disconnected.wait()
        except TimeoutError:
            return False
        return True

    def _note_disconnect(self) -> None:
        self.disconnects += 1
        self._disconnected.set()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.path == _PING:
            return web.Response(text="pong")
        record = await RecordedRequest.of(request)
        self.requests.append(record)
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            self.unrouted.append(record)
            return json_response({"error": {"message": f"fake upstream: no route for "
                                            f"{request.method} {request.path}"}}, status=404)
        return await handler(request)

    async def start(self) -> FakeUpstream:
        # A short shutdown grace: a held stream must not keep a test waiting at teardown.
        self._runner = web.AppRunner(self.app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


_FAKE = web.AppKey("aiproxy.testing.fake", FakeUpstream)


def json_response(data: Any, *, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer (``data`` encoded with orjson; bytes are sent as they are)."""
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    return web.Response(body=body, status=status, headers=headers,
                        content_type="application/json")


def encode_stream(events: Sequence[StreamEvent], *, format: StreamFormat = "sse") -> bytes:
    """A whole stream body, for an answer built as a plain ``web.Response``."""
    return b"".join(_frame(event, format) for event in events)


def _frame(event: StreamEvent, fmt: StreamFormat) -> bytes:
    if fmt == "ndjson":
        if isinstance(event, SSEEvent):
            raise TypeError("an SSEEvent in an ndjson stream")
        return (event if isinstance(event, bytes) else orjson.dumps(event)) + b"\n"
    if not isinstance(event, SSEEvent):
        event = SSEEvent(event if isinstance(event, bytes) else orjson.dumps(event))
    head = f"event: {event.event}\n".encode() if event.event else b""
    return head + b"".join(b"data: " + line + b"\n" for line in event.data.split(b"\n")) + b"\n"


async def stream_response(
    request: web.Request,
    events: Sequence[StreamEvent],
    *,
    format: StreamFormat = "sse",
    cut_after: int | None = None,
    hold: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Answer ``events`` as a stream, each written as soon as the previous one is.

    ``cut_after=n`` drops the connection after ``n`` events (an upstream dying mid-answer).
    ``hold=s`` keeps the response open after the events until the client goes away (at most
    ``s`` seconds); a :class:`FakeUpstream` then counts the disconnect.
    """
    content_type = "text/event-stream" if format == "sse" else "application/x-ndjson"
    resp = web.StreamResponse(headers={"Content-Type": content_type, **(headers or {})})
    await resp.prepare(request)
    for i, event in enumerate(events):
        if cut_after is not None and i >= cut_after:
            break
        await resp.write(_frame(event, format))
    if cut_after is not None:
        await asyncio.sleep(0.05)  # let the events reach the client before the reset
        if request.transport is not None:
            request.transport.abort()
        return resp
    if hold is not None:
        await _until_disconnected(request, hold)
        return resp
    await resp.write_eof()
    return resp


async def _until_disconnected(request: web.Request, limit: float) -> None:
    # aiohttp does not cancel a handler whose client left; its transport goes away instead.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            fake = request.app.get(_FAKE)
            if fake is not None:
                fake._note_disconnect()
            return
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# Helpers for a plugin's own tests

#: The conversation every conformance request carries.
MESSAGES: tuple[dict[str, Any], ...] = (
    {"role": "system", "content": "You are a conformance test."},
    {"role": "user", "content": "Say hello."},
)


def chat_request(*, stream: bool = False, include_usage: bool = False,
                 model: str = "conformance/model",
                 messages: Sequence[Mapping[str, Any]] = MESSAGES,
                 **fields: Any) -> ChatRequest:
    """A :class:`ChatRequest` as the core would build it from a client's JSON body."""
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages], **fields}
    if stream:
        body["stream"] = True
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return ChatRequest(body=body, raw=orjson.dumps(body), stream=stream)


async def collect_stream(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every chunk of a provider's stream; closes it whatever happens."""
    chunks, error = await _drain(stream)
    if error is not None:
        raise error
    return chunks


async def _drain(stream: AsyncIterator[dict[str, Any]]
                 ) -> tuple[list[dict[str, Any]], Exception | None]:
    """The chunks a stream yields, and the exception that ended it (``None``: a clean end)."""
    chunks: list[dict[str, Any]] = []
    try:
        async for chunk in stream:
            chunks.append(chunk)
    except Exception as exc:  # noqa: BLE001 - the caller judges what was raised
        return chunks, exc
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
    return chunks, None


# ---------------------------------------------------------------------------------------------
# The adapter: how one upstream says things


class ConformanceAdapter(abc.ABC):
    """Describe your upstream so the suite can play it; subclass once per provider.

    Class attributes say where the provider calls and how it frames streams; the methods
    build native answers for the suite's canonical scenarios. ``request`` arguments are what
    the provider actually sent, so an adapter may answer as the real upstream would (e.g. an
    OpenAI upstream sends a usage chunk only when ``stream_options.include_usage`` asks).
    """

    #: The provider class under test.
    provider: type[Provider]
    #: Paths (POST, no query) of the provider's chat calls, plain and streamed.
    chat_paths: tuple[str, ...] = ()
    #: How the upstream frames streams: server-sent events or newline-delimited JSON.
    stream_format: StreamFormat = "sse"
    #: The upstream key the suite configures; it must never appear in an UpstreamError.
    token: str | None = "sk-conformance-0123456789abcdef"  # noqa: S105 - a dummy to watch for
    #: False where the provider counts tokens itself instead of reporting the upstream's.
    exact_usage: bool = True
    #: False for a provider that calls no upstream (a mock): only the shape checks apply.
    has_upstream: bool = True

    def model_config(self, base_url: str) -> ModelConfig:
        """The model entry that points the provider at the fake upstream (root ``base_url``)."""
        return ModelConfig(name="conformance/model", provider="conformance", url=base_url,
                           token=self.token)

    def setup(self, fake: FakeUpstream) -> None:  # noqa: B027 - an optional hook
        """Route whatever else the provider calls, e.g. an OAuth token endpoint."""

    @abc.abstractmethod
    def answer_text(self, text: str, usage: Usage,
                    request: RecordedRequest) -> dict[str, Any] | web.StreamResponse:
        """A complete plain answer saying ``text``: a JSON body, or a whole response."""

    @abc.abstractmethod
    def stream_text(self, pieces: Sequence[str], usage: Usage,
                    request: RecordedRequest) -> list[StreamEvent]:
        """The streamed answer: one content event per piece, then whatever ends the stream."""

    @abc.abstractmethod
    def error(self, kind: ErrorKind, message: str,
              request: RecordedRequest) -> web.StreamResponse | None:
        """How the upstream answers ``request`` with a failure of ``kind`` (``message`` as its
        text), or ``None`` if it has no such failure. RATE_LIMITED must say: retry after
        :data:`RETRY_AFTER` seconds. Usually an error status (see :func:`json_response`); an
        upstream that reports e.g. a blocked prompt in a 200 answer returns that instead
        (:func:`encode_stream` builds a whole stream body)."""

    def stream_error(self, message: str) -> StreamEvent | None:
        """An error reported inside a stream that has started, if the upstream does that."""
        return None

    def check_request(  # noqa: B027 - an optional hook
            self, request: RecordedRequest, chat: ChatRequest) -> None:
        """Assert on the translated request the provider sent for ``chat`` (optional)."""

    def cut_point(self, events: Sequence[StreamEvent]) -> int:
        """How many events go out before a cut: by default half, so some text got through."""
        return max(1, len(events) // 2)


# ---------------------------------------------------------------------------------------------
# The checks


class ConformanceFailure(AssertionError):
    """A check found the provider breaking the contract."""


def _expect(condition: object, message: str) -> None:
    if not condition:
        raise ConformanceFailure(message)


@attrs.define
class _Run:
    """One check's world: the adapter, a running fake, a session, the provider under test."""

    adapter: ConformanceAdapter
    fake: FakeUpstream
    session: aiohttp.ClientSession
    provider: Provider

    def serve(self, handler: Handler) -> None:
        for path in self.adapter.chat_paths:
            self.fake.route("POST", path, handler)

    def serve_text(self, *, stream: bool, events: Callable[[list[StreamEvent]],
                                                           list[StreamEvent]] | None = None,
                   cut: bool = False, hold: bool = False) -> None:
        """Answer the canonical text; ``events`` may rewrite the stream, ``cut`` drops the
        connection at the adapter's cut point, ``hold`` leaves the stream open there."""
        adapter = self.adapter

        async def handler(request: web.Request) -> web.StreamResponse:
            record = await RecordedRequest.of(request)
            if not stream:
                answer = adapter.answer_text(TEXT, USAGE, record)
                return answer if isinstance(answer, web.StreamResponse) else json_response(answer)
            native = adapter.stream_text(TEXT_PIECES, USAGE, record)
            at = adapter.cut_point(native)
            if events is not None:
                native = events(native)
            if hold:
                return await stream_response(request, native[:at], format=adapter.stream_format,
                                             hold=CHECK_TIMEOUT)
            return await stream_response(request, native, format=adapter.stream_format,
                                         cut_after=at if cut else None)

        self.serve(handler)

    def chat_calls(self) -> list[RecordedRequest]:
        return [r for r in self.fake.requests if r.path in self.adapter.chat_paths]

    def expect_one_call(self, what: str) -> RecordedRequest:
        if self.fake.unrouted:
            first = self.fake.unrouted[0]
            raise ConformanceFailure(
                f"{what}: the provider called {first.method} {first.path}, which the adapter "
                f"does not route (chat_paths={self.adapter.chat_paths!r})")
        calls = self.chat_calls()
        _expect(len(calls) == 1, f"{what}: expected exactly one upstream call, saw "
                f"{len(calls)} (a provider makes one attempt; the core retries)")
        return calls[0]

    def expect_error(self, error: Exception | None, kind: ErrorKind | None, what: str) -> None:
        """``error`` is an UpstreamError (of ``kind`` unless None) that leaks no secret."""
        _expect(error is not None, f"{what}: no error was raised")
        if not isinstance(error, UpstreamError):
            raise ConformanceFailure(
                f"{what}: raised {type(error).__name__}: {error} — every failure must be an "
                f"UpstreamError{f' of kind {kind.name}' if kind else ''}")
        _expect(kind is None or error.kind is kind,
                f"{what}: UpstreamError of kind {error.kind.name}, expected "
                f"{kind.name if kind else ''} ({error.message!r})")
        secret = self.provider.model.token
        if secret:
            shown = " ".join(str(x) for x in (error, error.message, error.code, error.param,
                                              repr(error)))
            _expect(secret not in shown,
                    f"{what}: the upstream key appears in the UpstreamError ({error!r})")

    async def call(self, *, stream: bool, include_usage: bool = False
                   ) -> tuple[ChatRequest, Any, Exception | None]:
        """Make one chat call; ``(request, answer or chunks, exception)``."""
        self.fake.requests.clear()
        request = _canonical(stream=stream, include_usage=include_usage)
        if stream:
            chunks, error = await _drain(self.provider.stream(request))
            return request, chunks, error
        try:
            return request, await self.provider.chat(request), None
        except Exception as exc:  # noqa: BLE001 - judged by the check
            return request, None, exc

    async def expect_pool_free(self) -> None:
        """The provider left no connection checked out (the suite's session allows one)."""
        try:
            async with asyncio.timeout(2.0):
                async with self.session.get(self.fake.url_for(_PING)) as resp:
                    await resp.read()
        except TimeoutError:
            raise ConformanceFailure(
                "a connection to the upstream was still held after the call: release() or "
                "close() every response, also on errors and early exits") from None


def _canonical(*, stream: bool, include_usage: bool = False) -> ChatRequest:
    return chat_request(stream=stream, include_usage=include_usage, temperature=0.5,
                        max_tokens=32)


def _check_usage(usage: Any, exact: bool, where: str) -> None:
    _expect(isinstance(usage, dict), f"{where}: usage is {usage!r}, not an object")
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    for key in keys:
        value = usage.get(key)
        _expect(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                f"{where}: usage.{key} is {value!r}, not a non-negative int")
    got = tuple(usage[k] for k in keys)
    if exact:
        want = (USAGE.prompt_tokens, USAGE.completion_tokens, USAGE.total_tokens)
        _expect(got == want, f"{where}: usage {got} does not match the upstream's {want}")
    else:
        _expect(got[2] == got[0] + got[1], f"{where}: total_tokens is not prompt + completion")


def _check_completion(data: Any, exact_usage: bool) -> None:
    _expect(isinstance(data, dict), "chat() answered no dict")
    _expect(data.get("object") == "chat.completion", f"object is {data.get('object')!r}")
    _expect(isinstance(data.get("id"), str) and data["id"], "id is not a non-empty string")
    _expect(type(data.get("created")) is int, f"created is {data.get('created')!r}, not an int")
    _expect(isinstance(data.get("model"), str), "model is not a string")
    choices = data.get("choices")
    _expect(isinstance(choices, list) and len(choices) == 1, f"choices is {choices!r}")
    choice = choices[0]
    _expect(isinstance(choice, dict) and choice.get("index") == 0, "choices[0].index is not 0")
    message = choice.get("message")
    _expect(isinstance(message, dict) and message.get("role") == "assistant",
            f"choices[0].message.role is not 'assistant' ({message!r})")
    _expect(message.get("content") == TEXT,
            f"content {message.get('content')!r} is not the upstream's {TEXT!r}")
    _expect(choice.get("finish_reason") == "stop",
            f"finish_reason is {choice.get('finish_reason')!r}, expected 'stop'")
    _check_usage(data.get("usage"), exact_usage, "usage")


def _check_chunks(chunks: list[dict[str, Any]], *, include_usage: bool, exact: bool) -> None:
    _expect(chunks, "the stream yielded no chunk")
    for i, chunk in enumerate(chunks):
        _expect(isinstance(chunk, dict) and chunk.get("object") == "chat.completion.chunk",
                f"chunk {i}: object is not 'chat.completion.chunk' ({chunk!r})")
        _expect(isinstance(chunk.get("choices"), list), f"chunk {i}: choices is not a list")
    ids = {(c.get("id"), c.get("created"), c.get("model")) for c in chunks}
    _expect(len(ids) == 1, f"id/created/model differ between chunks: {sorted(map(str, ids))}")
    first = chunks[0]
    _expect(isinstance(first.get("id"), str) and first["id"], "id is not a non-empty string")
    _expect(type(first.get("created")) is int, "created is not an int")
    _expect(isinstance(first.get("model"), str), "model is not a string")
    _expect(first["choices"] and first["choices"][0].get("delta", {}).get("role") == "assistant",
            f"the first chunk does not carry delta.role='assistant' ({first!r})")
    text = ""
    finishes: list[tuple[int, Any]] = []
    for i, chunk in enumerate(chunks):
        for choice in chunk["choices"]:
            delta = choice.get("delta")
            _expect(isinstance(delta, dict), f"chunk {i}: a choice has no delta object")
            _expect(not finishes, f"chunk {i}: a choice after the finish_reason")
            if isinstance(delta.get("content"), str):
                text += delta["content"]
            if choice.get("finish_reason") is not None:
                finishes.append((i, choice["finish_reason"]))
    _expect(text == TEXT, f"the streamed text {text!r} is not the upstream's {TEXT!r}")
    _expect(len(finishes) == 1, f"expected exactly one finish_reason, got {finishes}")
    _expect(finishes[0][1] == "stop", f"finish_reason is {finishes[0][1]!r}, expected 'stop'")
    with_usage = [i for i, c in enumerate(chunks) if c.get("usage") is not None]
    if include_usage:
        last = chunks[-1]
        _expect(with_usage == [len(chunks) - 1] and last["choices"] == [],
                "include_usage: expected the last chunk alone to carry usage, with choices []"
                f" (usage in chunks {with_usage})")
        _check_usage(last["usage"], exact, "the usage chunk")
    else:
        _expect(not with_usage, f"usage was not asked for, but chunks {with_usage} carry it")


CheckFn: TypeAlias = Callable[[_Run], Awaitable[None]]


@attrs.frozen
class Check:
    """One conformance check: ``skip`` says why it does not apply to an adapter (or None)."""

    name: str
    doc: str
    run: CheckFn
    skip: Callable[[ConformanceAdapter], str | None]


def _always(adapter: ConformanceAdapter) -> str | None:
    return None


def _upstream(adapter: ConformanceAdapter) -> str | None:
    return None if adapter.has_upstream else "the provider calls no upstream"


async def _capabilities(run: _Run) -> None:
    cls = type(run.provider)
    caps = cls.capabilities
    _expect(isinstance(caps, frozenset) and all(isinstance(c, Capability) for c in caps),
            f"capabilities must be a frozenset of Capability, got {caps!r}")
    _expect(Capability.CHAT in caps, "the suite serves chat, but capabilities lacks CHAT")
    for cap, method in ((Capability.CHAT, "chat"), (Capability.CHAT, "stream"),
                        (Capability.EMBEDDINGS, "embeddings"), (Capability.IMAGES, "images")):
        if cap in caps:
            _expect(getattr(cls, method) is not getattr(Provider, method),
                    f"capabilities declares {cap.value}, but {cls.__name__}.{method}() is the "
                    "base class's NotImplementedError")


async def _chat(run: _Run) -> None:
    request, answer, error = await run.call(stream=False)
    if error is not None:
        raise ConformanceFailure(f"chat() raised {error!r}")
    _expect(isinstance(answer, ChatResponse), f"chat() returned {type(answer).__name__}, "
            "not ChatResponse")
    _check_completion(answer.data, run.adapter.exact_usage)
    if run.adapter.has_upstream:
        run.adapter.check_request(run.expect_one_call("chat"), request)


async def _stream(run: _Run, include_usage: bool) -> None:
    request, chunks, error = await run.call(stream=True, include_usage=include_usage)
    if error is not None:
        raise ConformanceFailure(f"stream() raised {error!r} after {len(chunks)} chunks")
    _check_chunks(chunks, include_usage=include_usage, exact=run.adapter.exact_usage)
    if run.adapter.has_upstream:
        run.adapter.check_request(run.expect_one_call("stream"), request)


async def _stream_usage(run: _Run) -> None:
    run.serve_text(stream=True)
    await _stream(run, include_usage=True)


async def _stream_no_usage(run: _Run) -> None:
    run.serve_text(stream=True)
    await _stream(run, include_usage=False)


async def _chat_shape(run: _Run) -> None:
    run.serve_text(stream=False)
    await _chat(run)


async def _stream_cut(run: _Run) -> None:
    run.serve_text(stream=True, cut=True)
    _, _, error = await run.call(stream=True)
    run.expect_error(error, ErrorKind.PROTOCOL, "stream cut mid-way (connection reset)")


async def _stream_ends_early(run: _Run) -> None:
    def truncate(events: list[StreamEvent]) -> list[StreamEvent]:
        return events[:run.adapter.cut_point(events)]

    run.serve_text(stream=True, events=truncate)
    _, _, error = await run.call(stream=True)
    run.expect_error(error, ErrorKind.PROTOCOL, "stream ended cleanly before its final event")


async def _stream_aclose(run: _Run) -> None:
    run.serve_text(stream=True, hold=True)
    stream = run.provider.stream(_canonical(stream=True))
    _expect(hasattr(stream, "aclose"), "stream() must return an async generator (aclose())")
    try:
        await anext(stream)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    _expect(await run.fake.wait_for_disconnect(2.0),
            "after aclose() the upstream connection stayed open: close the response in the "
            "generator's finally")


async def _malformed(run: _Run) -> None:
    async def html(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(body=b"<html>gateway page</html>", content_type="text/html")

    run.serve(html)
    _, _, error = await run.call(stream=False)
    run.expect_error(error, ErrorKind.PROTOCOL, "plain answer that is not JSON")

    def garble(events: list[StreamEvent]) -> list[StreamEvent]:
        return [*events[:run.adapter.cut_point(events)], b"{not json"]

    run.serve_text(stream=True, events=garble)
    _, _, error = await run.call(stream=True)
    run.expect_error(error, ErrorKind.PROTOCOL, "stream event that is not JSON")


async def _stream_error_event(run: _Run) -> None:
    event = run.adapter.stream_error("conformance: the model crashed")
    assert event is not None  # guaranteed by the check's skip

    def fail(events: list[StreamEvent]) -> list[StreamEvent]:
        return [*events[:run.adapter.cut_point(events)], event]

    run.serve_text(stream=True, events=fail)
    _, _, error = await run.call(stream=True)
    run.expect_error(error, None, "an error event inside the stream")
    # Not just "the stream ended early": the client should learn what the upstream said.
    _expect("the model crashed" in str(error), f"the error does not carry the upstream's "
            f"message ({error!r})")


async def _connection_refused(run: _Run) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = run.adapter.provider(run.adapter.model_config(f"http://127.0.0.1:{port}"),
                                    run.session)
    try:
        try:
            await provider.chat(_canonical(stream=False))
            error: Exception | None = None
        except Exception as exc:  # noqa: BLE001 - judged below
            error = exc
        run.expect_error(error, ErrorKind.CONNECTION, "chat() with the upstream down")
        _, error = await _drain(provider.stream(_canonical(stream=True)))
        run.expect_error(error, ErrorKind.CONNECTION, "stream() with the upstream down")
    finally:
        await provider.close()


def _error_check(kind: ErrorKind) -> Check:
    async def check(run: _Run) -> None:
        def serve(request: web.Request) -> Awaitable[web.StreamResponse]:
            return _answer_error(run.adapter, kind, f"conformance {kind.value} failure", request)

        run.serve(serve)
        for stream in (False, True):
            what = f"{kind.name} from the upstream ({'stream' if stream else 'chat'})"
            _, got, error = await run.call(stream=stream)
            if kind is ErrorKind.AUTH:
                # One fresh-credentials retry is fine (an expired OAuth token, say).
                _expect(1 <= len(run.chat_calls()) <= 2, f"{what}: "
                        f"{len(run.chat_calls())} upstream calls for one attempt")
            else:
                run.expect_one_call(what)
            if stream:
                _expect(not got, f"{what}: stream() yielded {len(got)} chunks before raising; "
                        "raise before the first chunk so the core can fail over")
            run.expect_error(error, kind, what)
            assert isinstance(error, UpstreamError)
            if kind is ErrorKind.RATE_LIMITED:
                _expect(error.retry_after is not None and abs(error.retry_after - RETRY_AFTER) <= 1,
                        f"{what}: retry_after is {error.retry_after!r}, expected ~{RETRY_AFTER}")

    def skip(adapter: ConformanceAdapter) -> str | None:
        if not adapter.has_upstream:
            return "the provider calls no upstream"
        if not _has_error(adapter, kind):
            return f"the adapter's upstream has no {kind.name} answer"
        return None

    return Check(f"error_{kind.value}", f"an upstream {kind.name} maps to ErrorKind.{kind.name}",
                 check, skip)


async def _answer_error(adapter: ConformanceAdapter, kind: ErrorKind, message: str,
                        request: web.Request) -> web.StreamResponse:
    response = adapter.error(kind, message, await RecordedRequest.of(request))
    assert response is not None
    return response


def _has_error(adapter: ConformanceAdapter, kind: ErrorKind) -> bool:
    """Whether the adapter's upstream has ``kind``, asked with the canonical plain request."""
    request = _canonical(stream=False)
    probe = RecordedRequest("POST", (adapter.chat_paths or ("/",))[0], {},
                            CIMultiDictProxy(CIMultiDict()), request.raw, dict(request.body))
    return adapter.error(kind, "probe", probe) is not None


def _secret_kind(adapter: ConformanceAdapter) -> ErrorKind | None:
    for kind in (ErrorKind.AUTH, *ERROR_KINDS):
        if _has_error(adapter, kind):
            return kind
    return None


async def _no_secret(run: _Run) -> None:
    kind = _secret_kind(run.adapter)
    assert kind is not None
    assert run.adapter.token
    # Some upstreams echo the key they refused; the provider must scrub it.
    echo = f"Incorrect API key provided: {run.adapter.token}"

    def serve(request: web.Request) -> Awaitable[web.StreamResponse]:
        return _answer_error(run.adapter, kind, echo, request)

    run.serve(serve)
    for stream in (False, True):
        _, _, error = await run.call(stream=stream)
        run.expect_error(error, None, f"an upstream error quoting the key "
                         f"({'stream' if stream else 'chat'})")


def _no_secret_skip(adapter: ConformanceAdapter) -> str | None:
    if not adapter.has_upstream or not adapter.token:
        return "no upstream key is configured"
    return None if _secret_kind(adapter) else "the adapter's upstream answers no errors"


CHECKS: dict[str, Check] = {c.name: c for c in (
    Check("capabilities", "declared capabilities are implemented", _capabilities, _always),
    Check("chat", "a plain answer in the OpenAI chat.completion shape", _chat_shape, _always),
    Check("stream_usage", "stream invariants, with the usage chunk asked for", _stream_usage,
          _always),
    Check("stream_no_usage", "stream invariants, no usage chunk when not asked",
          _stream_no_usage, _always),
    Check("stream_cut", "a connection reset mid-stream raises PROTOCOL", _stream_cut,
          _upstream),
    Check("stream_ends_early", "a stream ending before its final event raises PROTOCOL",
          _stream_ends_early, _upstream),
    Check("stream_aclose", "aclose() after the first chunk releases the connection",
          _stream_aclose, _upstream),
    Check("malformed", "an answer or event that is not JSON raises PROTOCOL", _malformed,
          _upstream),
    Check("stream_error_event", "an error event inside a stream raises its UpstreamError",
          _stream_error_event,
          lambda a: _upstream(a) or (None if a.stream_error("probe") is not None
                                     else "the adapter's upstream reports no mid-stream error")),
    Check("connection_refused", "an unreachable upstream raises CONNECTION",
          _connection_refused, _upstream),
    *(_error_check(kind) for kind in ERROR_KINDS),
    Check("no_secret_in_errors", "an upstream error quoting the key does not leak it",
          _no_secret, _no_secret_skip),
)}


# ---------------------------------------------------------------------------------------------
# Running the suite


@attrs.frozen
class CheckResult:
    name: str
    ok: bool
    detail: str = ""
    skipped: bool = False


@attrs.frozen
class ConformanceReport:
    provider: str
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    def summary(self) -> str:
        lines = [f"conformance of {self.provider}:"]
        for r in self.results:
            state = "skip" if r.skipped else "ok" if r.ok else "FAIL"
            lines.append(f"  {state:<4} {r.name}" + (f": {r.detail}" if r.detail else ""))
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        if not self.ok:
            raise AssertionError(self.summary())


def applicable_checks(adapter: ConformanceAdapter) -> list[str]:
    """Names of the checks that apply to ``adapter``, in suite order."""
    return [name for name, check in CHECKS.items() if check.skip(adapter) is None]


@contextlib.asynccontextmanager
async def _world(adapter: ConformanceAdapter) -> AsyncIterator[_Run]:
    async with FakeUpstream() as fake:
        adapter.setup(fake)
        # One connection at most: a response the provider forgets to release then shows up as
        # a pool that is never free again (see _Run.expect_pool_free).
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            provider = adapter.provider(adapter.model_config(fake.url), session)
            try:
                yield _Run(adapter, fake, session, provider)
            finally:
                await provider.close()


async def run_check(adapter: ConformanceAdapter, name: str) -> CheckResult:
    """Run one check of :data:`CHECKS` against ``adapter.provider``."""
    check = CHECKS[name]
    reason = check.skip(adapter)
    if reason is not None:
        return CheckResult(name, ok=True, detail=reason, skipped=True)
    bound = asyncio.timeout(CHECK_TIMEOUT)
    try:
        async with bound, _world(adapter) as run:
            await check.run(run)
            if adapter.has_upstream:
                await run.expect_pool_free()
    except ConformanceFailure as exc:
        return CheckResult(name, ok=False, detail=str(exc))
    except TimeoutError as exc:
        detail = (f"did not finish within {CHECK_TIMEOUT:.0f}s (a call that hangs, or a stream "
                  "that never ends)") if bound.expired() else "".join(
                      traceback.format_exception(exc))
        return CheckResult(name, ok=False, detail=detail)
    except Exception as exc:  # noqa: BLE001 - a crash in the provider is a failed check
        return CheckResult(name, ok=False, detail="".join(traceback.format_exception(exc)))
    return CheckResult(name, ok=True)


async def run_conformance(adapter: ConformanceAdapter,
                          checks: Sequence[str] | None = None) -> ConformanceReport:
    """Run every check (or ``checks``); skipped ones are listed with their reason."""
    results = [await run_check(adapter, name) for name in (checks or CHECKS)]
    return ConformanceReport(adapter.provider.__qualname__, tuple(results))


def conformance_tests(adapter: ConformanceAdapter, name: str | None = None) -> type[object]:
    """A pytest test class with one test per applicable check, to bind at module level::

        TestMyProviderConformance = conformance_tests(MyAdapter())

    The tests are synchronous (each runs its check in ``asyncio.run``), so they need no
    asyncio pytest plugin.
    """
    import pytest  # only here: the rest of the kit works without pytest installed

    class ProviderConformance:
        @pytest.mark.parametrize("check", applicable_checks(adapter))
        def test_conformance(self, check: str) -> None:
            result = asyncio.run(run_check(adapter, check))
            if not result.ok:
                pytest.fail(f"{check}: {result.detail}", pytrace=False)

    ProviderConformance.__name__ = ProviderConformance.__qualname__ = (
        name or f"Test{type(adapter).__name__}Conformance")
    return ProviderConformance
