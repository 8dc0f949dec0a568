"""Operator endpoints: ``POST /admin/reload`` (proxy token only), ``GET /health/ready``,
``GET /ping``, ``GET /metrics`` and ``GET /openapi.json``."""

from __future__ import annotations

import functools
from importlib import resources

import orjson
from aiohttp import web

from aiproxy.errors import ProxyError
from aiproxy.http.state import LIMITER, METRICS, RUNTIME
from aiproxy.metrics import CONTENT_TYPE

__all__ = ["add_routes"]

_JSON = {"Content-Type": "application/json", "Cache-Control": "no-store"}


async def reload_config(request: web.Request) -> web.Response:
    """Re-read the config and .env; 200 when the new config is live, 400 with its errors."""
    runtime = request.app[RUNTIME]
    errors = await runtime.reload()
    if errors:
        raise ProxyError(400, "the new configuration was rejected; the old one stays: "
                         + "; ".join(errors), code="invalid_config")
    generation = runtime.current
    models = len(generation.config.models) if generation is not None else 0
    return web.Response(body=orjson.dumps({"status": "reloaded", "models": models}),
                        headers=_JSON)


async def ready(request: web.Request) -> web.Response:
    """Readiness: 503 only where requests would fail. With Redis down the proxy still serves
    in ``REDIS_FAIL_MODE=open`` (limits per process meanwhile), so it stays ready; in
    ``closed`` every limited request would be refused, so it is not."""
    generation = request.app[RUNTIME].current
    checks: dict[str, str] = {"config": "loaded" if generation is not None else "loading"}
    ok = generation is not None
    if generation is not None and generation.settings.redis_url:
        reachable = await request.app[LIMITER].ping()
        fail_mode = generation.settings.redis_fail_mode
        checks["redis"] = "ok" if reachable else "unreachable"
        checks["redis_fail_mode"] = fail_mode
        ok = ok and (reachable or fail_mode == "open")
    body = {"status": "ready" if ok else "not_ready", "checks": checks}
    return web.Response(status=200 if ok else 503, body=orjson.dumps(body), headers=_JSON)


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; needs the proxy token or ``METRICS_TOKEN`` (see auth)."""
    registry = request.app[METRICS]
    generation = request.app[RUNTIME].current
    if generation is not None:
        for name, state in generation.router.breaker_states().items():
            registry.breaker_state(name, state.value)
    return web.Response(body=registry.render(), headers={"Content-Type": CONTENT_TYPE,
                                                          "Cache-Control": "no-store"})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of this API (``aiproxy/openapi.json``, checked by the tests)."""
    return web.Response(body=_openapi_document(), headers=_JSON)


@functools.cache
def _openapi_document() -> bytes:
    return resources.files("aiproxy").joinpath("openapi.json").read_bytes()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ping", ping)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/admin/reload", reload_config)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/openapi.json", openapi)
