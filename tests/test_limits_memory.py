"""The limiter's behaviour, on the in-memory backend.

``tests/test_limits_redis.py`` imports the tests marked "shared" below and runs them again
with its own ``limiter`` fixture against a real redis-server: both backends must agree.
"""

from __future__ import annotations

import asyncio

import pytest

from aiproxy.limits import InMemoryRateLimiter, Limits, RateLimiter
from aiproxy.limits.memory import _SWEEP_EVERY


class FakeClock:
    """Seconds that move only when a test says so (an epoch-like start, as Redis TIME).

    Kept in integer microseconds so that stepping back and forth lands on exact times.
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self._us = round(now * 1_000_000)

    def __call__(self) -> float:
        return self._us / 1_000_000

    def advance(self, seconds: float) -> None:
        self._us += round(seconds * 1_000_000)


def approx(seconds: float) -> object:
    return pytest.approx(seconds, abs=1e-5)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def limiter(clock: FakeClock) -> RateLimiter:
    return InMemoryRateLimiter(clock=clock)


# --- shared: every test up to the marker below runs on both backends -------------------------


async def test_exact_under_concurrency(limiter: RateLimiter) -> None:
    limits = Limits(requests_per_minute=37)
    decisions = await asyncio.gather(*(limiter.acquire("m", limits) for _ in range(1000)))
    assert sum(d.allowed for d in decisions) == 37
    refused = [d for d in decisions if not d.allowed]
    assert all(d.reservation is None and d.retry_after == approx(60) for d in refused)


async def test_slides_instead_of_resetting(limiter: RateLimiter, clock: FakeClock) -> None:
    limits = Limits(requests_per_minute=3)
    for _ in range(3):  # taken at t=0, 20, 40
        assert (await limiter.acquire("m", limits)).allowed
        clock.advance(20)
    clock.advance(-0.001)  # t=59.999: the first slot is 1 ms from free
    refused = await limiter.acquire("m", limits)
    assert not refused.allowed
    assert refused.retry_after == approx(0.001)
    clock.advance(0.001)  # t=60: exactly one slot frees, not the whole window
    assert (await limiter.acquire("m", limits)).allowed
    clock.advance(1)  # t=61: the next slot frees at t=80
    refused = await limiter.acquire("m", limits)
    assert (refused.allowed, refused.retry_after) == (False, approx(19))
    clock.advance(19)
    assert (await limiter.acquire("m", limits)).allowed


async def test_hour_and_day_windows(limiter: RateLimiter, clock: FakeClock) -> None:
    hourly, daily = Limits(requests_per_hour=2), Limits(requests_per_day=2)
    for limits in (hourly, daily):
        assert (await limiter.acquire(str(limits), limits)).allowed
        clock.advance(100)
        assert (await limiter.acquire(str(limits), limits)).allowed
    clock.advance(500)  # 700 s after the first hourly entry, 600 s after the first daily one
    refused = await limiter.acquire(str(hourly), hourly)
    assert (refused.allowed, refused.retry_after) == (False, approx(3600 - 700))
    refused = await limiter.acquire(str(daily), daily)
    assert (refused.allowed, refused.retry_after) == (False, approx(86400 - 600))
    clock.advance(3600 - 700)
    assert (await limiter.acquire(str(hourly), hourly)).allowed
    assert not (await limiter.acquire(str(daily), daily)).allowed
    clock.advance(86400 - 600 - (3600 - 700))
    assert (await limiter.acquire(str(daily), daily)).allowed


async def test_all_or_nothing_across_windows(limiter: RateLimiter, clock: FakeClock) -> None:
    limits = Limits(requests_per_minute=10, requests_per_hour=3, tokens_per_minute=100)
    assert (await limiter.acquire("m", limits, tokens=60)).allowed
    # Refused by the token window: no request slot may be taken in any window.
    refused = await limiter.acquire("m", limits, tokens=60)
    assert not refused.allowed and refused.reservation is None
    clock.advance(5)
    ok = await limiter.acquire("m", limits, tokens=10)
    assert (ok.allowed, ok.requests_limit, ok.requests_remaining) == (True, 3, 1)
    assert (ok.tokens_limit, ok.tokens_remaining) == (100, 30)
    assert (await limiter.acquire("m", limits, tokens=0)).allowed
    # Refused by the hour window: the minute and token windows must not record it either.
    refused = await limiter.acquire("m", limits, tokens=5)
    assert (refused.allowed, refused.retry_after) == (False, approx(3600 - 5))
    assert (refused.requests_limit, refused.requests_remaining) == (3, 0)
    assert refused.tokens_remaining == 30
    roomy = await limiter.acquire("m", Limits(requests_per_minute=10, tokens_per_minute=100))
    assert (roomy.requests_limit, roomy.requests_remaining, roomy.tokens_remaining) == (10, 6, 30)


async def test_retry_after_is_the_latest_violated_window(limiter: RateLimiter,
                                                          clock: FakeClock) -> None:
    limits = Limits(requests_per_minute=2, requests_per_hour=3)
    for step in (40, 30, 10):  # taken at t=0, 40, 70 (t=0 has left the minute by t=70)
        assert (await limiter.acquire("m", limits)).allowed
        clock.advance(step)
    refused = await limiter.acquire("m", limits)  # t=80: minute frees at 100, hour at 3600
    assert (refused.allowed, refused.retry_after) == (False, approx(3600 - 80))


async def test_tokens_reserve_and_reconcile(limiter: RateLimiter, clock: FakeClock) -> None:
    limits = Limits(tokens_per_minute=1000)
    first = await limiter.acquire("m", limits, tokens=800)
    assert (first.allowed, first.tokens_limit, first.tokens_remaining) == (True, 1000, 200)
    assert first.reservation is not None and first.reservation.tokens == 800
    clock.advance(10)
    refused = await limiter.acquire("m", limits, tokens=300)
    assert (refused.allowed, refused.retry_after, refused.tokens_remaining) == (
        False, approx(50), 200)
    await limiter.reconcile(first.reservation, limits, 100)  # it used less than estimated
    second = await limiter.acquire("m", limits, tokens=300)
    assert (second.allowed, second.tokens_remaining) == (True, 600)
    assert second.reservation is not None
    clock.advance(10)
    await limiter.reconcile(second.reservation, limits, 900)  # and this one more
    refused = await limiter.acquire("m", limits, tokens=1)  # 100 + 900: the window is full
    # One token frees when the oldest entry (t=0, 100 tokens) leaves at t=60.
    assert (refused.allowed, refused.retry_after, refused.tokens_remaining) == (
        False, approx(40), 0)
    clock.advance(40)
    ok = await limiter.acquire("m", limits, tokens=100)
    assert (ok.allowed, ok.tokens_remaining) == (True, 0)


async def test_token_retry_after_waits_for_enough_tokens(limiter: RateLimiter,
                                                         clock: FakeClock) -> None:
    limits = Limits(tokens_per_minute=1000, tokens_per_day=10_000)
    for amount in (400, 400, 200):  # at t=0, 10, 20
        assert (await limiter.acquire("m", limits, tokens=amount)).allowed
        clock.advance(10)
    refused = await limiter.acquire("m", limits, tokens=500)  # t=30: needs both 400s gone
    assert (refused.allowed, refused.retry_after) == (False, approx(40))
    assert (refused.tokens_limit, refused.tokens_remaining) == (1000, 0)
    assert refused.tokens_reset == approx(30)  # the oldest minute entry leaves at t=60
    clock.advance(39.9)
    assert not (await limiter.acquire("m", limits, tokens=500)).allowed
    clock.advance(0.1)
    ok = await limiter.acquire("m", limits, tokens=500)
    assert (ok.allowed, ok.tokens_remaining) == (True, 300)


async def test_estimate_over_the_limit_needs_an_empty_window(limiter: RateLimiter,
                                                             clock: FakeClock) -> None:
    limits = Limits(tokens_per_minute=1000)
    assert (await limiter.acquire("big", limits, tokens=5000)).allowed
    clock.advance(1)
    refused = await limiter.acquire("big", limits, tokens=1)
    assert (refused.allowed, refused.retry_after) == (False, approx(59))
    assert (await limiter.acquire("small", limits, tokens=1)).allowed
    clock.advance(1)
    # The estimate counts as the whole limit: it waits for "small" to leave, then fits.
    refused = await limiter.acquire("small", limits, tokens=5000)
    assert (refused.allowed, refused.retry_after) == (False, approx(59))
    clock.advance(59)
    assert (await limiter.acquire("small", limits, tokens=5000)).allowed


async def test_spent_token_window_refuses_requests_without_estimate(
        limiter: RateLimiter) -> None:
    limits = Limits(tokens_per_minute=100)
    assert (await limiter.acquire("m", limits, tokens=100)).allowed
    assert not (await limiter.acquire("m", limits, tokens=0)).allowed


async def test_many_small_entries(limiter: RateLimiter, clock: FakeClock) -> None:
    # Enough entries to walk past the Redis script's 500-entry pages and 1000-entry prunes.
    limits = Limits(tokens_per_minute=3000)
    for _ in range(1200):
        assert (await limiter.acquire("m", limits, tokens=1)).allowed
        clock.advance(0.01)  # the last one at t=11.99, clock at 12
    refused = await limiter.acquire("m", limits, tokens=3000)  # needs every one of them gone
    assert (refused.allowed, refused.retry_after, refused.tokens_remaining) == (
        False, approx(59.99), 1800)
    clock.advance(59.99)
    ok = await limiter.acquire("m", limits, tokens=3000)
    assert (ok.allowed, ok.tokens_remaining) == (True, 0)


async def test_park(limiter: RateLimiter, clock: FakeClock) -> None:
    limits = Limits(requests_per_minute=100)
    await limiter.park("m", 30)
    await limiter.park("m", 5)  # a shorter park never cuts a longer one
    refused = await limiter.acquire("m", limits)
    assert (refused.allowed, refused.retry_after) == (False, approx(30))
    assert refused.requests_remaining == 100  # nothing taken while parked
    assert (await limiter.acquire("other", limits)).allowed
    clock.advance(10)
    assert (await limiter.acquire("m", Limits())).retry_after == approx(20)  # even unlimited
    clock.advance(20)
    assert (await limiter.acquire("m", limits)).allowed


async def test_decision_header_fields(limiter: RateLimiter, clock: FakeClock) -> None:
    unlimited = await limiter.acquire("free", Limits(), tokens=10)
    # A subject without limits: admitted, nothing counted, so nothing reserved to give back.
    assert unlimited.allowed and unlimited.reservation is None
    assert (unlimited.requests_limit, unlimited.tokens_limit) == (None, None)

    limits = Limits(requests_per_minute=10, requests_per_hour=5, tokens_per_minute=500,
                    tokens_per_day=10_000)
    first = await limiter.acquire("m", limits, tokens=100)
    assert (first.requests_limit, first.requests_remaining, first.requests_reset) == (
        5, 4, approx(3600))  # fewest remaining: the hour
    assert (first.tokens_limit, first.tokens_remaining, first.tokens_reset) == (
        500, 400, approx(60))
    clock.advance(15)
    second = await limiter.acquire("m", limits, tokens=100)
    assert (second.requests_remaining, second.requests_reset) == (3, approx(3600 - 15))
    assert (second.tokens_remaining, second.tokens_reset) == (300, approx(45))

    tie = Limits(requests_per_minute=5, requests_per_hour=5)
    d = await limiter.acquire("tie", tie)  # equal remaining: the later reset is reported
    assert (d.requests_limit, d.requests_remaining, d.requests_reset) == (5, 4, approx(3600))


async def test_reconcile_is_a_no_op_without_token_windows(limiter: RateLimiter) -> None:
    d = await limiter.acquire("m", Limits(requests_per_minute=1), tokens=50)
    # Nothing to reconcile: the in-memory limiter reserves nothing for request windows
    # alone; Redis hands out a reservation whose reconcile changes nothing.
    if d.reservation is not None:
        await limiter.reconcile(d.reservation, Limits(requests_per_minute=1), 5000)
    limits = Limits(tokens_per_minute=100)
    assert (await limiter.acquire("m", limits, tokens=100)).tokens_remaining == 0


# --- in-memory only -----------------------------------------------------------------------


async def test_request_windows_alone_reserve_nothing(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(clock=clock)
    limits = Limits(requests_per_minute=2)
    first = await limiter.acquire("m", limits, tokens=10)
    clock.advance(10)
    second = await limiter.acquire("m", limits)
    clock.advance(5)
    third = await limiter.acquire("m", limits)
    assert [d.reservation for d in (first, second, third)] == [None, None, None]
    assert [(d.allowed, d.requests_remaining) for d in (first, second, third)] == [
        (True, 1), (True, 0), (False, 0)]
    assert third.retry_after == approx(45)  # the first request leaves the window at 60 s
    assert third.requests_reset == approx(45)
    clock.advance(45)
    assert (await limiter.acquire("m", limits)).allowed



async def test_memory_is_bounded_by_the_limits(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(clock=clock)
    limits = Limits(requests_per_minute=5, tokens_per_minute=1000)
    for i in range(_SWEEP_EVERY + 10):  # each key asks 20 times a minute
        await limiter.acquire(f"key-{i % 3}", limits, tokens=10)
        clock.advance(1)
    for state in limiter._keys.values():
        assert all(len(log) <= 5 for log in state.requests.values())
        assert all(len(win.entries) <= 5 for win in state.tokens.values())
        assert len(state.entries) <= 5
    clock.advance(120)
    for _ in range(_SWEEP_EVERY):  # long idle keys are dropped by the periodic sweep
        await limiter.acquire("only", limits)
    assert set(limiter._keys) == {"only"}


async def test_a_busy_window_stays_exact_as_it_slides(clock: FakeClock) -> None:
    # 100 requests a second for 5 minutes against 3,000 a minute: the log fills, slides and
    # sheds its expired head many times over. Every decision must be the sliding log's:
    # admitted iff fewer than 3,000 were admitted in the 60 s before it, with its remaining
    # count and reset.
    from collections import deque

    limiter = InMemoryRateLimiter(clock=clock)
    limits = Limits(requests_per_minute=3000)
    admitted: deque[float] = deque()
    longest = 0
    for _ in range(30_000):
        now = clock()
        while admitted and admitted[0] <= now - 60:
            admitted.popleft()
        expect = len(admitted) < 3000
        if expect:
            admitted.append(now)
        d = limiter.decide_now("m", limits)
        assert d is not None and d.allowed == expect
        assert d.requests_remaining == 3000 - len(admitted)
        assert d.requests_reset == approx(admitted[0] + 60 - now)
        if not expect:
            assert d.retry_after == approx(admitted[0] + 60 - now)
        log = limiter._keys["m"].requests[60.0]
        longest = max(longest, len(log))
        clock.advance(0.01)
    assert longest == 3000  # bounded by the limit, not by the traffic
    assert len(log) == len(admitted)


async def test_the_admission_shared_by_unlimited_subjects_cannot_be_changed() -> None:
    """Every request of a subject without limits gets the one ``ADMITTED`` decision; a
    caller that assigned to it would change every other's, so assigning raises."""
    import attrs

    from aiproxy.limits.base import ADMITTED, Decision

    limiter = InMemoryRateLimiter()
    first = await limiter.acquire("free", Limits())
    second = await limiter.acquire("free", Limits())
    assert first is second is ADMITTED
    assert isinstance(ADMITTED, Decision) and ADMITTED.allowed and ADMITTED.reservation is None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ADMITTED.allowed = False  # type: ignore[misc]
    assert (await limiter.acquire("free", Limits())).allowed
