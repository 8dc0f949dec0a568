"""Operator endpoints: ``POST /admin/reload`` (proxy token only), ``GET /health/ready`` and
``GET /openapi.json``."""

from __future__ import annotations

import functools
from importlib import resources

import orjson
from aiohttp import web

from aiproxy.errors import ProxyError
from aiproxy.reload import reload
from aiproxy.state import LIMITER, RUNTIME

__all__ = ["add_routes"]

_JSON = {"Content-Type": "application/json", "Cache-Control": "no-store"}


async def reload_config(request: web.Request) -> web.Response:
    """Re-read the config and .env; 200 when the new config is live, 400 with its errors."""
    errors = await reload(request.app)
    if errors:
        raise ProxyError(400, "the new configuration was rejected; the old one stays: "
                         + "; ".join(errors), code="invalid_config")
    router = request.app[RUNTIME].active_router()
    return web.Response(body=orjson.dumps({"status": "reloaded",
                                           "models": len(router.routes)}), headers=_JSON)


async def ready(request: web.Request) -> web.Response:
    """Readiness: config loaded and, when limits are shared, Redis reachable."""
    runtime = request.app[RUNTIME]
    checks: dict[str, str] = {"config": "loaded" if runtime.router is not None else "loading"}
    if runtime.settings.redis_url:
        checks["redis"] = "ok" if await request.app[LIMITER].ping() else "unreachable"
    ok = checks["config"] == "loaded" and checks.get("redis", "ok") == "ok"
    body = {"status": "ready" if ok else "not_ready", "checks": checks}
    return web.Response(status=200 if ok else 503, body=orjson.dumps(body), headers=_JSON)


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of this API (``aiproxy/openapi.json``, checked by the tests)."""
    return web.Response(body=_openapi_document(), headers=_JSON)


@functools.cache
def _openapi_document() -> bytes:
    return resources.files("aiproxy").joinpath("openapi.json").read_bytes()


def add_routes(app: web.Application) -> None:
    app.router.add_post("/admin/reload", reload_config)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/openapi.json", openapi)
