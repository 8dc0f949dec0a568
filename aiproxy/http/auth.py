"""Token authentication (``Authorization: Bearer``, or ``x-api-key`` as Anthropic's clients send
it): ``AUTH_TOKEN`` (compared in constant time), the config's client keys (by SHA-256), and
``METRICS_TOKEN`` for ``/metrics`` only."""

from __future__ import annotations

import hmac

from aiohttp import web

from aiproxy.errors import ProxyError
from aiproxy.http.session import DASHBOARD, dashboard_access
from aiproxy.http.state import Trace

__all__ = ["PUBLIC_PATHS", "api_key", "authenticate", "bearer_token"]

PUBLIC_PATHS = frozenset({"/ping", "/health/ready", "/openapi.json"})
ADMIN_PREFIX = "/admin/"


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def api_key(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer`` or, as Anthropic's clients send it, ``x-api-key``."""
    token = bearer_token(request)
    if token is None:
        token = request.headers.get("x-api-key", "").strip() or None
    return token


def authenticate(request: web.Request, trace: Trace) -> None:
    """Let the request through, or raise the 401/403 it gets, against the settings and keys of
    the generation the request runs on. A client key's grant and name go on the trace."""
    if request.path in PUBLIC_PATHS:
        return
    if request.path == DASHBOARD or request.path.startswith(DASHBOARD + "/"):
        dashboard_access(request, trace)  # a session cookie, never a token in a URL
        return
    token = api_key(request)
    if token is None:
        raise ProxyError(401, "missing API key: send 'Authorization: Bearer <token>' or "
                         "'x-api-key: <token>'", code="missing_api_key")
    generation = trace.generation
    if generation is None:
        raise ProxyError(503, "the proxy is not ready", code="not_ready")
    settings = generation.settings
    # aiohttp keeps undecodable header bytes as surrogates: encode them back, never fail (a
    # non-UTF-8 byte in a token is a wrong token, a 401, not a 500).
    sent = token.encode("utf-8", "surrogateescape")
    if hmac.compare_digest(sent, settings.auth_token.encode()):
        return
    if (request.path == "/metrics" and settings.metrics_token
            and hmac.compare_digest(sent, settings.metrics_token.encode())):
        return
    grant = generation.keys.find(sent)
    if grant is None:
        raise ProxyError(401, "invalid API key", code="invalid_api_key")
    if request.path.startswith(ADMIN_PREFIX) or request.path == "/metrics":
        raise ProxyError(403, f"key {grant.key.name!r} may not use {request.path}",
                         code="forbidden")
    trace.grant = grant
    trace.key_name = grant.key.name
