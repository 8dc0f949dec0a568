"""``make_app``: the application, the gateway every route passes through, and the lifecycle of
its generations."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from aiproxy.config import Config, Settings
from aiproxy.errors import ProxyError
from aiproxy.generation import ConfigSource, ProviderPool, Runtime
from aiproxy.http import admin, chat, completions, dashboard, media, messages, responses, usage
from aiproxy.http.auth import authenticate
from aiproxy.http.body import BODY_TIMEOUT
from aiproxy.http.errors import error_response
from aiproxy.http.state import (
    LIMITER,
    METRICS,
    OBSERVERS,
    RUNTIME,
    STARTED,
    TRACE,
    Observer,
    Trace,
    stamp,
)
from aiproxy.limits import make_limiter
from aiproxy.limits.base import RateLimiter
from aiproxy.metrics import Metrics
from aiproxy.observability import (
    access_line,
    flush_logs_forever,
    get_logger,
    new_request_id,
    valid_request_id,
)
from aiproxy.plugins import ProviderRegistry
from aiproxy.record import Record
from aiproxy.tracing import make_tracer
from aiproxy.usage import Budgets

__all__ = ["access_log", "make_app", "request_metrics"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = get_logger("aiproxy")
CONFIG = web.AppKey("config", Config)
SETTINGS = web.AppKey("settings", Settings)
# What is echoed or logged of a client-chosen name is bounded: a 5 MiB model name must not
# become 5 MiB of log a request.
LOGGED_NAME_MAX = 256
# The cyclic garbage collector's young-generation threshold while the app serves (CPython's
# default is 700): a collection runs once this many more container objects have been made
# than freed. A request's objects are freed by reference counting as it ends, so with 700 the
# collector ran every ~20 requests at 32 connections, walked the ~1,700 objects of the
# requests in flight and found almost nothing (~13 objects a pass): ~5% of the CPU, and pauses
# of up to ~3 ms (docs/performance.md). Reference cycles are still collected, a pass later.
GC_YOUNG_THRESHOLD = 10_000


async def gateway(request: web.Request, handler: Handler, label: str) -> web.StreamResponse:
    """What every request passes through, ``handler`` being its route's handler and ``label``
    its route in metrics and records: request id, the generation pin, authentication, the
    error envelope, and at the end the observers (``app[OBSERVERS]``: request metrics, the
    usage ledger, the access line, ...), each given the request's settled record once the
    answer has left (before it, when a budget's charge must land first).

    Every route's handler is this function bound to its handler (:func:`_behind_gateway`),
    not an aiohttp middleware: aiohttp runs any app with a middleware through a handler chain
    and a wrapper of its own for every request (~10k instructions, 1.4% of a request), and
    a catch-all route (:func:`_unmatched`) brings the 404 and 405 answers here too."""
    started = time.monotonic()
    incoming = request.headers.get("X-Request-ID")
    trace = request[TRACE] = Trace(
        request_id=incoming if incoming and valid_request_id(incoming) else new_request_id(),
        started=time.time(), clock=started, method=request.method, path=request.path)
    runtime = request.app[RUNTIME]
    generation = trace.generation = runtime.enter()
    status = 500
    try:
        response = await _answer(request, handler, trace)
        status = response.status
        if not response.prepared:
            stamp(response, trace.request_id)
    except BaseException:
        status = 499 if request.transport is None or request.transport.is_closing() else 500
        raise
    finally:
        stream, trace.open_stream = trace.open_stream, None
        if stream is not None:
            # Settles a stream the handler never pumped. And the record lets go of it: the
            # stream's exchange holds the record, so keeping both would leave a reference
            # cycle of the whole request's objects for the garbage collector.
            await stream.aclose()
        if generation is not None:
            runtime.leave(generation)
        trace.status = 499 if trace.client_gone else status
        trace.total_ms = round((time.monotonic() - started) * 1000, 2)
        trace.route = label
        ledger = request.app[usage.LEDGER]
        loop = runtime.loop
        if loop is None or ledger.charges_budgets():
            observe(request.app[OBSERVERS], trace)
        else:
            # Once the answer has left: the connection (http/protocol.py) writes it as soon as
            # this returns, before the loop runs what is scheduled now, so the client does
            # not wait for its own access line, metrics and usage row (the same work, off the
            # answer's latency). The next request on any connection is read after them.
            loop.call_soon(observe, request.app[OBSERVERS], trace)
    if not response.prepared and ledger.owes(trace):
        # A plain answer leaves once its budget charge (made as the ledger observed it) has
        # landed, so that every replica sees the spend. (A stream's headers went out before
        # its cost was known: it is charged as it ends.)
        await ledger.charged(trace)
    return response


# The route label of every request no route answers (404, 405): one label for them all, so
# that a client cannot mint label values.
UNMATCHED = "unmatched"


def _behind_gateway(handler: Handler,
                    label: str) -> Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]:
    """``handler`` run through the gateway (a partial: no coroutine frame of its own)."""
    return functools.partial(gateway, handler=handler, label=label)


async def _unmatched(request: web.Request) -> web.StreamResponse:
    """The catch-all route, registered last: no other route takes the path (404), or none
    takes it with this method (405, with ``Allow``), answered in the API's envelope by the
    gateway. aiohttp stops at the first match, so the methods are gathered here from the
    other routes (only an error pays for that)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _match, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def observe(observers: list[Observer], record: Record) -> None:
    """Give the settled ``record`` to each observer; one that fails is logged, and the others
    still see the record."""
    for observer in observers:
        try:
            observer(record)
        except Exception as exc:  # noqa: BLE001 - an observer's bug must not cost the others
            log.error("observer_failed", observer=getattr(observer, "__qualname__", "?"),
                      error=type(exc).__name__, request_id=record.request_id)


async def _answer(request: web.Request, handler: Handler, trace: Trace) -> web.StreamResponse:
    """Authenticate and run the handler; every error the proxy answers is the OpenAI
    envelope (Anthropic's on the Messages API paths), nothing internal leaks."""
    try:
        authenticate(request, trace)
        return await handler(request)
    except ProxyError as exc:
        return _envelope(request)(exc)
    except ConnectionError:
        trace.client_gone = True  # the client left; aiohttp drops the connection quietly
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: f"no such endpoint: {request.method} {request.path}",
                   405: f"method {request.method} is not allowed on {request.path}",
                   413: "request body too large"}.get(exc.status, exc.reason)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        code = {404: "not_found", 413: "request_too_large"}.get(exc.status)
        return _envelope(request)(ProxyError(exc.status, message, headers=headers, code=code))
    except Exception as exc:  # noqa: BLE001 - the last line of defence: log briefly, answer 500
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
        log.error("internal_error", error=type(exc).__name__, where=where,
                  request_id=trace.request_id)
        return _envelope(request)(ProxyError(500, "internal error", code="internal_error"))


