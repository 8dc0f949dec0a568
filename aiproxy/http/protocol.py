"""The proxy's HTTP/1.1 server side: one :class:`Connection` a client connection, made by a
:class:`ProxyServer`, which :class:`ProxyRunner` gives an application instead of aiohttp's
``web.Server``.

Why not aiohttp's ``RequestHandler``: it is general (access loggers, web sockets and other
upgrades, a task and a future per request, the whole ``StreamResponse.prepare`` path for
every answer), and on the proxy's hot path it was the largest single cost: ~150k of the
~200k instructions aiohttp's server spends on a request, where reading a request with
aiohttp's own parser and writing a fixed answer costs ~50k (docs/performance.md). The same
was done for the upstream side (``aiproxy/upstream.py``).

What stays aiohttp's: the HTTP parser (llhttp, with its limits and its smuggling checks),
``web.Request`` (handlers are unchanged), the application and its router, its 100-continue
hook, ``StreamWriter`` and ``StreamResponse`` for streamed answers. What is the proxy's own:

- the connection's life: requests are taken in order (pipelining), each handled in the
  connection's task (no task a request; its steps run in a context of its own, so context
  variables a request sets stay its own, as with aiohttp's task a request), the handler is
  cancelled when its client leaves;
- a plain answer (``web.Response`` with a byte body: every JSON answer and error) is written
  here, its headers serialized by aiohttp's serializer (which refuses CR and LF in them) and
  sent with the body in one write; anything else (streams, HEAD, compressed, chunked,
  HTTP/1.0, cookies) goes through aiohttp's ``prepare``/``write_eof``;
- the bounds on clients (``CLIENT_HEADER_TIMEOUT``, ``CLIENT_KEEPALIVE_TIMEOUT``,
  ``CLIENT_MAX_CONNECTIONS``): one sweep a fraction of a second for all connections, not a
  timer a request;
- a request aiohttp's parser refuses is answered in the OpenAI envelope and the connection
  closed; a request asking for an upgrade is answered and the connection closed (the proxy
  speaks nothing but HTTP/1.1);
- shutdown: :meth:`ProxyServer.pre_shutdown` closes idle connections and the others after
  their request; :meth:`ProxyServer.shutdown` waits up to its timeout, then cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, cast

import attrs
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import SERVER_SOFTWARE, HttpRequestParser, StreamWriter
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import _serialize_headers
from aiohttp.streams import StreamReader
from aiohttp.web_exceptions import HTTPException
from aiohttp.web_protocol import RequestPayloadError

from aiproxy.config import Settings
from aiproxy.errors import ProxyError
from aiproxy.http.errors import error_response
from aiproxy.observability import get_logger
from aiproxy.upstream import ResumeWhenPaused

__all__ = ["Connection", "ProxyRunner", "ProxyServer"]

log = get_logger("aiproxy")

# The parser's bounds: a request line, one header line (aiohttp's default is 8190; a JWT or
# a long cookie passes), and how many headers.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 65536
MAX_HEADERS = 128
READ_BUFSIZE = 2**16
# Pipelined requests parsed ahead of the one being answered: past this many, the connection
# is not read until half of them are answered (a client cannot make the proxy hold
# thousands of parsed requests).
MAX_QUEUED = 32
# A body its handler did not read (a refused request) is read and dropped for up to this
# long, so the client reads the answer rather than a reset; then the connection closes.
LINGER_S = 10.0
# After a request that could not be parsed, what the client still sends is dropped for up to
# this long (see Connection._linger).
GARBAGE_LINGER_S = 2.0

_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_Factory = Callable[..., web.BaseRequest]
_Message = tuple[RawRequestMessage | HttpProcessingError, StreamReader | None]

# Answers with no body (RFC 9110 sections 6.4.1, 15.3.5, 15.4.5): aiohttp writes those.
_EMPTY_BODY_STATUS = frozenset({204, 304})


def _parser_options() -> dict[str, Any]:
    """Newer aiohttp parsers stop emitting pipelined requests past a queue size (resumed by
    ``message_consumed``); with an older one the connection bounds its queue alone."""
    loop = asyncio.new_event_loop()
    try:
        HttpRequestParser(BaseProtocol(loop), loop, READ_BUFSIZE, max_msg_queue_size=MAX_QUEUED)
    except TypeError:
        return {}
    finally:
        loop.close()
    return {"max_msg_queue_size": MAX_QUEUED}


_PARSER_OPTIONS = _parser_options()


class _Date:
    """The ``Date`` header's value, formatted once a second."""

    second = 0
    value = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.value = email.utils.formatdate(second, usegmt=True)
            cls.second = second
        return cls.value


