"""Dashboard sessions: a signed cookie issued for the admin token, never the token itself.

The cookie holds an expiry and a random id, signed with a key derived from ``AUTH_TOKEN``
(HMAC-SHA256): any replica with the same token accepts it, and a new token ends every
session. It is ``HttpOnly`` (no script reads it) and ``SameSite=Strict`` (no other site's page
sends it). Logging out forgets the id in this process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from aiohttp import web

from aiproxy.errors import ProxyError
from aiproxy.http.state import Trace

__all__ = ["COOKIE", "DASHBOARD", "LIFETIME", "REVOKED", "dashboard_access", "issue",
           "session_id", "set_cookie"]

DASHBOARD = "/dashboard"
COOKIE = "aiproxy_session"
LIFETIME = 12 * 3600
# Reachable without a session: the login form and the assets it shows; the page itself
# answers a visitor without one with a redirect to the form.
PUBLIC = frozenset({"/dashboard", "/dashboard/login", "/dashboard/static/dashboard.css"})
# Session ids logged out in this process, with their expiry.
REVOKED = web.AppKey("dashboard_revoked", dict[str, float])


def _key(auth_token: str) -> bytes:
    return hashlib.sha256(b"aiproxy dashboard session\0" + auth_token.encode()).digest()


def _sign(auth_token: str, body: str) -> str:
    return hmac.new(_key(auth_token), body.encode(), hashlib.sha256).hexdigest()


def issue(auth_token: str, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + LIFETIME)
    body = f"{expires}.{secrets.token_urlsafe(18)}"
    return f"{body}.{_sign(auth_token, body)}"


def session_id(request: web.Request, auth_token: str) -> str | None:
    """The id of the request's valid, unexpired, not logged-out session, or None."""
    value = request.cookies.get(COOKIE)
    if not value or value.count(".") != 2:
        return None
    expires, nonce, mac = value.split(".")
    if not hmac.compare_digest(mac, _sign(auth_token, f"{expires}.{nonce}")):
        return None
    if not expires.isdigit() or int(expires) < time.time():
        return None
    if nonce in request.app.get(REVOKED, {}):
        return None
    return nonce


def set_cookie(request: web.Request, response: web.StreamResponse, value: str,
               max_age: int = LIFETIME) -> None:
    secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
    response.set_cookie(COOKIE, value, max_age=max_age, path=DASHBOARD, httponly=True,
                        samesite="Strict", secure=secure)


def dashboard_access(request: web.Request, trace: Trace) -> None:
    """The dashboard's gate, in place of a bearer token: a valid session, or 401."""
    if request.path in PUBLIC:
        return
    generation = trace.generation
    if generation is None:
        raise ProxyError(503, "the proxy is not ready", code="not_ready")
    if session_id(request, generation.settings.auth_token) is None:
        raise ProxyError(401, "log in to the dashboard first (/dashboard/login)",
                         code="login_required")