def _envelope(request: web.Request) -> Callable[[ProxyError], web.Response]:
    """How an error of ``request`` is answered: Anthropic's envelope on the Messages API
    paths, OpenAI's elsewhere (looked up only when there is an error to answer)."""
    return messages.envelope_for(request) or error_response


def request_metrics(metrics: Metrics) -> Observer:
    """The observer that counts each request in ``/metrics``."""

    # The three children a request touches, looked up once per label set (routes, models,
    # providers and statuses: a bounded set) instead of three label lookups a request.
    children: dict[tuple[str, str | None, str | None, int], tuple[Any, Any, Any]] = {}

    def observe(record: Record) -> None:
        key = (record.route, record.model, record.provider, record.status)
        child = children.get(key)
        if child is None:
            child = children[key] = (
                metrics.requests.labels(record.route, record.model or "", record.provider or "",
                                        str(record.status)),
                metrics.duration.labels(record.route), metrics.overhead.labels(record.route))
        child[0].inc()
        elapsed = record.total_ms / 1000
        child[1].observe(elapsed)
        if record.upstream_ms is not None and not record.stream:
            child[2].observe(max(0.0, elapsed - record.upstream_ms / 1000))

    return observe


def access_log(record: Record) -> None:
    """The observer that writes one access line per request (with its ``cost_usd`` at the
    configured prices, when the usage ledger priced it)."""
    requested = record.requested
    if requested is not None and len(requested) > LOGGED_NAME_MAX:
        requested = requested[:LOGGED_NAME_MAX] + "…"
    access_line({
        "event": "request", "level": "info", "timestamp": "",  # filled in by access_line
        "request_id": record.request_id, "method": record.method, "path": record.path,
        "status": record.status, "model": record.model, "requested": requested,
        "provider": record.provider, "attempts": record.attempts, "tried": record.tried,
        "key": record.key_name, "upstream_ms": record.upstream_ms,
        "tokens_in": record.tokens_in, "tokens_out": record.tokens_out,
        "error_kind": record.error_kind, "stream_error": record.stream_error,
        "total_ms": record.total_ms, "cost_usd": record.cost_usd})


