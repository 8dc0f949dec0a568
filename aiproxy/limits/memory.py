"""The in-process backend: exact sliding logs in deques, for one replica (or tests).

Exact under any concurrency within one event loop because :meth:`acquire` never awaits
between checking the windows and recording the entry. Memory is bounded by the limits: a
window's log is pruned to its length, so it never holds more than its limit of entries.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable

from aiproxy.limits.base import (
    ADMITTED,
    MAX_TOKENS,
    Decision,
    Limits,
    RateLimiter,
    Reservation,
    bounded_seconds,
    bounded_tokens,
    make_decision,
)

__all__ = ["InMemoryRateLimiter"]

# Every this many acquisitions, drop keys whose windows have all emptied (bounded sweep cost).
_SWEEP_EVERY = 4096


class _TokenEntry:
    """One reservation's tokens, shared by the key's token windows so reconcile finds it."""

    __slots__ = ("at", "id", "tokens", "windows")

    def __init__(self, id_: str, at: float, tokens: int) -> None:
        self.id, self.at, self.tokens = id_, at, tokens
        self.windows: list[_TokenWindow] = []  # the windows still holding this entry


class _TokenWindow:
    """A sliding log of token entries with a running total (no summing per decision)."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[_TokenEntry] = deque()
        self.total = 0

    def prune(self, cutoff: float, index: dict[str, _TokenEntry]) -> None:
        while self.entries and self.entries[0].at <= cutoff:
            entry = self.entries.popleft()
            self.total -= entry.tokens
            entry.windows.remove(self)
            if not entry.windows:
                index.pop(entry.id, None)

    def free_at(self, excess: int) -> float:
        """When the oldest entries holding at least ``excess`` tokens were taken."""
        freed = 0
        for entry in self.entries:
            freed += entry.tokens
            if freed >= excess:
                return entry.at
        return self.entries[-1].at  # unreachable while total is consistent; be safe


class _KeyState:
    __slots__ = ("entries", "parked_until", "requests", "tokens")

    def __init__(self) -> None:
        self.requests: dict[float, deque[float]] = {}  # window seconds -> times taken
        self.tokens: dict[float, _TokenWindow] = {}
        self.entries: dict[str, _TokenEntry] = {}  # reservation id -> entry
        self.parked_until = float("-inf")

    def prune(self, now: float) -> None:
        for window, log in self.requests.items():
            _prune(log, now - window)
        for window, win in self.tokens.items():
            win.prune(now - window, self.entries)

    def idle(self, now: float) -> bool:
        return (self.parked_until <= now and not any(self.requests.values())
                and not any(w.entries for w in self.tokens.values()))


def _prune(log: deque[float], cutoff: float) -> None:
    # An entry taken at t counts while t > now - window: it frees exactly `window` later.
    while log and log[0] <= cutoff:
        log.popleft()


