"""The Redis backend against a real redis-server: the shared behaviours, then what only a
shared backend must do (exact across processes, survive restarts, fail open or closed)."""

# Fixtures imported by name look "redefined" where a test takes them as a parameter.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio

import aiproxy.limits.redis as redis_backend
from aiproxy.limits import (
    Decision,
    InMemoryRateLimiter,
    LimiterUnavailable,
    Limits,
    RateLimiter,
    RedisRateLimiter,
    Reservation,
    make_limiter,
)
from tests.redis_fixture import RedisServer
from tests.test_limits_memory import (  # noqa: F401 - run again here, on this module's limiter
    FakeClock,
    clock,
    test_all_or_nothing_across_windows,
    test_decision_header_fields,
    test_estimate_over_the_limit_needs_an_empty_window,
    test_exact_under_concurrency,
    test_hour_and_day_windows,
    test_many_small_entries,
    test_park,
    test_reconcile_is_a_no_op_without_token_windows,
    test_retry_after_is_the_latest_violated_window,
    test_slides_instead_of_resetting,
    test_spent_token_window_refuses_requests_without_estimate,
    test_token_retry_after_waits_for_enough_tokens,
    test_tokens_reserve_and_reconcile,
)


@pytest.fixture(autouse=True, params=["own connection", "redis-py connection"])
def connection(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both of the limiter's connections: its own (``resp.Pipe``, for the
    URLs it can speak to) and redis-py's (TLS and other URLs, or a given client)."""
    if request.param == "redis-py connection":
        monkeypatch.setattr(redis_backend.resp, "pipe_target", lambda url: None)
    return str(request.param)


def test_the_connection_under_test(redis_server: RedisServer, connection: str) -> None:
    lim = RedisRateLimiter(redis_server.url)
    assert (lim._target is not None) == (connection == "own connection")


@pytest.fixture
async def limiter(redis_server: RedisServer, clock: FakeClock) -> AsyncIterator[RateLimiter]:
    # A generous timeout: these tests are about exactness, and a loaded CI box must not turn
    # slow answers into degraded ones. The fail-mode tests below use the short default.
    lim = RedisRateLimiter(redis_server.url, prefix="test:", clock=clock, timeout=5)
    yield lim
    await lim.close()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    yield c
    await c.aclose()


class Recorder:
    """Stands in for the module's structlog logger (which the app may have cached)."""

    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []
        self.infos: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.warnings.append((event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.infos.append((event, kw))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(redis_backend, "log", rec)
    return rec


_WORKER = """
import asyncio, sys, time
from aiproxy.limits import Limits, RedisRateLimiter

async def main(url, prefix, start, n):
    lim = RedisRateLimiter(url, prefix=prefix, timeout=5)  # a loaded box: slow, not down
    requests, tokens = Limits(requests_per_minute=300), Limits(tokens_per_minute=2500)
    await asyncio.sleep(max(0.0, start - time.time()))  # all processes fire together
    decisions = await asyncio.gather(*(lim.acquire("r", requests) for _ in range(n)),
                                     *(lim.acquire("t", tokens, tokens=10) for _ in range(n)))
    print(sum(d.allowed for d in decisions[:n]), sum(d.allowed for d in decisions[n:]),
          sum(d.degraded for d in decisions))
    await lim.close()

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
"""


def test_exact_across_processes(redis_server: RedisServer) -> None:
    start = time.time() + 3.0
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, redis_server.url, "x:",
                                 str(start), "250"], stdout=subprocess.PIPE, text=True)
               for _ in range(4)]
    # The last line is the tally (a warning could precede it if Redis were slow).
    outputs = [w.communicate(timeout=60)[0].splitlines()[-1].split() for w in workers]
    assert all(w.returncode == 0 for w in workers)
    requests, tokens, degraded = (sum(int(out[i]) for out in outputs) for i in range(3))
    assert degraded == 0
    assert requests == 300  # of 1000 asked, across 4 processes
    assert tokens == 250  # 2500 tokens a minute, 10 each