class _InContext:
    """Await ``coro`` with each of its steps run in a fresh copy of the current context, as
    a task of its own would run it (aiohttp gave each request one): context variables a
    request sets are not seen by the next request on its connection. The futures it waits
    on pass through to the connection's task, and so do cancellations."""

    __slots__ = ("_coro", "_run")

    def __init__(self, awaitable: Awaitable[web.StreamResponse]) -> None:
        # A coroutine is driven directly (its __await__ wrapper would add a call a step).
        self._coro: Generator[Any, Any, web.StreamResponse] | Coroutine[
            Any, Any, web.StreamResponse] = (
            awaitable if isinstance(awaitable, types.CoroutineType) else awaitable.__await__())
        self._run = contextvars.copy_context().run

    def __await__(self) -> Generator[Any, Any, web.StreamResponse]:
        coro, run = self._coro, self._run
        send: Any = coro.send
        value: Any = None
        while True:
            try:
                waited = run(send, value)
            except StopIteration as done:
                return cast(web.StreamResponse, done.value)
            try:
                value = yield waited
                send = coro.send
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in: passed on to the coroutine
                value = exc
                send = coro.throw


class Connection(ResumeWhenPaused):
    """One client connection: parse, answer each request in turn, close when told to, when
    the client asks to, or when the client leaves. (A request body's reader resumes it only
    when flow control paused it: :class:`aiproxy.upstream.ResumeWhenPaused`.)"""

    __slots__ = (
        "_busy",
        "_closing",
        "_current",
        "_factory",
        "_handler",
        "_idle",
        "_queue",
        "_served",
        "_server",
        "_task",
        "_wakeup",
        "max_field_size",
        "max_headers",
        "max_line_size",
        "peername",
        "sockname",
        "ssl_context",
    )

    def __init__(self, server: ProxyServer) -> None:
        loop = server.loop
        super().__init__(loop)
        self._server = server
        self._handler: _Handler = server.request_handler
        self._factory: _Factory = server.request_factory
        self._parser = HttpRequestParser(
            self, loop, READ_BUFSIZE, max_line_size=MAX_LINE_SIZE,
            max_field_size=MAX_FIELD_SIZE, max_headers=MAX_HEADERS,
            payload_exception=RequestPayloadError, auto_decompress=True, **_PARSER_OPTIONS)
        self._queue: deque[_Message] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._current: StreamReader | None = None  # the body of the request in hand
        self._busy = False  # a request is being handled
        self._closing = False  # no request after the one in hand
        self._served = 0  # requests taken (the sweep sees activity by it)
        self._idle: asyncio.Future[None] | None = None  # shutdown waits on it
        # Read by web.Request for every request; a connection's never change.
        self.peername: Any = None
        self.sockname: Any = None
        self.ssl_context: Any = None
        self.max_field_size = MAX_FIELD_SIZE
        self.max_headers = MAX_HEADERS
        self.max_line_size = MAX_LINE_SIZE

    # -- the transport's calls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peername = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        self.ssl_context = transport.get_extra_info("sslcontext")
        if not self._server.admit(self, cast(asyncio.Transport, transport)):
            self._closing = True
            return
        self._task = self._loop.create_task(self._serve())

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server.forget(self)
        super().connection_lost(exc)
        self._closing = True
        body = self._current
        if body is not None and not body.is_eof():
            body.set_exception(ConnectionResetError("the client closed the connection"))
        task = self._task
        if task is not None and not task.done():
            task.cancel()  # the handler too: its client is gone
        self._task = None
        if self._parser is not None:
            with contextlib.suppress(Exception):
                self._parser.feed_eof()
        self._parser = None

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if self._closing or parser is None:
            return
        messages: Any
        try:
            messages, _upgraded, _tail = parser.feed_data(data)
        except HttpProcessingError as exc:
            messages = ((exc, None),)
            self._parser = None  # nothing after garbage is read
        if messages:
            self._queue.extend(messages)
            waiter = self._wakeup
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if not self._buffer_paused and len(self._queue) >= MAX_QUEUED:
                self._pause_reading_for_buffer()

    def eof_received(self) -> bool:
        return False  # the transport closes; requests in hand are cancelled by the loss

    # -- the server's calls

    def close(self) -> None:
        """No request after the one in hand; an idle connection closes now."""
        self._closing = True
        if not self._busy and not self._queue:
            self._abandon()

    def idle_for(self) -> tuple[bool, int]:
        """(outside a request, requests taken so far): what the sweep watches."""
        return (not self._busy and not self._queue, self._served)

    async def shutdown(self, timeout: float | None) -> None:  # noqa: ASYNC109 - aiohttp's call
        """Let the request in hand finish within ``timeout``, then cancel it and close."""
        self._closing = True
        if self._busy:
            self._idle = self._loop.create_future()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._abandon()

    def _abandon(self) -> None:
        """Close the transport (the handler, if any, is cancelled as the connection is lost)."""
        self._closing = True
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.cancel()
        if self.transport is not None:
            self.transport.close()

    # -- requests

    async def _serve(self) -> None:
        loop = self._loop
        queue = self._queue
        try:
            while True:
                if not queue:
                    if self._closing:
                        break
                    waiter = self._wakeup = loop.create_future()
                    try:
                        await waiter
                    finally:
                        self._wakeup = None
                    continue
                message, payload = queue.popleft()
                self._consumed()
                if isinstance(message, HttpProcessingError) or payload is None:
                    self._refuse_garbage(message)
                    await self._linger()
                    break
                if not await self._one(message, payload):
                    break
        except asyncio.CancelledError:
            pass  # the client left, or the server cancelled at shutdown
        except Exception as exc:  # noqa: BLE001 - a bug here must close one connection, quietly
            log.error("connection_failed", error=type(exc).__name__)
        finally:
            if self.transport is not None:
                self.transport.close()

    def _consumed(self) -> None:
        """A queued request was taken: let the parser go on, and read again once the queue is
        down to half its bound."""
        parser = self._parser
        if parser is not None and _PARSER_OPTIONS:
            parser.message_consumed()
        if self._buffer_paused and len(self._queue) <= MAX_QUEUED // 2:
            self.data_received(b"")  # what the parser held back
            if len(self._queue) < MAX_QUEUED:
                self._resume_reading_for_buffer()

    async def _one(self, message: RawRequestMessage, payload: StreamReader) -> bool:
        """Handle one request and write its answer; False when the connection must close."""
        self._busy = True
        self._served += 1
        server = self._server
        server.requests_count += 1
        self._current = payload
        try:
            writer = StreamWriter(self, self._loop)
            request = self._factory(message, payload, self, writer, self._task)
            try:
                routed = server.plain.get(message.path)
                match = routed.get(message.method) if routed is not None else None
                if match is not None and "Expect" not in message.headers:
                    request._match_info = match[0]  # type: ignore[attr-defined]
                    response = await _InContext(match[1](request))
                else:
                    response = await _InContext(self._handler(request))
            except HTTPException as exc:
                response = exc
            except (asyncio.CancelledError, ConnectionError):
                raise
            except Exception as exc:  # noqa: BLE001 - the gateway answers first; this is the last line
                log.error("internal_error", error=type(exc).__name__, where="server")
                response = error_response(ProxyError(500, "internal error",
                                                     code="internal_error"))
                response.force_close()
            try:
                keep = await self._write(request, message, response)
            except (asyncio.CancelledError, ConnectionError):
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. a header the serializer refuses
                log.error("answer_failed", error=type(exc).__name__, status=response.status)
                if writer.output_size == 0 and not response.prepared:
                    # Nothing left yet: the client gets a 500, not a silent close.
                    self._write_closing(500, error_response(
                        ProxyError(500, "internal error", code="internal_error")))
                return False
            if not payload.is_eof():
                # Closing with the body still coming would reset the connection, and the
                # client might lose the answer: it is read first.
                keep = await self._drop_body(payload) and keep
            if message.upgrade:
                keep = False  # no protocol but HTTP/1.1 is spoken: the upgrade ends here
            return keep and not self._closing
        except ConnectionError:
            return False
        finally:
            self._current = None
            self._busy = False
            idle = self._idle
            if idle is not None and not idle.done():
                idle.set_result(None)

    async def _write(self, request: web.BaseRequest, message: RawRequestMessage,
                     response: web.StreamResponse) -> bool:
        """Send ``response``; True when the connection may carry another request."""
        if (type(response) is web.Response and not response.prepared
                and response._cookies is None and not response.compression
                and not response.chunked and message.version == (1, 1)
                and message.method != "HEAD" and response.status not in _EMPTY_BODY_STATUS
                and response.status >= 200
                and (not self._server.hooks or not server_hooks(request))):
            body = response.body
            if isinstance(body, (bytes, bytearray)):
                keep = response.keep_alive
                if keep is None:
                    keep = not message.should_close
                if not self._send(response.status, response.reason, response.headers, body,
                                  keep):
                    return False
                if self._paused:
                    await self._drain_helper()  # a client that does not read holds us here
                return keep
        # The general path: aiohttp's, as its own server would write it.
        await response.prepare(request)
        await response.write_eof()
        return bool(response.keep_alive)

    async def _drop_body(self, payload: StreamReader) -> bool:
        """Read and drop what is left of a body no handler read, for up to ``LINGER_S``;
        True if it all came (the connection can carry on)."""
        try:
            async with asyncio.timeout(LINGER_S):
                while not payload.is_eof():
                    await payload.readany()
        except (TimeoutError, RequestPayloadError, ConnectionError, EOFError):
            return False
        return True

    async def _linger(self) -> None:
        """Before closing on garbage: the answer, then the end of what the proxy sends (a
        FIN), then what the client still sends is read and dropped until it closes, for up to
        ``GARBAGE_LINGER_S`` (closing with unread data would reset the connection, and the
        client could lose the answer)."""
        transport = self.transport
        if transport is None:
            return
        if transport.can_write_eof():
            transport.write_eof()
        await asyncio.sleep(GARBAGE_LINGER_S)  # cut short by the client's close

    def _refuse_garbage(self, exc: HttpProcessingError | RawRequestMessage) -> None:
        """A request the parser could not read: the error in the envelope, then close."""
        status = exc.code if isinstance(exc, HttpProcessingError) else 400
        if status not in _PROTOCOL_MESSAGES:
            status = 400
        log.info("bad_http_request", status=status, error=type(exc).__name__)
        self._write_closing(status, error_response(
            ProxyError(status, _PROTOCOL_MESSAGES[status], code="bad_http_request")))

    def _write_closing(self, status: int, response: web.Response) -> None:
        """Write the proxy's own error answer, announcing that the connection closes."""
        self._send(status, response.reason, response.headers, cast(bytes, response.body),
                   False)

    def _send(self, status: int, reason: str, headers: Any, body: bytes | bytearray,
              keep: bool) -> bool:
        """A plain answer on the wire: the headers aiohttp's writer would add, serialized by
        aiohttp's serializer (which refuses CR and LF), and the body in the same write;
        False when the connection is already gone."""
        headers["Content-Length"] = str(len(body))
        if body and "Content-Type" not in headers:
            # RFC 9110 section 8.3: a body without a type is octet-stream (so aiohttp says too)
            headers["Content-Type"] = "application/octet-stream"
        if "Date" not in headers:
            headers["Date"] = _Date.now()
        if "Server" not in headers:
            headers["Server"] = SERVER_SOFTWARE
        if not keep and "Connection" not in headers:
            headers["Connection"] = "close"
        head = _serialize_headers(f"HTTP/1.1 {status} {reason}", headers)
        transport = self.transport
        if transport is None:
            return False
        if len(body) < 65536:
            transport.write(head + body)
        else:  # not copied into one buffer
            transport.write(head)
            transport.write(body)
        return True


