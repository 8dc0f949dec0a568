"""Routing and failover: planning, the circuit breaker, and every upstream fault end to end."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import openai
import pytest

from aiproxy.config import parse_config
from aiproxy.errors import ProxyError
from aiproxy.generation import ProviderPool, Runtime
from aiproxy.http.state import RUNTIME
from aiproxy.limits import InMemoryRateLimiter
from aiproxy.metrics import Metrics
from aiproxy.plugins import ProviderRegistry
from aiproxy.provider import Capability
from aiproxy.record import Record
from aiproxy.routing import BreakerState, CircuitBreaker, RetryPolicy, Router
from tests.conftest import make_settings, openai_model

MSG = [{"role": "user", "content": "hello"}]


def make_runtime() -> Runtime:
    return Runtime(ProviderPool(ProviderRegistry(), InMemoryRateLimiter()), Metrics())


async def make_router(models: list[dict[str, Any]], **extra: Any) -> Router:
    config = parse_config({"models": models, **extra}, {})
    runtime = make_runtime()
    router = runtime.start(config, make_settings()).router
    for session in runtime.pool.sessions.values():
        await session.close()
    return router


def mock(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "provider": "mock", **extra}


class TestPlan:
    async def test_group_orders_by_priority(self):
        router = await make_router([mock("c", priority=3, model_size="BIG"),
                                    mock("a", priority=1, model_size="BIG"),
                                    mock("b", priority=2, model_size="BIG"),
                                    mock("s", priority=0, model_size="SMALL")])
        assert [r.name for r in router.planner.plan("BIG", 10, Capability.CHAT)] == ["a", "b", "c"]

    async def test_ties_go_to_least_recently_used(self):
        router = await make_router([mock("a", model_size="G"), mock("b", model_size="G")])
        router.routes["a"].state.last_used = 10.0
        router.routes["b"].state.last_used = 5.0
        assert [r.name for r in router.planner.plan("G", 10, Capability.CHAT)] == ["b", "a"]
        router.routes["b"].state.last_used = 20.0
        assert [r.name for r in router.planner.plan("G", 10, Capability.CHAT)] == ["a", "b"]

    async def test_length_filter_leaves_out_small_models(self):
        router = await make_router([mock("small", priority=1, model_size="G",
                                         max_request_length=100),
                                    mock("big", priority=2, model_size="G",
                                         max_request_length=10_000),
                                    mock("any", priority=3, model_size="G")])
        assert [r.name for r in router.planner.plan("G", 50, Capability.CHAT)] == [
            "small", "big", "any"]
        assert [r.name for r in router.planner.plan("G", 500, Capability.CHAT)] == ["big", "any"]

    async def test_too_long_for_every_candidate(self):
        router = await make_router([mock("small", max_request_length=100)])
        with pytest.raises(ProxyError) as info:
            router.planner.plan("small", 500, Capability.CHAT)
        assert info.value.status == 400
        assert info.value.code == "context_length_exceeded"

    async def test_groups_aliases_and_fallbacks(self):
        router = await make_router(
            [mock("a", aliases=["fast"], fallbacks=["cheap"]), mock("b", priority=5),
             mock("c", priority=1, aliases=["fast"])],
            groups={"cheap": ["b", "c"]})
        assert [r.name for r in router.planner.plan("fast", 1, Capability.CHAT)] == ["a", "c"]
        # a named model first, then its fallbacks (a group, in priority order)
        assert [r.name for r in router.planner.plan("a", 1, Capability.CHAT)] == ["a", "c", "b"]
        assert list(router.groups) == ["fast", "cheap"]

    async def test_unknown_model_404(self):
        router = await make_router([mock("a")])
        with pytest.raises(ProxyError) as info:
            router.planner.plan("zzz", 1, Capability.CHAT)
        assert (info.value.status, info.value.code) == (404, "model_not_found")

    async def test_capability_filter(self):
        router = await make_router([mock("pics", serves=["images"])])
        with pytest.raises(ProxyError) as info:
            router.planner.plan("pics", 1, Capability.CHAT)
        assert info.value.status == 400
        assert "does not serve chat" in info.value.message


class TestBreaker:
    def test_opens_after_threshold_then_half_open_probe(self):
        now = [0.0]
        breaker = CircuitBreaker(threshold=2, cooldown=10, clock=lambda: now[0])
        breaker.failure()
        assert breaker.state is BreakerState.CLOSED
        breaker.failure()
        assert breaker.state is BreakerState.OPEN
        assert not breaker.allow()
        assert breaker.retry_after() == 10
        now[0] = 10.0
        assert breaker.state is BreakerState.HALF_OPEN
        assert breaker.allow()  # the one probe
        assert not breaker.allow()  # nobody else while it runs
        breaker.success()
        assert breaker.state is BreakerState.CLOSED
        assert breaker.allow()

    def test_failed_probe_reopens_with_longer_cooldown(self):
        now = [0.0]
        breaker = CircuitBreaker(threshold=1, cooldown=10, max_cooldown=15, clock=lambda: now[0])
        breaker.failure()
        now[0] = 10.0
        assert breaker.allow()
        breaker.failure()
        assert breaker.state is BreakerState.OPEN
        assert breaker.retry_after() == 15  # doubled, capped
        now[0] = 24.0
        assert not breaker.allow()
        now[0] = 25.0
        assert breaker.allow()

    def test_success_resets_the_count(self):
        breaker = CircuitBreaker(threshold=2)
        breaker.failure()
        breaker.success()
        breaker.failure()
        assert breaker.state is BreakerState.CLOSED

    def test_zero_threshold_never_opens(self):
        breaker = CircuitBreaker(threshold=0)
        for _ in range(10):
            breaker.failure()
        assert breaker.allow()


class TestRetryPolicy:
    def test_exponential_and_capped(self):
        policy = RetryPolicy(base_delay=1.0, max_delay=5.0, jitter=0.0)
        assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]

    def test_jitter_stays_within_its_fraction(self):
        policy = RetryPolicy(base_delay=1.0, max_delay=30.0, jitter=0.5)
        delays = [policy.delay(3) for _ in range(200)]
        assert all(2.0 <= d <= 4.0 for d in delays)
        assert len(set(delays)) > 1


def model(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return openai_model(name, url, **extra)


async def ask(proxy: Any, name: str, **extra: Any) -> Any:
    return await proxy.client.chat.completions.with_raw_response.create(
        model=name, messages=MSG, **extra)


class TestFaults:
    """Each fault, driven through the openai SDK: what the client got, what the upstream saw."""

    async def test_429_once_with_retry_after_is_waited_out(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.script("m1", "429_once")
        proxy = await start_proxy({"models": [model("m1", url)]})
        raw = await ask(proxy, "m1")
        assert raw.parse().choices[0].message.content.startswith("reply from m1")
        assert raw.headers["x-aiproxy-attempts"] == "2"
        first, second = fake.requests_for("m1")
        assert second.at - first.at >= 1.0  # Retry-After: 1 respected

    async def test_429_always_gives_429_with_retry_after(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "429"
        fake.retry_after = "60"
        proxy = await start_proxy({"models": [model("m1", url)]})
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as info:
            await ask(proxy, "m1")
        assert time.monotonic() - started < 2
        assert int(info.value.response.headers["Retry-After"]) >= 59
        assert len(fake.requests_for("m1")) == 1  # a long Retry-After parks: no hammering
        # While parked, the next request does not reach the upstream at all.
        with pytest.raises(openai.RateLimitError):
            await ask(proxy, "m1")
        assert len(fake.requests_for("m1")) == 1

    async def test_429_parks_and_falls_over_at_once(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "429"
        fake.retry_after = "30"
        proxy = await start_proxy({"models": [model("m1", url, priority=1, model_size="G"),
                                              model("m2", url, priority=2, model_size="G")]})
        started = time.monotonic()
        raw = await ask(proxy, "G")
        assert time.monotonic() - started < 1
        assert raw.parse().model == "m2"
        assert raw.headers["x-aiproxy-model"] == "m2"
        assert raw.headers["x-aiproxy-provider"] == "openai"
        assert raw.headers["x-aiproxy-attempts"] == "2"

    async def test_500_once_is_retried(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.script("m1", "500")
        proxy = await start_proxy({"models": [model("m1", url)]})
        raw = await ask(proxy, "m1")
        assert raw.parse().choices[0].message.content.startswith("reply from m1")
        assert len(fake.requests_for("m1")) == 2

    async def test_503_always_bounded_then_circuit_opens(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "503"
        proxy = await start_proxy({"models": [model("m1", url)]})
        with pytest.raises(openai.APIStatusError) as info:
            await ask(proxy, "m1")
        assert info.value.status_code == 502
        assert "m1" in info.value.message and "127.0.0.1" not in info.value.message
        seen = fake.requests_for("m1")
        # One call and one quick same-model retry; that third failure in a row opened the
        # breaker, so the retry round (whose only candidate is open) is skipped: the client
        # is answered at once rather than after a wait for a round that would try nothing.
        assert len(seen) == 3
        gaps = [b.at - a.at for a, b in itertools.pairwise(seen)]
        assert all(gap >= 0.02 for gap in gaps)  # backoff with jitter, not hammering
        # The breaker is open: the next request is refused without a call.
        with pytest.raises(openai.APIStatusError) as info:
            await ask(proxy, "m1")
        assert info.value.status_code == 503
        assert "Retry-After" in info.value.response.headers
        assert len(fake.requests_for("m1")) == 3

    async def test_400_is_never_retried_or_fallen_over(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "400"
        proxy = await start_proxy({"models": [model("m1", url, model_size="G", priority=1),
                                              model("m2", url, model_size="G", priority=2)]})
        with pytest.raises(openai.BadRequestError) as info:
            await ask(proxy, "G")
        assert "bad parameter" in info.value.message
        assert len(fake.seen) == 1

    async def test_reset_before_headers_falls_over(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "reset"
        proxy = await start_proxy({"models": [model("m1", url, fallbacks=["m2"]),
                                              model("m2", url)]})
        raw = await ask(proxy, "m1")
        assert raw.parse().model == "m2"

    async def test_no_answer_is_abandoned_within_its_bound(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "hang"
        proxy = await start_proxy({"models": [model("m1", url, timeouts={"total": 0.3},
                                                    retry={"max_retries": 1})]})
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            await ask(proxy, "m1")
        assert info.value.status_code == 504
        assert time.monotonic() - started < 3
        # Healthy afterwards: the abandoned calls left no connection checked out.
        fake.defaults["m1"] = "ok"
        await asyncio.sleep(0.05)
        raw = await ask(proxy, "m1")
        assert raw.parse().choices[0].message.content.startswith("reply from m1")
        for session in proxy.app[RUNTIME].pool.sessions.values():
            assert not session.connector._acquired  # type: ignore[union-attr]

    async def test_slow_first_token_falls_over_invisibly(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "slow_first_token"
        proxy = await start_proxy({"models": [
            model("m1", url, priority=1, model_size="G", timeouts={"first_token": 0.3}),
            model("m2", url, priority=2, model_size="G")]})
        started = time.monotonic()
        stream = await proxy.client.chat.completions.create(model="G", messages=MSG,
                                                            stream=True)
        chunks = [c async for c in stream]
        assert time.monotonic() - started < 3
        assert {c.model for c in chunks} == {"m2"}
        assert "".join(c.choices[0].delta.content or "" for c in chunks
                       if c.choices).startswith("reply from m2")

    async def test_stream_stall_ends_with_an_error_event(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "stall"
        proxy = await start_proxy({"models": [model("m1", url, timeouts={"idle": 0.3})]})
        started = time.monotonic()
        stream = await proxy.client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "a b c d e f g h"}], stream=True)
        with pytest.raises(openai.APIError, match="stalled"):
            async for _ in stream:
                pass
        assert time.monotonic() - started < 3

    async def test_context_length_moves_to_a_larger_model(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["small"] = "context_length"
        proxy = await start_proxy({"models": [
            model("small", url, priority=1, model_size="G", max_request_length=10_000),
            model("same", url, priority=2, model_size="G", max_request_length=10_000),
            model("large", url, priority=3, model_size="G", max_request_length=100_000)]})
        raw = await ask(proxy, "G")
        assert raw.parse().model == "large"
        assert raw.headers["x-aiproxy-attempts"] == "2"  # the refused attempt counts too
        assert len(fake.requests_for("small")) == 1
        assert fake.requests_for("same") == []  # no larger than the one that refused

    async def test_context_length_without_larger_candidate(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "context_length"
        proxy = await start_proxy({"models": [model("m1", url)]})
        with pytest.raises(openai.BadRequestError) as info:
            await ask(proxy, "m1")
        assert info.value.code == "context_length_exceeded"
        assert len(fake.seen) == 1

    async def test_content_filter_is_returned_as_is(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "content_filter"
        proxy = await start_proxy({"models": [model("m1", url, fallbacks=["m2"]),
                                              model("m2", url)]})
        with pytest.raises(openai.BadRequestError) as info:
            await ask(proxy, "m1")
        assert info.value.code == "content_filter"
        assert "content management policy" in info.value.message
        assert len(fake.seen) == 1

    async def test_primary_down_then_back(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["primary"] = "503"
        breaker = {"failures": 2, "cooldown": 0.5}
        proxy = await start_proxy({"models": [
            model("primary", url, priority=1, model_size="G", circuit_breaker=breaker),
            model("backup", url, priority=2, model_size="G")]})
        for _ in range(2):
            assert (await ask(proxy, "G")).parse().model == "backup"
        assert len(fake.requests_for("primary")) == 2
        # Open: traffic stops paying for the dead primary.
        for _ in range(3):
            assert (await ask(proxy, "G")).parse().model == "backup"
        assert len(fake.requests_for("primary")) == 2
        # The primary recovers; after the cool-down one probe brings traffic back to it.
        fake.defaults["primary"] = "ok"
        await asyncio.sleep(0.6)
        assert (await ask(proxy, "G")).parse().model == "primary"
        assert (await ask(proxy, "G")).parse().model == "primary"
        assert len(fake.requests_for("primary")) == 4

    async def test_usage_is_the_answering_models(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "500"
        proxy = await start_proxy({"models": [model("m1", url, fallbacks=["m2"]),
                                              model("m2", url)]})
        answer = (await ask(proxy, "m1")).parse()
        assert answer.model == "m2"
        assert answer.usage.total_tokens == 12  # not doubled by the failed attempt

    async def test_all_failed_names_what_was_tried(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.defaults["m1"] = "500"
        fake.defaults["m2"] = "reset"
        proxy = await start_proxy({"models": [model("m1", url, fallbacks=["m2"]),
                                              model("m2", url)]},
                                  settings=make_settings(retry_max_retries=0))
        with pytest.raises(openai.APIStatusError) as info:
            await ask(proxy, "m1")
        assert info.value.status_code == 502
        assert "m1, m2" in info.value.message
        assert "upstream-secret" not in info.value.message


class TestRouterLifecycle:
    async def test_cancelled_acquire_frees_the_half_open_probe(self):
        from aiproxy.limits.base import Decision, Limits, RateLimiter, Reservation

        class Hanging(RateLimiter):
            async def acquire(self, key: str, limits: Limits, tokens: int = 0) -> Decision:
                await asyncio.sleep(3600)
                raise AssertionError("unreachable")

            async def reconcile(self, reservation: Reservation, limits: Limits,
                                actual_tokens: int) -> None:
                return None

            async def park(self, key: str, seconds: float) -> None:
                return None

        router = await make_router([mock("m", circuit_breaker={"failures": 1,
                                                                "cooldown": 0.01})])
        router.limiter = Hanging()
        breaker = router.routes["m"].breaker
        breaker.failure()
        await asyncio.sleep(0.02)
        assert breaker.state is BreakerState.HALF_OPEN
        from aiproxy.provider import ChatRequest

        request = ChatRequest(body={"model": "m", "messages": MSG}, raw=b"{}")
        task = asyncio.create_task(router.chat(Record(), None, request))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert breaker.allow()  # the probe the cancelled request took is free again

    async def test_a_retired_generation_closes_only_when_idle_and_only_what_is_not_kept(self):
        closed: list[str] = []
        runtime = make_runtime()
        first = runtime.start(parse_config({"models": [mock("kept"), mock("dropped")]}, {}),
                              make_settings())
        for route in first.router.routes.values():
            async def close(name: str = route.name) -> None:
                closed.append(name)
            route.provider.close = close  # type: ignore[method-assign]
        assert runtime.enter() is first  # a request starts on the first generation
        second, fresh = runtime.build(parse_config({"models": [mock("kept")]}, {}),
                                      make_settings())
        assert fresh == []  # "kept" is unchanged: its provider is reused, nothing is built
        assert second.router.routes["kept"].provider is first.router.routes["kept"].provider
        runtime._swap(second)
        await asyncio.sleep(0.01)
        assert closed == []  # a request is still running on the first generation
        runtime.leave(first)
        await asyncio.sleep(0.01)
        assert closed == ["dropped"]
        await runtime.close()