async def test_state_survives_a_new_limiter(redis_server: RedisServer,
                                            clock: FakeClock) -> None:
    limits = Limits(requests_per_minute=3)
    first = RedisRateLimiter(redis_server.url, clock=clock, timeout=5)
    assert all([(await first.acquire("m", limits)).allowed for _ in range(3)])
    await first.close()
    second = RedisRateLimiter(redis_server.url, clock=clock, timeout=5)
    refused = await second.acquire("m", limits)
    assert (refused.allowed, refused.retry_after) == (False, 60.0)
    await second.close()


async def test_park_is_shared(redis_server: RedisServer) -> None:
    one, two = (RedisRateLimiter(redis_server.url, timeout=5) for _ in range(2))
    await one.park("m", 30)
    refused = await two.acquire("m", Limits())
    assert not refused.allowed and 29 < refused.retry_after <= 30
    await one.close()
    await two.close()


async def test_keys_carry_the_prefix_and_expire(redis_server: RedisServer,
                                                client: redis.asyncio.Redis) -> None:
    lim = RedisRateLimiter(redis_server.url, prefix="pfx:", timeout=5)
    limits = Limits(requests_per_minute=5, requests_per_hour=50, tokens_per_minute=1000,
                    tokens_per_day=10_000)
    decision = await lim.acquire("gpt-4o", limits, tokens=100)
    assert decision.reservation is not None
    await lim.reconcile(decision.reservation, limits, 120)
    await lim.park("gpt-4o", 20)
    keys = sorted(await client.keys("*"))
    assert keys == sorted(f"pfx:limit:{{gpt-4o}}:{k}" for k in (
        "req", "park", "tok:60", "tok:60:amt", "tok:86400", "tok:86400:amt"))
    # Each key lives as long as its longest window (plus a second), not forever.
    assert 3_600_000 < await client.pttl("pfx:limit:{gpt-4o}:req") <= 3_601_000
    assert 60_000 < await client.pttl("pfx:limit:{gpt-4o}:tok:60:amt") <= 61_000
    assert 86_400_000 < await client.pttl("pfx:limit:{gpt-4o}:tok:86400") <= 86_401_000
    assert 20_000 < await client.pttl("pfx:limit:{gpt-4o}:park") <= 21_000
    assert all([await client.pttl(k) > 0 for k in keys])
    assert await client.hget("pfx:limit:{gpt-4o}:tok:60:amt", "total") == "120"
    await lim.close()


async def test_fail_open_admits_degraded_and_recovers(
        redis_server: RedisServer, recorder: Recorder) -> None:
    # Open is the default. A refused connection fails at once whatever the timeout; 2 s only
    # keeps a loaded CI box from degrading the decisions after the restart.
    lim = RedisRateLimiter(redis_server.url, timeout=2)
    # A token window: a degraded decision still hands out a reservation to reconcile.
    limits = Limits(requests_per_minute=5, tokens_per_minute=1000)
    assert (await lim.acquire("m", limits)).allowed
    redis_server.stop()  # killed mid-run
    began = time.monotonic()
    decisions = [await lim.acquire("m", limits, tokens=5) for _ in range(10)]
    assert time.monotonic() - began < 5  # a dead Redis answers at once, it does not stall
    assert all(d.allowed and d.degraded and d.reservation for d in decisions)
    assert lim.degraded_decisions == 10
    assert len(recorder.warnings) == 1  # one warning per burst, not one per request
    assert decisions[0].reservation is not None
    await lim.reconcile(decisions[0].reservation, limits, 10)  # lost, but never raises
    await lim.park("m", 5)
    assert not await lim.ping()

    redis_server.start()  # same port, empty (no persistence): exact again, same limiter
    assert await lim.ping()
    after = [await lim.acquire("m", limits) for _ in range(7)]
    assert [d.allowed for d in after] == [True] * 5 + [False] * 2
    assert not any(d.degraded for d in after)
    assert lim.degraded_decisions == 10
    assert [event for event, _ in recorder.infos] == ["rate limiter backend reachable again"]
    await lim.close()