_PROTOCOL_MESSAGES = {
    400: "the request is not valid HTTP/1.1 (request line, headers or framing)",
    413: "the request is too large",
    431: "the request headers are too large",
}


def server_hooks(request: web.BaseRequest) -> bool:
    """True when an app on the request's route has ``on_response_prepare`` hooks (the
    proxy's own have none): then answers go through aiohttp's ``prepare``, which runs them."""
    match_info = request.match_info if isinstance(request, web.Request) else None
    if match_info is None:
        return False
    return any(len(app.on_response_prepare) for app in match_info.apps)


def _own_resources_only(app: web.Application) -> bool:
    """True when every resource of ``app`` is a path or a pattern of its own: no sub-app
    (with routes, hooks and middlewares of its own), no static files."""
    return all(isinstance(r, web.PlainResource | web.DynamicResource)
               for r in app.router.resources())


def _plain_routes(app: web.Application) -> dict[str, dict[str, tuple[Any, Any]]]:
    """The routes a request can be given without aiohttp's resolution (``Application._handle``):
    path -> method -> (its match info, made once and frozen, as the router would make it for
    every request; its handler). Only where the router's answer cannot differ: the app has
    no middlewares and no sub-apps, and the path is one plain resource's alone. A request
    with an ``Expect`` header, any other path (one with a query or an escape too), or a method
    the path has no route for, goes through ``Application._handle`` as before."""
    from aiohttp.web_urldispatcher import PlainResource, UrlMappingMatchInfo

    if app.middlewares or not _own_resources_only(app):
        return {}  # sub-apps, static files: the router's order decides
    resources = list(app.router.resources())
    by_path: dict[str, list[PlainResource]] = {}
    earlier: dict[PlainResource, list[web.DynamicResource]] = {}
    dynamic: list[web.DynamicResource] = []
    for resource in resources:
        if isinstance(resource, PlainResource):
            by_path.setdefault(resource.canonical, []).append(resource)
            earlier[resource] = list(dynamic)
        elif isinstance(resource, web.DynamicResource):
            dynamic.append(resource)
    plain: dict[str, dict[str, tuple[Any, Any]]] = {}
    for path, same in by_path.items():
        # The router takes the first resource registered that matches: a pattern registered
        # before the plain resource and matching its path would come first.
        if len(same) != 1 or any(d.get_info()["pattern"].fullmatch(path)
                                 for d in earlier[same[0]]):
            continue
        for route in same[0]:
            if route.method == "*":
                continue
            match = UrlMappingMatchInfo({}, route)
            match.add_app(app)
            match.freeze()
            plain.setdefault(path, {})[route.method] = (match, route.handler)
    return plain


