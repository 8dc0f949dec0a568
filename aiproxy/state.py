"""Typed keys of what hangs off the application (no global state)."""

from __future__ import annotations

import asyncio

import aiohttp
import attrs
from aiohttp import web

from aiproxy.config import Config
from aiproxy.keys import Grant, KeyRing
from aiproxy.limits.base import RateLimiter
from aiproxy.metrics import Metrics
from aiproxy.plugins import ProviderRegistry
from aiproxy.router import Router
from aiproxy.settings import Settings

__all__ = ["CONFIG", "LIMITER", "METRICS", "REGISTRY", "RUNTIME", "SETTINGS", "STARTED",
           "Runtime", "Trace", "trace_of"]


@attrs.define
class Runtime:
    """What is built at startup (and swapped on reload): the app's state is frozen by then."""

    settings: Settings
    router: Router | None = None
    keys: KeyRing | None = None
    sessions: dict[float, aiohttp.ClientSession] = attrs.field(factory=dict)
    reload_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    retired: list[Router] = attrs.field(factory=list)  # replaced by reloads, closed when idle

    def active_router(self) -> Router:
        if self.router is None:
            raise RuntimeError("the application has not started")
        return self.router


SETTINGS = web.AppKey("settings", Settings)
CONFIG = web.AppKey("config", Config)
REGISTRY = web.AppKey("registry", ProviderRegistry)
LIMITER = web.AppKey("limiter", RateLimiter)
RUNTIME = web.AppKey("runtime", Runtime)
STARTED = web.AppKey("started", int)
METRICS = web.AppKey("metrics", Metrics)


@attrs.define(slots=True)
class Trace:
    """What one request learns on its way, for the access line and metrics (one object on the
    request instead of many keys: a missing key costs a KeyError in aiohttp's mapping)."""

    request_id: str = ""
    requested: str | None = None
    model: str | None = None
    provider: str | None = None
    attempts: int | None = None
    key_name: str | None = None
    upstream_ms: float | None = None
    stream: bool = False
    stream_error: str | None = None
    client_gone: bool = False
    grant: Grant | None = None
    router: Router | None = None


def trace_of(request: web.Request) -> Trace:
    trace: Trace | None = request.get("aiproxy")
    if trace is None:
        trace = request["aiproxy"] = Trace()
    return trace