async def test_fail_closed_raises_and_recovers(redis_server: RedisServer) -> None:
    lim = RedisRateLimiter(redis_server.url, fail_mode="closed", timeout=2)
    limits = Limits(requests_per_minute=2)
    assert (await lim.acquire("m", limits)).allowed
    redis_server.stop()
    with pytest.raises(LimiterUnavailable, match="unreachable") as raised:
        await lim.acquire("m", limits)
    assert str(redis_server.port) not in raised.value.message  # it may reach clients
    lost = Reservation(key="m", id="lost", tokens=1, at=0.0)
    await lim.reconcile(lost, Limits(tokens_per_minute=10), 5)  # never raises
    redis_server.start()
    after = [await lim.acquire("m", limits) for _ in range(3)]
    assert [d.allowed for d in after] == [True, True, False]
    assert lim.degraded_decisions == 0
    await lim.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung Redis."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


async def test_hung_redis_does_not_stall(silent_port: int, recorder: Recorder) -> None:
    lim = RedisRateLimiter(f"redis://127.0.0.1:{silent_port}/0", timeout=0.3)
    began = time.monotonic()
    decision = await lim.acquire("m", Limits(requests_per_minute=1))
    assert time.monotonic() - began < 3  # read timeout 0.3 s, hard ceiling 1.1 s
    assert decision.allowed and decision.degraded
    assert len(recorder.warnings) == 1
    await lim.close()


async def test_scripts_reload_after_a_flush(limiter: RateLimiter,
                                            client: redis.asyncio.Redis) -> None:
    assert (await limiter.acquire("m", Limits(requests_per_minute=2))).allowed
    await client.script_flush()  # as after a failover to a fresh server: EVALSHA -> NOSCRIPT
    d = await limiter.acquire("m", Limits(requests_per_minute=2))
    assert (d.allowed, d.degraded, d.requests_remaining) == (True, False, 0)


async def test_a_given_client_is_used_and_left_open(client: redis.asyncio.Redis) -> None:
    lim = RedisRateLimiter(client, prefix="own:")
    assert (await lim.acquire("m", Limits(requests_per_minute=1))).allowed
    await lim.close()
    assert await client.exists("own:limit:{m}:req") == 1


def test_make_limiter(redis_server: RedisServer) -> None:
    assert isinstance(make_limiter(None, prefix="p:", fail_mode="open"), InMemoryRateLimiter)
    made = make_limiter(redis_server.url, prefix="p:", fail_mode="closed")
    assert isinstance(made, RedisRateLimiter)
    assert (made.prefix, made.fail_mode) == ("p:", "closed")
    with pytest.raises(ValueError, match="fail_mode"):
        RedisRateLimiter(redis_server.url, fail_mode="maybe")


async def test_concurrent_decisions_share_one_connection_pool(
        redis_server: RedisServer) -> None:
    # 1000 at once on a 64-connection pool: they queue for a connection, none degrades.
    lim = RedisRateLimiter(redis_server.url, timeout=5)
    decisions = await asyncio.gather(*(lim.acquire("m", Limits(requests_per_minute=700))
                                       for _ in range(1000)))
    assert sum(d.allowed for d in decisions) == 700
    assert lim.degraded_decisions == 0
    await lim.close()


# --- batching: the decisions of one loop iteration share one round trip ---------------------


async def evalsha_calls(client: redis.asyncio.Redis) -> int:
    """EVALSHA commands Redis has executed (``INFO commandstats``), whoever sent them."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def fields(decision: Decision) -> tuple[object, ...]:
    """Everything a caller reads from a decision, but the reservation's (random) id."""
    res = decision.reservation
    return (decision.allowed, decision.retry_after, decision.requests_limit,
            decision.requests_remaining, decision.requests_reset, decision.tokens_limit,
            decision.tokens_remaining, decision.tokens_reset, decision.degraded,
            None if res is None else (res.key, res.tokens, res.at))


