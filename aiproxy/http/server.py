"""Serving the application: bind, guard client connections, and shut down within the grace.

``web.run_app`` would do the first and the last, but it lets a client hold a connection
forever (no header or idle bound on a new connection), admits any number of connections, and
can wait about twice the grace at shutdown. Here, with the proxy's own server side
(:mod:`aiproxy.http.protocol`):

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

from aiproxy.config import Settings
from aiproxy.http.protocol import ProxyRunner
from aiproxy.http.state import RUNTIME
from aiproxy.observability import get_logger

__all__ = ["connection_limit", "serve"]

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


async def serve(app: web.Application, settings: Settings, *, reuse_port: bool = False,
                on_listening: Callable[[], None] = lambda: None,
                stop_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Run ``app`` until a stop signal, then shut down within ``settings.shutdown_grace``.
    An OSError from binding (a port in use) propagates before anything was started."""
    runner = ProxyRunner(app, settings=settings, handle_signals=False, shutdown_timeout=1.0,
                         max_connections=connection_limit(settings.client_max_connections))
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None,
                       backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
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
        await _shutdown(app, runner, settings.shutdown_grace)


async def _shutdown(app: web.Application, runner: web.AppRunner, grace: float) -> None:
    runtime = app[RUNTIME]
    started = time.monotonic()
    for site in list(runner.sites):
        await site.stop()  # no new connections
    assert runner.server is not None
    runner.server.pre_shutdown()  # idle keep-alive connections close; busy ones after
    log.info("shutting_down", in_flight=runtime.in_flight, grace_s=grace)
    if not await runtime.drained(max(0.0, grace - (time.monotonic() - started))):
        interrupted = runtime.interrupt_streams("the proxy is shutting down")
        log.warning("grace_over", in_flight=runtime.in_flight, streams_interrupted=interrupted)
        await runtime.drained(1.0)  # the interrupted streams write their error events
    await runner.cleanup()  # cancels what is left, then the app's own cleanup