async def _expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: the client waits before sending its body. Grant it only to a
    request that would be let in (authenticated, a body within the size limit), so no one
    streams a body the proxy would refuse; otherwise the refusal is the answer."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        refused = error_response(ProxyError(417, "only 'Expect: 100-continue' is understood",
                                            code="expectation_failed"))
        stamp(refused, "")
        return refused
    trace = Trace(request_id=new_request_id())
    trace.generation = request.app[RUNTIME].current
    refusal = None
    try:
        authenticate(request, trace)
    except ProxyError as exc:
        refusal = error_response(exc)
    length = request.content_length
    if refusal is None and length is not None and length > request.app[SETTINGS].max_body_size:
        refusal = error_response(ProxyError(413, "request body too large",
                                            code="request_too_large"))
    if refusal is not None:
        stamp(refusal, trace.request_id)  # answered here, not through the gateway
        return refusal
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started
    return None



def make_app(config: Config, settings: Settings, *, registry: ProviderRegistry | None = None,
             limiter: RateLimiter | None = None,
             source: ConfigSource | None = None) -> web.Application:
    """The application; its first generation is built at startup and everything is closed at
    cleanup. ``source`` re-reads the config and settings for a reload (SIGHUP,
    ``POST /admin/reload``)."""
    app = web.Application(
        client_max_size=settings.max_body_size,
        handler_args={"max_field_size": 65536},
    )
    app[CONFIG] = config
    app[SETTINGS] = settings
    app[STARTED] = int(time.time())
    app[METRICS] = metrics = Metrics()
    app[LIMITER] = limiter = limiter or make_limiter(
        settings.redis_url, prefix=settings.redis_prefix, fail_mode=settings.redis_fail_mode)
    # The usage ledger observes every request; budgets are its admission guard.
    app[usage.LEDGER] = ledger = usage.make_ledger(settings, metrics, app)
    app[RUNTIME] = Runtime(ProviderPool(registry or ProviderRegistry(), limiter), metrics,
                           source, guards=(Budgets(ledger, metrics).guard,))
    # The ledger prices the record (``cost_usd``) before the access line and traces read it.
    app[OBSERVERS] = [request_metrics(metrics), ledger.observe, access_log]
    app[BODY_TIMEOUT] = settings.client_body_timeout
    tracer = make_tracer(settings, ledger.cost)
    if tracer is not None:
        app[OBSERVERS].append(tracer.observe)
        app.on_cleanup.append(tracer.close)
    app.cleanup_ctx.append(_lifecycle)
    app.cleanup_ctx.append(usage.lifecycle)
    chat.add_routes(app)
    messages.add_routes(app)
    media.add_routes(app)
    responses.add_routes(app, settings)
    completions.add_routes(app)
    admin.add_routes(app)
    usage.add_routes(app)
    dashboard.add_routes(app)
    app.on_startup.append(_route_through_gateway)
    return app


async def _route_through_gateway(app: web.Application) -> None:
    """At startup, with every route registered (aiohttp freezes the router right after, so
    none can be added that skips the gateway): the catch-all route last, every route's
    handler bound to the gateway under its label, and the 100-continue check on POST."""
    catch_all = app.router.add_route("*", "/{path:.*}", _unmatched).resource
    for route in app.router.routes():
        resource = route.resource
        label = UNMATCHED if resource is catch_all or resource is None else resource.canonical
        # aiohttp has no public way to wrap a registered handler, nor to replace its
        # 100-continue handler.
        route._handler = _behind_gateway(route.handler, label)
        if route.method == "POST":
            # aiohttp's default grants 100-continue to anyone; ours checks first.
            route._expect_handler = _expect_continue


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    runtime.loop = asyncio.get_running_loop()
    try:
        generation = runtime.start(app[CONFIG], app[SETTINGS])
    except BaseException:
        await runtime.close()
        raise
    config = generation.config
    log.info("started", models=[m.name for m in config.models],
             groups={name: list(members) for name, members in generation.router.groups.items()},
             providers=sorted({m.provider for m in config.models}))
    # Everything built so far lives as long as the app: keep it out of the cyclic collector's
    # way (a full collection of a started proxy took ~13 ms, a pause on every request then).
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], GC_YOUNG_THRESHOLD))
    undo_sighup = _install_sighup(runtime) if runtime.source is not None else (lambda: None)
    flusher = asyncio.get_running_loop().create_task(flush_logs_forever())
    try:
        yield
    finally:
        log.info("stopped", cut_in_flight=runtime.in_flight)
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        undo_sighup()
        await runtime.close()
        await app[LIMITER].close()
        gc.set_threshold(*thresholds)


def _install_sighup(runtime: Runtime) -> Callable[[], None]:
    """Reload on SIGHUP (main thread only); returns the undo."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[list[str]]] = set()

    def on_hup() -> None:
        task = loop.create_task(runtime.reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (RuntimeError, ValueError, NotImplementedError):
        return lambda: None  # not the main thread, or no signals here

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return undo