class InMemoryRateLimiter(RateLimiter):
    """Exact sliding-window limits held in this process; see ``docs/limits.md``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._ids = itertools.count(1)
        self._calls = 0

    async def acquire(self, key: str, limits: Limits, tokens: int = 0) -> Decision:
        return self.decide_now(key, limits, tokens)

    def decide_now(self, key: str, limits: Limits, tokens: int = 0) -> Decision:
        # Nothing awaits here: check-then-record is atomic within the event loop.
        now = self._clock()
        if type(tokens) is not int or not 0 <= tokens <= MAX_TOKENS:
            tokens = bounded_tokens(tokens)
        self._calls += 1
        if not self._calls % _SWEEP_EVERY:
            self._sweep(now)
        state = self._keys.get(key)
        if limits.unlimited:
            # Nothing to count (most models): only a park refuses, and no state is kept.
            if state is not None and state.parked_until > now:
                return Decision(allowed=False, retry_after=state.parked_until - now)
            return ADMITTED  # no window holds a reservation: there is nothing to give back
        if state is None:
            state = self._keys[key] = _KeyState()
        allowed, retry = True, 0.0
        if state.parked_until > now:
            allowed, retry = False, state.parked_until - now
        if not limits.token_windows and len(limits.request_windows) == 1:
            return self._one_request_window(state, limits.request_windows[0], now, allowed,
                                            retry)

        req_logs: list[tuple[float, int, deque[float]]] = []
        for window, limit in limits.request_windows:
            log = state.requests.setdefault(window, deque())
            _prune(log, now - window)
            req_logs.append((window, limit, log))
            if len(log) >= limit:
                # The entry whose expiry brings the count down to limit - 1.
                allowed = False
                retry = max(retry, log[len(log) - limit] + window - now)

        tok_wins: list[tuple[float, int, _TokenWindow]] = []
        for window, limit in limits.token_windows:
            win = state.tokens.setdefault(window, _TokenWindow())
            win.prune(now - window, state.entries)
            tok_wins.append((window, limit, win))
            need = _tokens_needed(tokens, limit)
            if win.total + need > limit:
                allowed = False
                retry = max(retry, win.free_at(win.total + need - limit) + window - now)

        reservation = None
        if allowed:
            reservation = Reservation(key=key, id=str(next(self._ids)), tokens=tokens, at=now)
            for _, _, log in req_logs:
                log.append(now)
            if tok_wins:
                entry = _TokenEntry(reservation.id, now, tokens)
                state.entries[entry.id] = entry
                for _, _, win in tok_wins:
                    win.entries.append(entry)
                    win.total += tokens
                    entry.windows.append(win)

        return make_decision(
            allowed, retry, reservation,
            [(limit, limit - len(log), log[0] + window - now if log else window)
             for window, limit, log in req_logs],
            [(limit, limit - win.total,
              win.entries[0].at + window - now if win.entries else window)
             for window, limit, win in tok_wins])

    async def reconcile(self, reservation: Reservation, limits: Limits, actual_tokens: int) -> None:
        state = self._keys.get(reservation.key)
        entry = state.entries.get(reservation.id) if state else None
        if entry is None:  # no token limits, or the entry already left every window
            return
        actual = bounded_tokens(actual_tokens)
        for win in entry.windows:
            win.total += actual - entry.tokens
        entry.tokens = actual

    async def park(self, key: str, seconds: float) -> None:
        seconds = bounded_seconds(seconds)
        if seconds <= 0:
            return
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        # Never shorten a park another response asked for.
        state.parked_until = max(state.parked_until, self._clock() + seconds)

    @staticmethod
    def _one_request_window(state: _KeyState, window_limit: tuple[float, int], now: float,
                            allowed: bool, retry: float) -> Decision:
        """:meth:`decide_now` for the most common limited subject, one request window and no
        token window: the same decision, without the general case's lists. Nothing is
        reserved (a request slot is never given back, and there are no tokens to reconcile)."""
        window, limit = window_limit
        log = state.requests.get(window)
        if log is None:
            log = state.requests[window] = deque()
        _prune(log, now - window)
        if len(log) >= limit:
            allowed = False
            retry = max(retry, log[len(log) - limit] + window - now)
        if allowed:
            log.append(now)
        return Decision(allowed=allowed, retry_after=retry, requests_limit=limit,
                        requests_remaining=max(0, limit - len(log)),
                        requests_reset=log[0] + window - now if log else window)

    def _sweep(self, now: float) -> None:
        for key in list(self._keys):
            state = self._keys[key]
            state.prune(now)
            if state.idle(now):
                del self._keys[key]


def _tokens_needed(estimate: int, limit: int) -> int:
    """Tokens that must fit in a window for a request to be admitted.

    An estimate over the whole limit counts as the limit (it is admitted into an empty window
    rather than never); a request always needs at least one token, so a window spent to the
    last token refuses even requests that come without an estimate.
    """
    return max(1, min(estimate, limit))