class TestBatching:
    async def test_concurrent_acquires_are_one_script_call(
            self, limiter: RedisRateLimiter, client: redis.asyncio.Redis) -> None:
        limits = Limits(requests_per_minute=100)
        await limiter.acquire("m", limits)  # loads the script: NOSCRIPT is not our concern
        before, trips = await evalsha_calls(client), limiter.round_trips
        decisions = await asyncio.gather(*(limiter.acquire("m", limits) for _ in range(20)))
        assert await evalsha_calls(client) - before == 1  # counted by Redis itself
        assert limiter.round_trips - trips == 1
        assert [d.requests_remaining for d in decisions] == list(range(98, 78, -1))
        assert await client.zcard("test:limit:{m}:req") == 21

    async def test_subjects_run_apart_in_one_round_trip(
            self, limiter: RedisRateLimiter, client: redis.asyncio.Redis) -> None:
        limits = Limits(requests_per_minute=3)
        await limiter.acquire("warm", limits)
        before, trips = await evalsha_calls(client), limiter.round_trips
        decisions = await asyncio.gather(*(limiter.acquire(key, limits)
                                           for key in ["a", "b", "a", "b", "a", "b", "a"]))
        # One script run per subject (all keys of a run share a Cluster slot), one trip.
        assert await evalsha_calls(client) - before == 2
        assert limiter.round_trips - trips == 1
        assert [d.allowed for d in decisions] == [True] * 6 + [False]

    async def test_a_burst_is_split_into_bounded_runs(
            self, limiter: RedisRateLimiter, client: redis.asyncio.Redis) -> None:
        limits = Limits(requests_per_minute=450)
        await limiter.acquire("m", limits)
        before, trips = await evalsha_calls(client), limiter.round_trips
        decisions = await asyncio.gather(*(limiter.acquire("m", limits) for _ in range(500)))
        assert await evalsha_calls(client) - before == 3  # 200 + 200 + 100 calls
        assert limiter.round_trips - trips == 1
        assert sum(d.allowed for d in decisions) == 449  # in order: the first 449 of 500
        assert all(d.allowed for d in decisions[:449])

    async def test_each_caller_gets_the_decision_it_would_get_alone(
            self, limiter: RedisRateLimiter, clock: FakeClock) -> None:
        # Requests and tokens at their boundaries, mixed in one batch, against the same
        # sequence taken one at a time by the in-memory limiter (the reference semantics).
        limits = Limits(requests_per_minute=4, requests_per_hour=50, tokens_per_minute=100)
        asks = [30, 50, 40, 10, 0, 20, 5, 0, 15]
        reference = InMemoryRateLimiter(clock=clock)
        warm = [await lim.acquire("m", limits, tokens=10) for lim in (limiter, reference)]
        assert fields(warm[0]) == fields(warm[1])
        clock.advance(7)
        alone = [fields(await reference.acquire("m", limits, tokens=t)) for t in asks]
        together = await asyncio.gather(*(limiter.acquire("m", limits, tokens=t)
                                          for t in asks))
        assert [fields(d) for d in together] == alone
        assert [d.allowed for d in together] == [True, True, False, True] + [False] * 5
        # The request window frees at 53 s; a token ask waits until enough tokens expire.
        assert [d.retry_after for d in together if not d.allowed] == [60, 53, 60, 53, 53, 60]

    async def test_the_test_clock_of_each_caller_is_kept(
            self, redis_server: RedisServer) -> None:
        times = iter([1000.0, 1061.0])  # the second caller asks a minute after the first
        lim = RedisRateLimiter(redis_server.url, clock=lambda: next(times), timeout=5)
        limits = Limits(requests_per_minute=1, tokens_per_minute=1000)  # reserves: .at
        decisions = await asyncio.gather(*(lim.acquire("m", limits) for _ in range(2)))
        assert lim.round_trips == 1  # one batch, two moments
        assert [d.allowed for d in decisions] == [True, True]
        assert [d.reservation.at for d in decisions if d.reservation] == [1000.0, 1061.0]
        await lim.close()

    async def test_reconciles_coalesce_too(self, limiter: RedisRateLimiter,
                                           client: redis.asyncio.Redis) -> None:
        limits = Limits(tokens_per_minute=1000)
        reservations = [d.reservation for d in await asyncio.gather(
            *(limiter.acquire("m", limits, tokens=50) for _ in range(5)))]
        assert reservations[0] is not None
        await limiter.reconcile(reservations.pop(0), limits, 10)  # loads the script
        before = await evalsha_calls(client)
        await asyncio.gather(*(limiter.reconcile(r, limits, 10) for r in reservations if r))
        assert await evalsha_calls(client) - before == 1
        assert await client.hget("test:limit:{m}:tok:60:amt", "total") == "50"

    async def test_a_failing_batch_degrades_every_member(
            self, redis_server: RedisServer, recorder: Recorder) -> None:
        lim = RedisRateLimiter(redis_server.url, timeout=2)
        limits = Limits(requests_per_minute=5)
        await lim.acquire("m", limits)
        redis_server.stop()
        began = time.monotonic()
        decisions = await asyncio.gather(*(lim.acquire("m", limits, tokens=3)
                                           for _ in range(10)))
        assert time.monotonic() - began < 5
        assert all(d.allowed and d.degraded for d in decisions)
        # No token window: nothing to reconcile, so nothing reserved, degraded or not.
        assert all(d.reservation is None for d in decisions)
        assert lim.degraded_decisions == 10
        assert len(recorder.warnings) == 1
        await lim.close()

    async def test_a_failing_batch_fails_every_member_closed(
            self, redis_server: RedisServer) -> None:
        lim = RedisRateLimiter(redis_server.url, fail_mode="closed", timeout=2)
        limits = Limits(requests_per_minute=5)
        await lim.acquire("m", limits)
        redis_server.stop()
        outcomes = await asyncio.gather(*(lim.acquire("m", limits) for _ in range(10)),
                                        return_exceptions=True)
        assert all(isinstance(o, LimiterUnavailable) for o in outcomes)
        assert len({id(o) for o in outcomes}) == 10  # each caller raises its own
        assert lim.degraded_decisions == 0
        await lim.close()

    async def test_a_failing_subject_does_not_fail_the_others(
            self, limiter: RedisRateLimiter, client: redis.asyncio.Redis,
            recorder: Recorder) -> None:
        limits = Limits(requests_per_minute=5)
        await client.set("test:limit:{broken}:req", "not a sorted set")  # WRONGTYPE in Lua
        decisions = await asyncio.gather(*(limiter.acquire(key, limits)
                                           for key in ["ok", "broken", "ok", "broken"]))
        assert [(d.allowed, d.degraded) for d in decisions] == [
            (True, False), (True, True), (True, False), (True, True)]
        assert [d.requests_remaining for d in decisions[::2]] == [4, 3]
        assert limiter.degraded_decisions == 2
        assert [event for event, _ in recorder.warnings] == ["rate limiter backend unreachable"]

    async def test_cancelled_before_the_flush_takes_nothing(
            self, limiter: RedisRateLimiter, client: redis.asyncio.Redis) -> None:
        limits = Limits(requests_per_minute=5)
        tasks = [asyncio.ensure_future(limiter.acquire("m", limits)) for _ in range(4)]
        await asyncio.sleep(0)  # every task has submitted its call; none is sent yet
        tasks[1].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[1], asyncio.CancelledError)
        assert [d.requests_remaining for d in results if isinstance(d, Decision)] == [4, 3, 2]
        assert await client.zcard("test:limit:{m}:req") == 3

    async def test_cancelled_in_flight_gives_its_tokens_back(
            self, limiter: RedisRateLimiter, client: redis.asyncio.Redis) -> None:
        limits = Limits(requests_per_minute=5, tokens_per_minute=1000)
        await limiter.acquire("m", limits, tokens=1)
        await client.execute_command("CLIENT", "PAUSE", "300", "WRITE")  # holds EVALSHA back
        tasks = [asyncio.ensure_future(limiter.acquire("m", limits, tokens=100))
                 for _ in range(3)]
        await asyncio.sleep(0.1)  # sent, and waiting for Redis
        tasks[0].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert [(d.allowed, d.tokens_remaining) for d in results[1:]
                if isinstance(d, Decision)] == [(True, 799), (True, 699)]
        await limiter.close()  # waits for the orphan's reconcile
        # Its request slot stays taken (it was admitted); its 100 tokens are given back.
        assert await client.zcard("test:limit:{m}:req") == 4
        assert await client.hget("test:limit:{m}:tok:60:amt", "total") == "201"

    async def test_a_cancelled_reconcile_is_still_recorded(
            self, limiter: RedisRateLimiter, client: redis.asyncio.Redis) -> None:
        limits = Limits(tokens_per_minute=1000)
        decision = await limiter.acquire("m", limits, tokens=100)
        assert decision.reservation is not None
        task = asyncio.ensure_future(limiter.reconcile(decision.reservation, limits, 7))
        await asyncio.sleep(0)
        task.cancel()
        await limiter.close()
        assert await client.hget("test:limit:{m}:tok:60:amt", "total") == "7"

    async def test_a_slow_answer_times_out_and_is_never_read_by_the_next(
            self, redis_server: RedisServer, client: redis.asyncio.Redis,
            recorder: Recorder) -> None:
        lim = RedisRateLimiter(redis_server.url, prefix="test:", timeout=0.2)
        limits = Limits(requests_per_minute=10)
        assert (await lim.acquire("m", limits)).requests_remaining == 9
        await client.execute_command("CLIENT", "PAUSE", "1000", "WRITE")
        began = time.monotonic()
        late = await lim.acquire("m", limits)  # sent, answered only after the pause
        assert time.monotonic() - began < 0.9  # one bound of `timeout` once connected
        assert late.degraded
        await asyncio.sleep(1.0)  # the pause ends; the late run's socket is closed by now
        # Whether Redis still ran the late script or dropped it with its closed client, the
        # next caller reads its own answer, never the late one.
        after = await lim.acquire("m", limits)
        assert not after.degraded
        assert after.requests_remaining == 10 - await client.zcard("test:limit:{m}:req")
        assert after.requests_remaining in (7, 8)
        await lim.close()

    async def test_calls_made_during_a_flight_leave_together_when_it_lands(
            self, limiter: RedisRateLimiter, client: redis.asyncio.Redis) -> None:
        limits = Limits(requests_per_minute=100)
        await limiter.acquire("m", limits)
        before, trips = await evalsha_calls(client), limiter.round_trips
        await client.execute_command("CLIENT", "PAUSE", "200", "WRITE")
        first = asyncio.ensure_future(limiter.acquire("m", limits))
        await asyncio.sleep(0.05)  # its batch is out, waiting for Redis
        later = []
        for _ in range(3):  # over several loop iterations
            later += [asyncio.ensure_future(limiter.acquire("m", limits)) for _ in range(3)]
            await asyncio.sleep(0.01)
        decisions = await asyncio.gather(first, *later)
        assert limiter.round_trips - trips == 2
        assert await evalsha_calls(client) - before == 2
        assert [d.requests_remaining for d in decisions] == list(range(98, 88, -1))

    async def test_waiting_behind_a_hung_flight_keeps_the_ceiling(
            self, silent_port: int, recorder: Recorder) -> None:
        lim = RedisRateLimiter(f"redis://127.0.0.1:{silent_port}/0", timeout=0.3)
        limits = Limits(requests_per_minute=1)
        first = asyncio.ensure_future(lim.acquire("m", limits))
        await asyncio.sleep(0.1)
        asked = time.monotonic()
        second = await lim.acquire("m", limits)  # queued behind the hung one
        # Waiting for the hung flight counts against its own bound: it answers within the
        # one ceiling (2 * 0.3 + 0.5 s) of its asking, not after the first's bound plus it.
        assert time.monotonic() - asked < 1.1 + 0.5
        assert second.degraded and (await first).degraded
        assert lim.round_trips == 2
        await lim.close()
