"""Retry policy (exponential backoff with jitter, from the ``backoff`` module) and the
per-model circuit breaker."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

import attrs
import backoff

from aiproxy.config import RetryConfig

__all__ = ["BreakerState", "CircuitBreaker", "RetryPolicy"]


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

    def with_override(self, override: RetryConfig) -> RetryPolicy:
        return attrs.evolve(
            self,
            max_retries=self.max_retries if override.max_retries is None else override.max_retries,
            base_delay=self.base_delay if override.base_delay is None else override.base_delay,
            max_delay=self.max_delay if override.max_delay is None else override.max_delay,
            jitter=self.jitter if override.jitter is None else override.jitter,
        )

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        gen = backoff.expo(base=2, factor=self.base_delay, max_value=self.max_delay)
        gen.send(None)  # backoff's generators are primed with one send(None)
        value = 0.0
        for _ in range(retry):
            value = float(next(gen))
        jitter = min(max(self.jitter, 0.0), 1.0)
        return value * (1 - jitter) + backoff.full_jitter(value * jitter)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """closed → (``threshold`` consecutive failures) → open for ``cooldown`` → half-open: one probe
    → closed on success, open again (cool-down doubled, up to ``max_cooldown``) on failure."""

    def __init__(self, threshold: int = 3, cooldown: float = 10.0, max_cooldown: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # threshold 0 disables the breaker: the model is always tried.
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self._failures = 0
        self._cooldown = cooldown
        self._opened_at = 0.0
        self._state = BreakerState.CLOSED
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._cooldown:
            return BreakerState.HALF_OPEN
        return self._state

    def retry_after(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it does now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._cooldown - self._clock())

    def allow(self) -> bool:
        """May a request go to this model now? In half-open, only one probe at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        self._state = BreakerState.CLOSED
        self._cooldown = self.base_cooldown

    def failure(self) -> None:
        if self._probing:
            # The probe failed: back to open, waiting longer before the next probe.
            self._probing = False
            self._cooldown = min(self._cooldown * 2, self.max_cooldown)
            self._open()
            return
        if self._state is BreakerState.OPEN:
            return  # a call that started before the breaker opened: already counted
        self._failures += 1
        if self.threshold and self._failures >= self.threshold:
            self._open()

    def release(self) -> None:
        """An allowed call ended neither in success nor failure (cancelled, client's fault)."""
        self._probing = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
