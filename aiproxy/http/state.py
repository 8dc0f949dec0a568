"""What hangs off the application (typed keys, no global state) and off each request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import attrs
from aiohttp import web

from aiproxy.errors import ProxyError
from aiproxy.generation import Generation, Runtime
from aiproxy.keys import Grant
from aiproxy.limits.base import RateLimiter
from aiproxy.metrics import Metrics
from aiproxy.record import Record
from aiproxy.routing import RoutedStream

__all__ = ["LIMITER", "METRICS", "OBSERVERS", "RUNTIME", "STARTED", "TRACE", "Observer",
           "Trace", "generation_of", "stamp", "start_stream", "trace_of"]

# Called once per request, after it ended and was settled, with its record. An observer must
# not block: the usage ledger, say, queues the record and writes it elsewhere.
Observer = Callable[[Record], None]

RUNTIME = web.AppKey("runtime", Runtime)
LIMITER = web.AppKey("limiter", RateLimiter)
METRICS = web.AppKey("metrics", Metrics)
STARTED = web.AppKey("started", int)
OBSERVERS = web.AppKey("observers", list[Observer])


@attrs.define(slots=True)
class Trace(Record):
    """A request's record, with what the HTTP layer holds for it: the client key's grant, the
    generation it runs on, and a stream the gateway must settle if the handler never did."""

    grant: Grant | None = None
    generation: Generation | None = None
    open_stream: RoutedStream | None = None


# The request's Trace. aiohttp 3.14 warns on str keys in a request's storage (its typed
# RequestKey is new there); older releases, which we still support, take the str.
TRACE: Any = getattr(web, "RequestKey", lambda name, _: name)("aiproxy", Trace)


def trace_of(request: web.Request) -> Trace:
    trace: Trace | None = request.get(TRACE)
    if trace is None:
        trace = request[TRACE] = Trace()
    return trace


def generation_of(request: web.Request) -> Generation:
    """The generation this request runs on: the one live when it arrived, even across a
    reload; 503 before the first config is loaded."""
    generation = trace_of(request).generation
    if generation is None:
        raise ProxyError(503, "the proxy is not ready", code="not_ready")
    return generation


def stamp(response: web.StreamResponse, request_id: str) -> None:
    """The headers every answer carries: ``nosniff`` and the request id. The gateway stamps
    each answer a handler returns; a stream, whose headers leave before that, is stamped by
    :func:`start_stream`. (Not an ``on_response_prepare`` hook: aiohttp would await it for
    every response.)"""
    headers = response.headers
    headers["X-Content-Type-Options"] = "nosniff"
    if request_id:
        headers["X-Request-ID"] = request_id


class _StreamAnswer(web.StreamResponse):
    """A streamed answer whose headers wait for its first write and leave with it: one
    socket write (one packet for the client to wake up for) instead of two. aiohttp's
    ``Response`` buffers its headers so; a ``StreamResponse`` sends them at once."""

    _send_headers_immediately = False


async def start_stream(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """A streamed answer with ``headers``, stamped as every answer is, and prepared. Its
    caller holds the first chunk and writes it next, so the headers go out with it; in any
    case once this loop step ends (a first chunk that gives the client nothing must not
    hold them back)."""
    response = _StreamAnswer(headers=headers)
    stamp(response, trace_of(request).request_id)
    await response.prepare(request)
    send = getattr(request.writer, "send_headers", None)
    if send is not None:  # (an older aiohttp, without it, sends them in prepare: none wait)
        # The app's loop as the gateway keeps it: on Python 3.11 each get_running_loop() is
        # a getpid() system call (an app built without the lifecycle has no runtime loop).
        runtime = request.app.get(RUNTIME)
        loop = runtime.loop if runtime is not None else None
        (loop or asyncio.get_running_loop()).call_soon(_send_headers, send)
    return response


def _send_headers(send: Callable[[], None]) -> None:
    """The headers, if no write took them yet (a no-op once one did)."""
    with contextlib.suppress(ConnectionError):  # the client left: nothing to send
        send()
