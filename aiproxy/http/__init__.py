"""The HTTP layer: the app and its gateway (:mod:`.app`), authentication, the error
envelope, request bodies, the handlers (:mod:`.chat`, :mod:`.media`, :mod:`.admin`) and the SSE
writer (:mod:`.relay`). Handlers parse, call the router once, and write."""

from __future__ import annotations

from aiproxy.http.app import make_app

__all__ = ["make_app"]
