"""Serving the application: bind, guard client connections, and shut down within the grace.

``web.run_app`` would do the first and the last, but it lets a client hold a connection
forever (no header or idle bound on a new connection), admits any number of connections, and
can wait about twice the grace at shutdown. Here:

- a connection that is not in a request (a new one, or between keep-alive requests) is closed
  after ``CLIENT_HEADER_TIMEOUT`` (slow or missing headers, slowloris), an idle keep-alive one
  after ``CLIENT_KEEPALIVE_TIMEOUT``; a body must arrive within ``CLIENT_BODY_TIMEOUT``;
- at most ``CLIENT_MAX_CONNECTIONS`` connections are open at once (past it, a new one is
  closed at once, so the process keeps file descriptors for its upstreams and its clients);
- on SIGTERM/SIGINT the listening sockets close, idle connections close, requests in flight
  get up to ``SHUTDOWN_GRACE`` to finish; at its end each stream still open gets the error
  event (the answer is incomplete) and the rest are cancelled. The wait is the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from aiproxy.config import Settings
from aiproxy.errors import ProxyError
from aiproxy.http.errors import error_response
from aiproxy.http.state import RUNTIME
from aiproxy.observability import get_logger

__all__ = ["ConnectionGuard", "connection_limit", "envelope_protocol_errors", "serve"]

log = get_logger("aiproxy")

# File descriptors kept back from clients for everything else (upstreams, Redis, logs).
_RESERVED_FDS = 64


def connection_limit(configured: int) -> int:
    """``CLIENT_MAX_CONNECTIONS``, or when 0 (the default) half of the file descriptors the
    process may open, less a reserve: each client stream holds one upstream connection too.
    The soft limit is raised to the hard one first where the system allows it."""
    if configured > 0:
        return configured
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, min(100_000, (soft - _RESERVED_FDS) // 2))


class ConnectionGuard:
    """Watches a ``web.Server``'s connections: the cap on how many, and the bound on how long
    one may sit outside a request."""

    def __init__(self, server: web.Server, *, max_connections: int,
                 header_timeout: float) -> None:
        self.server = server
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.refused = 0
        self.timed_out = 0
        self._idle_since: dict[RequestHandler, float] = {}
        self._task: asyncio.Task[None] | None = None
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            if len(server._connections) > self.max_connections:
                self.refused += 1
                transport.abort()  # no answer: a flood gets nothing to read
                return
            self._idle_since[handler] = time.monotonic()

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            self._idle_since.pop(handler, None)
            lost(handler, exc)

        # The server calls these on itself for every connection; wrapping the bound methods
        # of this one instance is the hook aiohttp leaves.
        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sweep(self) -> None:
        every = max(0.05, min(1.0, self.header_timeout / 4))
        while True:
            await asyncio.sleep(every)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """Close every connection that has been outside a request for the header timeout."""
        for handler, transport in list(self.server._connections.items()):
            if handler._request_in_progress:
                self._idle_since.pop(handler, None)
                continue
            since = self._idle_since.setdefault(handler, now)
            if now - since >= self.header_timeout:
                self.timed_out += 1
                self._idle_since.pop(handler, None)
                transport.close()


def envelope_protocol_errors() -> None:
    """aiohttp answers a request it cannot parse (a bad request line, headers too large)
    itself, in plain text, logging a traceback. The proxy answers every error in the OpenAI
    envelope and logs garbage from a client in one line (a flood of it must not flood the
    log with tracebacks). Applied once per serving process."""
    if getattr(RequestHandler.handle_error, "aiproxy", False):
        return

    def handle_error(self: RequestHandler, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the answer is under way: no error answer can follow")
        log.info("bad_http_request", status=status,
                 error=type(exc).__name__ if exc is not None else None)
        text = _PROTOCOL_MESSAGES.get(status, "the request could not be handled")
        response = error_response(ProxyError(status, text, code="bad_http_request"))
        response.force_close()
        return response

    handle_error.aiproxy = True  # type: ignore[attr-defined]
    RequestHandler.handle_error = handle_error  # type: ignore[method-assign]


_PROTOCOL_MESSAGES = {
    400: "the request is not valid HTTP/1.1 (request line, headers or framing)",
    413: "the request is too large",
    431: "the request headers are too large",
    500: "internal error",
}


async def serve(app: web.Application, settings: Settings, *, reuse_port: bool = False,
                on_listening: Callable[[], None] = lambda: None,
                stop_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Run ``app`` until a stop signal, then shut down within ``settings.shutdown_grace``.
    An OSError from binding (a port in use) propagates before anything was started."""
    envelope_protocol_errors()
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, handler_cancellation=True,
        keepalive_timeout=settings.client_keepalive_timeout, shutdown_timeout=1.0,
        max_field_size=65536)
    await runner.setup()
    assert runner.server is not None
    guard = ConnectionGuard(runner.server,
                            max_connections=connection_limit(settings.client_max_connections),
                            header_timeout=settings.client_header_timeout)
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None,
                       backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    guard.start()
    on_listening()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in stop_signals:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in stop_signals:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
        await _shutdown(app, runner, guard, settings.shutdown_grace)


async def _shutdown(app: web.Application, runner: web.AppRunner, guard: ConnectionGuard,
                    grace: float) -> None:
    runtime = app[RUNTIME]
    started = time.monotonic()
    for site in list(runner.sites):
        await site.stop()  # no new connections
    await guard.stop()
    assert runner.server is not None
    runner.server.pre_shutdown()  # idle keep-alive connections close; busy ones after
    log.info("shutting_down", in_flight=runtime.in_flight, grace_s=grace)
    if not await runtime.drained(max(0.0, grace - (time.monotonic() - started))):
        interrupted = runtime.interrupt_streams("the proxy is shutting down")
        log.warning("grace_over", in_flight=runtime.in_flight, streams_interrupted=interrupted)
        await runtime.drained(1.0)  # the interrupted streams write their error events
    await runner.cleanup()  # cancels what is left, then the app's own cleanup

