"""Rate limiting: the :class:`RateLimiter` interface and its in-memory and Redis backends."""

from __future__ import annotations

from aiproxy.limits.base import Decision, Limits, RateLimiter, Reservation

__all__ = ["Decision", "Limits", "RateLimiter", "Reservation"]
