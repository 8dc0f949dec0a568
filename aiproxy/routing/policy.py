"""The retry policy: exponential backoff with jitter."""

from __future__ import annotations

import random

import attrs

from aiproxy.config import RetryConfig, Settings

__all__ = ["RetryPolicy"]


@attrs.frozen
class RetryPolicy:
    """How often and how long to retry a request whose candidates all failed retryably.

    ``max_retries`` counts extra rounds over the plan (a plan of one model: retries of it).
    ``jitter`` is the randomised fraction of each delay: 0 = exact exponential, 1 = full jitter.
    ``max_time`` bounds the whole request's retrying; ``max_wait`` is the longest upstream
    ``Retry-After`` the proxy waits out itself rather than answering 429.
    """

    max_retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 30.0
    jitter: float = 0.1
    max_time: float = 60.0
    same_model: int = 1  # quick retries of one model after a 5xx or a reset

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.retry_max_retries, settings.retry_base_delay,
                   settings.retry_max_delay, settings.retry_jitter)

    def with_override(self, override: RetryConfig) -> RetryPolicy:
        return attrs.evolve(
            self,
            max_retries=self.max_retries if override.max_retries is None else override.max_retries,
            base_delay=self.base_delay if override.base_delay is None else override.base_delay,
            max_delay=self.max_delay if override.max_delay is None else override.max_delay,
            jitter=self.jitter if override.jitter is None else override.jitter,
            same_model=self.same_model if override.same_model is None else override.same_model,
        )

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        # base, 2 base, 4 base, ... capped; the exponent is bounded so a huge retry count
        # cannot overflow the float.
        value = float(min(self.base_delay * 2 ** (min(max(retry, 1), 64) - 1), self.max_delay))
        jitter = min(max(self.jitter, 0.0), 1.0)
        # Jitter spreads retries of many clients; it needs no cryptographic randomness.
        return value * (1 - jitter) + random.uniform(0, value * jitter)  # noqa: S311
