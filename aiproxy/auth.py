"""Bearer-token authentication: ``AUTH_TOKEN`` (compared in constant time), the config's client
keys (by SHA-256), and ``METRICS_TOKEN`` for ``/metrics`` only."""

from __future__ import annotations

import hmac

from aiohttp import web

from aiproxy.errors import ProxyError
from aiproxy.keys import Grant
from aiproxy.state import RUNTIME, Trace, trace_of

__all__ = ["PUBLIC_PATHS", "authenticate", "bearer_token", "grant_of"]

PUBLIC_PATHS = frozenset({"/ping", "/health/ready", "/openapi.json"})
ADMIN_PREFIX = "/admin/"

def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def grant_of(request: web.Request) -> Grant | None:
    """The client key's grant; ``None`` for the proxy token (every model, no key limits)."""
    grant: Grant | None = trace_of(request).grant
    return grant


def authenticate(request: web.Request, trace: Trace) -> None:
    """Let the request through, or raise the 401/403 it gets. A client key's grant and name
    go on the trace."""
    if request.path in PUBLIC_PATHS:
        return
    token = bearer_token(request)
    if token is None:
        raise ProxyError(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                         code="missing_api_key")
    runtime = request.app[RUNTIME]
    settings = runtime.settings
    if hmac.compare_digest(token.encode(), settings.auth_token.encode()):
        return
    if (request.path == "/metrics" and settings.metrics_token
            and hmac.compare_digest(token.encode(), settings.metrics_token.encode())):
        return
    grant = runtime.keys.find(token) if runtime.keys is not None else None
    if grant is None:
        raise ProxyError(401, "invalid bearer token", code="invalid_api_key")
    if request.path.startswith(ADMIN_PREFIX) or request.path == "/metrics":
        raise ProxyError(403, f"key {grant.key.name!r} may not use {request.path}",
                         code="forbidden")
    trace.grant = grant
    trace.key_name = grant.key.name
