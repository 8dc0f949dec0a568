"""``make_app``: the application with its middlewares, shared sessions, providers and router."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from aiproxy import admin, api, media
from aiproxy.auth import authenticate
from aiproxy.config import Config
from aiproxy.errors import ProxyError, error_response
from aiproxy.keys import KeyRing
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
from aiproxy.reload import SOURCE, ConfigSource, install_sighup
from aiproxy.router import Router
from aiproxy.routes import build_routes
from aiproxy.settings import Settings
from aiproxy.state import (
    CONFIG,
    LIMITER,
    METRICS,
    REGISTRY,
    RUNTIME,
    SETTINGS,
    STARTED,
    Runtime,
    Trace,
    trace_of,
)

__all__ = ["make_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = get_logger("aiproxy")


@web.middleware
async def gateway(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What every request passes through, in one middleware (each extra one costs a wrapper
    per request): request id, authentication, the router pin, the error envelope, and at the
    end one access line and the request metrics."""
    started = time.monotonic()
    incoming = request.headers.get("X-Request-ID")
    trace = request["aiproxy"] = Trace(
        request_id=incoming if incoming and valid_request_id(incoming) else new_request_id())
    status = 500
    try:
        response = await _answer(request, handler, trace)
        status = response.status
        return response
    except BaseException:
        status = 499 if request.transport is None or request.transport.is_closing() else 500
        raise
    finally:
        if trace.client_gone:
            status = 499
        elapsed = time.monotonic() - started
        _observe(request, trace, status, elapsed)
        access_line({
            "request_id": trace.request_id, "method": request.method, "path": request.path,
            "status": status, "model": trace.model, "requested": trace.requested,
            "provider": trace.provider, "attempts": trace.attempts, "key": trace.key_name,
            "upstream_ms": trace.upstream_ms, "stream_error": trace.stream_error,
            "total_ms": round(elapsed * 1000, 2)})


async def _answer(request: web.Request, handler: Handler, trace: Trace) -> web.StreamResponse:
    """Authenticate, pin the current router (a reload never changes it mid-request), run the
    handler; every error the proxy answers is the OpenAI envelope, nothing internal leaks."""
    router: Router | None = None
    try:
        authenticate(request, trace)
        router = request.app[RUNTIME].router
        if router is not None:
            router.enter()
            trace.router = router
        return await handler(request)
    except ProxyError as exc:
        return error_response(exc)
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
        return error_response(ProxyError(exc.status, message, headers=headers,
                                         code={404: "not_found", 413: "request_too_large"}
                                         .get(exc.status)))
    except Exception as exc:  # noqa: BLE001 - the last line of defence: log briefly, answer 500
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
        log.error("internal_error", error=type(exc).__name__, where=where,
                  request_id=trace.request_id)
        return error_response(ProxyError(500, "internal error", code="internal_error"))
    finally:
        if router is not None:
            router.leave()


def _observe(request: web.Request, trace: Trace, status: int, elapsed: float) -> None:
    metrics = request.app[METRICS]
    info = request.match_info.route.resource
    # Unmatched paths share one label: a client must not be able to mint label values.
    route = info.canonical if info is not None else "unmatched"
    metrics.requests.labels(route, trace.model or "", trace.provider or "", str(status)).inc()
    metrics.duration.labels(route).observe(elapsed)
    if trace.upstream_ms is not None and not trace.stream:
        metrics.overhead.labels(route).observe(max(0.0, elapsed - trace.upstream_ms / 1000))


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Content-Type-Options"] = "nosniff"
    request_id = trace_of(request).request_id
    if request_id:
        response.headers["X-Request-ID"] = request_id


def make_app(config: Config, settings: Settings, *, registry: ProviderRegistry | None = None,
             limiter: RateLimiter | None = None,
             source: ConfigSource | None = None) -> web.Application:
    """The application; providers and sessions are made at startup and closed at cleanup.

    ``source`` re-reads the config and settings for a reload (SIGHUP, ``/admin/reload``).
    """
    app = web.Application(
        middlewares=[gateway],
        client_max_size=settings.max_body_size,
        handler_args={"max_field_size": 65536},
    )
    app[SETTINGS] = settings
    app[CONFIG] = config
    app[REGISTRY] = registry or ProviderRegistry()
    app[STARTED] = int(time.time())
    app[RUNTIME] = Runtime(settings=settings)
    app[METRICS] = Metrics()
    app[LIMITER] = limiter or make_limiter(settings.redis_url, prefix=settings.redis_prefix,
                                           fail_mode=settings.redis_fail_mode)
    if source is not None:
        app[SOURCE] = source
    app.on_response_prepare.append(_security_headers)
    app.cleanup_ctx.append(_lifecycle)
    api.add_routes(app)
    media.add_routes(app)
    admin.add_routes(app)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    sessions = runtime.sessions
    try:
        routes = build_routes(app[CONFIG], app[SETTINGS], app[REGISTRY], sessions)
        runtime.router = Router(app[CONFIG], routes, app[LIMITER], metrics=app[METRICS])
        runtime.keys = KeyRing(app[CONFIG], runtime.router)
    except BaseException:
        for session in sessions.values():
            await session.close()
        raise
    log.info("started", models=len(routes), providers=sorted({r.model.provider
                                                              for r in routes.values()}))
    # Everything built so far lives as long as the app: keep it out of the cyclic collector's
    # way (a full collection of a started proxy took ~13 ms, a pause on every request then).
    gc.freeze()
    undo_sighup = install_sighup(app) if SOURCE in app else (lambda: None)
    flusher = asyncio.get_running_loop().create_task(flush_logs_forever())
    try:
        yield
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        undo_sighup()
        for retired in runtime.retired:
            await retired.close()
        await runtime.active_router().close()
        for session in sessions.values():
            await session.close()
        await app[LIMITER].close()
