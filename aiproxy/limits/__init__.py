"""Rate limiting: the :class:`RateLimiter` interface and its in-memory and Redis backends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiproxy.limits.base import (
    Decision,
    LimiterUnavailable,
    Limits,
    RateLimiter,
    Reservation,
)
from aiproxy.limits.memory import InMemoryRateLimiter

if TYPE_CHECKING:
    from aiproxy.limits.redis import RedisRateLimiter

__all__ = ["Decision", "InMemoryRateLimiter", "LimiterUnavailable", "Limits", "RateLimiter",
           "RedisRateLimiter", "Reservation", "make_limiter"]


def make_limiter(redis_url: str | None, *, prefix: str = "aiproxy:",
                 fail_mode: str = "open") -> RateLimiter:
    """The Redis limiter when ``REDIS_URL`` is set (limits shared by replicas), else in-memory."""
    if not redis_url:
        return InMemoryRateLimiter()
    from aiproxy.limits.redis import RedisRateLimiter

    return RedisRateLimiter(redis_url, prefix=prefix, fail_mode=fail_mode)


def __getattr__(name: str) -> Any:
    # `redis` is an optional dependency: import its backend only when someone asks for it.
    if name == "RedisRateLimiter":
        from aiproxy.limits.redis import RedisRateLimiter

        return RedisRateLimiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
