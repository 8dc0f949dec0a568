"""Client keys beside ``AUTH_TOKEN``: which models a key may use, and its own limits."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import attrs

from aiproxy.config import Config, KeyConfig
from aiproxy.errors import ProxyError
from aiproxy.limits.base import LimiterUnavailable, Limits, RateLimiter, Reservation
from aiproxy.router import Route, Router

__all__ = ["Grant", "KeyRing", "admit"]


@attrs.frozen
class Grant:
    """What one client key may do: the names it may ask for and the models they reach."""

    key: KeyConfig
    names: frozenset[str]  # requestable names (listed ones, and models of listed groups)
    models: frozenset[str]  # configured models it may reach
    limits: Limits

    @property
    def everything(self) -> bool:
        return not self.key.models

    def check(self, name: str) -> None:
        """403 when the key may not ask for ``name`` (unknown names stay 404 later)."""
        if not self.everything and name not in self.names:
            raise ProxyError(403, f"key {self.key.name!r} may not use model {name!r}",
                             code="model_not_allowed", param="model")

    def allows(self, route: Route) -> bool:
        return self.everything or route.name in self.models


class KeyRing:
    """Keys by SHA-256 digest, resolved against one router's models and groups."""

    def __init__(self, config: Config, router: Router) -> None:
        self._grants: dict[str, Grant] = {}
        for key in config.keys:
            models: set[str] = set()
            for listed in key.models:
                models.update(route.name for route in router.expand(listed))
            self._grants[key.digest] = Grant(
                key=key, names=frozenset(key.models) | frozenset(models),
                models=frozenset(models),
                limits=Limits(key.requests_per_minute, key.requests_per_hour,
                              key.requests_per_day, key.tokens_per_minute, key.tokens_per_day))

    def find(self, token: str) -> Grant | None:
        # A dict lookup on digests: timing reveals nothing about a key without its preimage.
        return self._grants.get(hashlib.sha256(token.encode()).hexdigest())

    @property
    def grants(self) -> Mapping[str, Grant]:
        return self._grants


async def admit(limiter: RateLimiter, grant: Grant | None, estimate: int) -> Reservation | None:
    """Take one request (and the token estimate) from the key's own limits, or answer 429."""
    if grant is None or grant.limits.unlimited:
        return None
    try:
        decision = await limiter.acquire(f"key:{grant.key.name}", grant.limits, estimate)
    except LimiterUnavailable as exc:
        raise ProxyError(503, f"rate limiter unavailable: {exc}",
                         code="limiter_unavailable") from None
    if not decision.allowed:
        raise ProxyError(429, f"rate limit reached for key {grant.key.name!r}; retry later",
                         code="rate_limit_exceeded", retry_after=decision.retry_after)
    return decision.reservation
