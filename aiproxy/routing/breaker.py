"""The per-model circuit breaker, and the probe through which one call reports to it."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

__all__ = ["BreakerState", "CircuitBreaker", "Probe", "Verdict"]


class Verdict(enum.Enum):
    """How one call went, as far as the model's health is concerned."""

    OK = "ok"  # the upstream served: the breaker closes
    FAILED = "failed"  # the upstream is unwell (down, overloaded, timed out, broke a stream)
    NEUTRAL = "neutral"  # neither: cancelled, client gone, the client's own bad request, 429


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

    def probe(self) -> Probe | None:
        """A permit for one call, or ``None`` while the circuit is open (or a half-open probe
        is already out). The call reports back through :meth:`Probe.end`, exactly once."""
        return Probe(self) if self.allow() else None

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


class Probe:
    """One call's permit from a breaker. :meth:`end` reports the verdict; only the first report
    counts, so every exit path may end it without double counting. As a context manager, a
    probe that an exception leaves without a verdict (cancelled, a bug) is released; one that
    the block leaves normally stays out until ended (a stream ends it when it ends)."""

    __slots__ = ("_breaker", "ended")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self.ended = False

    def end(self, verdict: Verdict) -> None:
        if self.ended:
            return
        self.ended = True
        if verdict is Verdict.OK:
            self._breaker.success()
        elif verdict is Verdict.FAILED:
            self._breaker.failure()
        else:
            self._breaker.release()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.end(Verdict.NEUTRAL)