class ProxyServer(web.Server):
    """The protocol factory of a listening socket and the registry of its connections; the
    bounds on clients are kept here (see the module's docstring)."""

    def __init__(self, handler: _Handler, *, request_factory: _Factory,
                 loop: asyncio.AbstractEventLoop, max_connections: int,
                 header_timeout: float, keepalive_timeout: float,
                 app: web.Application | None = None) -> None:
        super().__init__(handler, request_factory=request_factory, loop=loop,
                         handler_cancellation=True)
        self.loop = loop
        self.plain = _plain_routes(app) if app is not None else {}
        # Whether an answer may have on_response_prepare hooks to run (the proxy's own app
        # has none, and no sub-apps that could): if not, none is looked for a request.
        self.hooks = (app is None or bool(app.on_response_prepare)
                      or not _own_resources_only(app))
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.open: dict[Connection, asyncio.Transport] = {}
        self.refused = 0  # connections past the cap, closed at once
        self.timed_out = 0  # connections closed by a bound
        # What the sweep saw of each idle connection: (its request count, since when).
        self._seen: dict[Connection, tuple[int, float]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def __call__(self) -> Connection:  # type: ignore[override]
        return Connection(self)

    @property
    def connections(self) -> list[Connection]:  # type: ignore[override]
        return list(self.open)

    def admit(self, connection: Connection, transport: asyncio.Transport) -> bool:
        """Register a new connection; False (and the transport aborted) past the cap: a
        flood gets nothing to read."""
        if len(self.open) >= self.max_connections:
            self.refused += 1
            transport.abort()
            return False
        self.open[connection] = transport
        if self._sweeper is None and (self.header_timeout > 0 or self.keepalive_timeout > 0):
            self._sweeper = self.loop.create_task(self._sweep_forever())
        return True

    def forget(self, connection: Connection) -> None:
        self.open.pop(connection, None)
        self._seen.pop(connection, None)

    def pre_shutdown(self) -> None:
        """Idle connections close now, the others after their request."""
        for connection in list(self.open):
            connection.close()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await asyncio.gather(*(c.shutdown(timeout) for c in list(self.open)))
        self.open.clear()
        self._seen.clear()

    async def _sweep_forever(self) -> None:
        bounds = [b for b in (self.header_timeout, self.keepalive_timeout) if b > 0]
        every = max(0.05, min(1.0, min(bounds) / 4))
        while True:
            await asyncio.sleep(every)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """Close each connection that has stayed outside a request, with no request taken,
        for its bound: ``header_timeout`` for a new one (or one whose next request's headers
        are still coming), the smaller of it and ``keepalive_timeout`` after a request."""
        seen = self._seen
        for connection in list(self.open):
            idle, served = connection.idle_for()
            if not idle:
                seen.pop(connection, None)
                continue
            before = seen.get(connection)
            if before is None or before[0] != served:
                seen[connection] = (served, now)
                continue
            bound = self.header_timeout
            if served and self.keepalive_timeout > 0:
                bound = min(bound, self.keepalive_timeout) if bound > 0 else self.keepalive_timeout
            if bound > 0 and now - before[1] >= bound:
                self.timed_out += 1
                seen.pop(connection, None)
                connection._abandon()


class ProxyRunner(web.AppRunner):
    """``web.AppRunner`` serving the app with :class:`ProxyServer`: the app starts up as
    aiohttp starts it; the bounds come from ``settings`` (the app's own by default)."""

    def __init__(self, app: web.Application, *, settings: Settings | None = None,
                 max_connections: int | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._settings = settings
        self._max_connections = max_connections

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # the app's startup, as aiohttp runs it
        from aiproxy.http.app import SETTINGS  # (app imports this module's users)

        settings = self._settings or self._app.get(SETTINGS)
        defaults = attrs.fields(Settings)
        header = cast(float, settings.client_header_timeout if settings is not None
                      else defaults.client_header_timeout.default)
        keepalive = cast(float, settings.client_keepalive_timeout if settings is not None
                         else defaults.client_keepalive_timeout.default)
        return ProxyServer(plain.request_handler, request_factory=plain.request_factory,
                           loop=asyncio.get_running_loop(),
                           max_connections=self._max_connections or 100_000,
                           header_timeout=header, keepalive_timeout=keepalive, app=self._app)
