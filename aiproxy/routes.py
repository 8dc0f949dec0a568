"""Build a config's routes: one provider per model, on client sessions shared by keep-alive."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from aiproxy.config import Config
from aiproxy.plugins import ProviderRegistry
from aiproxy.provider import Provider
from aiproxy.retry import CircuitBreaker, RetryPolicy
from aiproxy.router import Route
from aiproxy.settings import Settings

__all__ = ["build_routes", "make_session"]


def make_session(keepalive: float) -> aiohttp.ClientSession:
    """One pooled client session: no total timeout (long streams), keep-alive as configured."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=keepalive or None,
                                     enable_cleanup_closed=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                 read_bufsize=2**18, auto_decompress=True)


def build_routes(config: Config, settings: Settings, registry: ProviderRegistry,
                 sessions: dict[float, aiohttp.ClientSession],
                 reuse: Mapping[str, Route] | None = None) -> dict[str, Route]:
    """Build one route per model. A route in ``reuse`` whose model config is unchanged is kept
    (its provider, breaker and recency), with the retry settings of ``settings``."""
    policy = RetryPolicy(settings.retry_max_retries, settings.retry_base_delay,
                         settings.retry_max_delay, settings.retry_jitter)
    routes: dict[str, Route] = {}
    for model in config.models:
        old = (reuse or {}).get(model.name)
        if old is not None and old.model == model:
            old.retry = policy.with_override(model.retry)
            routes[model.name] = old
            continue
        cls = registry.get(model.provider)
        keepalive = model.http_client_config.idle_conn_timeout_seconds
        session = sessions.get(keepalive)
        if session is None:
            session = sessions[keepalive] = make_session(keepalive)
        provider: Provider = cls(model, session)
        breaker = model.circuit_breaker
        routes[model.name] = Route(model, provider, policy.with_override(model.retry),
                                   CircuitBreaker(breaker.failures, breaker.cooldown,
                                                  max(breaker.max_cooldown, breaker.cooldown)))
    return routes
