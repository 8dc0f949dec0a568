"""The one place a :class:`~aiproxy.errors.ProxyError` becomes an HTTP answer."""

from __future__ import annotations

import orjson
from aiohttp import web

from aiproxy.errors import ProxyError

__all__ = ["error_response"]


def error_response(exc: ProxyError) -> web.Response:
    headers = {"Cache-Control": "no-store", **exc.headers}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after is not None:
        # Whole seconds, rounded up, so a client that waits that long is never early.
        headers["Retry-After"] = str(max(1, int(-(-exc.retry_after // 1))))
    return web.Response(status=exc.status, body=orjson.dumps(exc.body()),
                        content_type="application/json", headers=headers)
