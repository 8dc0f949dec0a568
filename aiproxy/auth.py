"""Bearer-token authentication of clients, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from aiproxy.errors import ProxyError
from aiproxy.state import SETTINGS

__all__ = ["PUBLIC_PATHS", "auth_middleware", "bearer_token"]

PUBLIC_PATHS = frozenset({"/ping"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    token = bearer_token(request)
    if token is None:
        raise ProxyError(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                         code="missing_api_key")
    settings = request.app[SETTINGS]
    if hmac.compare_digest(token.encode(), settings.auth_token.encode()):
        return await handler(request)
    if (request.path == "/metrics" and settings.metrics_token
            and hmac.compare_digest(token.encode(), settings.metrics_token.encode())):
        return await handler(request)
    raise ProxyError(401, "invalid bearer token", code="invalid_api_key")
