"""The fake upstream: an aiohttp server on 127.0.0.1 that a test plays the provider's API on."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import attrs
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from aiproxy.sse import SSEEvent

__all__ = [
    "FakeUpstream",
    "Handler",
    "RecordedRequest",
    "SSEEvent",
    "StreamEvent",
    "StreamFormat",
    "encode_stream",
    "json_response",
    "stream_response",
]

Handler: TypeAlias = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: One stream event: a dict (JSON-encoded), bytes (sent as the event's data / the line), or
#: an :class:`SSEEvent` when the event needs an ``event:`` name.
StreamEvent: TypeAlias = bytes | dict[str, Any] | SSEEvent
StreamFormat: TypeAlias = Literal["sse", "ndjson"]

PING = "/__aiproxy_testing__/ping"

# ``{name}`` matches one path segment, ``{name:regex}`` the regex, as in aiohttp's routes.
_PARAM = re.compile(r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<regex>[^{}]+))?\}")


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


def _compile(path: str) -> re.Pattern[str] | None:
    """A regex for a path with ``{name}`` parts; ``None`` for a plain path."""
    if "{" not in path:
        return None
    parts, at = [], 0
    for match in _PARAM.finditer(path):
        parts.append(re.escape(path[at:match.start()]))
        parts.append(f"(?P<{match['name']}>{match['regex'] or '[^/]+'})")
        at = match.end()
    parts.append(re.escape(path[at:]))
    return re.compile("".join(parts))


class FakeUpstream:
    """An upstream played by the test: an aiohttp server on 127.0.0.1 with an ephemeral port.

    Register handlers with :meth:`route` (any time, also while running); every request is
    recorded in :attr:`requests`; a request no route matches gets a 404 and is also kept in
    :attr:`unrouted`. Use it as ``async with FakeUpstream() as fake:``; ``fake.url`` is the
    root URL, e.g. ``http://127.0.0.1:41234``. :attr:`app` may instead be served by another
    test server (pytest-aiohttp's ``aiohttp_server``); then set :attr:`url` yourself.
    """

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.unrouted: list[RecordedRequest] = []
        self.url = ""
        self.disconnects = 0
        self._routes: dict[tuple[str, str], Handler] = {}
        self._patterns: list[tuple[str, re.Pattern[str], Handler]] = []
        self._disconnected = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app[FAKE] = self
        # One catch-all route: aiohttp freezes its router at start, ours stays editable.
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Answer ``method path`` (no query) with ``handler``; replaces any route before.

        ``path`` is exact, or has aiohttp-style ``{name}`` / ``{name:regex}`` parts, which the
        handler reads from ``request.match_info``. Exact paths win over patterns; patterns are
        tried in the order they were added.
        """
        method = method.upper()
        pattern = _compile(path)
        if pattern is None:
            self._routes[(method, path)] = handler
            return
        self._patterns = [p for p in self._patterns if (p[0], p[1].pattern)
                          != (method, pattern.pattern)]
        self._patterns.append((method, pattern, handler))

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

    def note_disconnect(self) -> None:
        """Count a client that went away mid-answer (a handler of your own may call it)."""
        self.disconnects += 1
        self._disconnected.set()

    def _handler_for(self, request: web.Request) -> Handler | None:
        handler = self._routes.get((request.method, request.path))
        if handler is not None:
            return handler
        for method, pattern, candidate in self._patterns:
            match = pattern.fullmatch(request.path) if method in (request.method, "*") else None
            if match is not None:
                # match_info is a dict: give the handler the names it would get from aiohttp.
                request.match_info.update(match.groupdict())
                return candidate
        return self._routes.get(("*", request.path))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.path == PING:
            return web.Response(text="pong")
        record = await RecordedRequest.of(request)
        self.requests.append(record)
        handler = self._handler_for(request)
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


FAKE = web.AppKey("aiproxy.testing.fake", FakeUpstream)


def json_response(data: Any, *, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer (``data`` encoded with orjson; bytes are sent as they are)."""
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    return web.Response(body=body, status=status, headers=headers,
                        content_type="application/json")


def encode_stream(events: Sequence[StreamEvent], *, format: StreamFormat = "sse") -> bytes:
    """A whole stream body, for an answer built as a plain ``web.Response`` (or written by a
    handler of your own, one event at a time)."""
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
            fake = request.app.get(FAKE)
            if fake is not None:
                fake.note_disconnect()
            return
        await asyncio.sleep(0.01)
