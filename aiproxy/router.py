"""Routing: plan the candidates for a requested model or group, then try them in order under
the rate limiter, the retry policy, timeouts and per-model circuit breakers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, Generic, TypeVar

import attrs
import orjson

from aiproxy.config import Config, ModelConfig
from aiproxy.errors import ProxyError, from_upstream
from aiproxy.limits.base import Decision, LimiterUnavailable, Limits, RateLimiter
from aiproxy.metrics import Metrics
from aiproxy.observability import get_logger
from aiproxy.provider import (
    Capability,
    ChatRequest,
    ChatResponse,
    ErrorKind,
    Provider,
    RateLimitHint,
    UpstreamError,
)
from aiproxy.retry import BreakerState, CircuitBreaker, RetryPolicy

__all__ = ["Route", "Router", "Served", "Timeouts", "estimate_tokens"]

T = TypeVar("T")
log = get_logger("aiproxy.router")

DEFAULT_FIRST_TOKEN = 60.0
DEFAULT_IDLE = 60.0
DEFAULT_TOTAL = 600.0


@attrs.frozen
class Timeouts:
    """Resolved bounds for one model: first token (stream) / idle between chunks / total."""

    first_token: float
    idle: float
    total: float | None  # non-stream calls always have one; streams only when configured
    stream_total: float | None

    @classmethod
    def of(cls, model: ModelConfig) -> Timeouts:
        t = model.timeouts
        legacy = model.http_client_config.timeout_seconds or None
        return cls(first_token=t.first_token or DEFAULT_FIRST_TOKEN, idle=t.idle or DEFAULT_IDLE,
                   total=t.total or legacy or DEFAULT_TOTAL, stream_total=t.total)


@attrs.define(eq=False)
class Route:
    """A configured model with its provider and its run-time state in this process."""

    model: ModelConfig
    provider: Provider
    retry: RetryPolicy
    breaker: CircuitBreaker
    limits: Limits = attrs.field(init=False)
    timeouts: Timeouts = attrs.field(init=False)
    last_used: float = 0.0

    def __attrs_post_init__(self) -> None:
        self.limits = Limits.of(self.model)
        self.timeouts = Timeouts.of(self.model)

    @property
    def name(self) -> str:
        return self.model.name

    def serves(self, capability: Capability) -> bool:
        if capability not in self.provider.capabilities:
            return False
        return not self.model.serves or capability.value in self.model.serves


@attrs.define
class Served(Generic[T]):
    """What answered: the route, the result, the attempts it took and the limiter's decision."""

    route: Route
    result: T
    attempts: int
    decision: Decision


@attrs.define
class _Tally:
    """What happened to the candidates of one request, for the final error."""

    attempts: int = 0
    tried: list[str] = attrs.field(factory=list)
    last_error: UpstreamError | None = None
    limited_until: float | None = None  # earliest moment a refused candidate frees up
    unavailable_until: float | None = None  # earliest breaker re-probe
    attempted_any: bool = False
    only_rate_limited: bool = True

    def limited(self, seconds: float) -> None:
        self.limited_until = seconds if self.limited_until is None else min(self.limited_until,
                                                                            seconds)


def estimate_tokens(request_length: int, body: Mapping[str, Any]) -> int:
    """A cheap upper-ish estimate for token limits: ~4 bytes a token plus the output bound."""
    out = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return request_length // 4 + (out if isinstance(out, int) and out > 0 else 0)


class Router:
    """Owns the routes of one loaded config. Requests never reach back up into HTTP."""

    def __init__(self, config: Config, routes: Mapping[str, Route], limiter: RateLimiter,
                 clock: Callable[[], float] = time.monotonic,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.routes = dict(routes)
        self.limiter = limiter
        self.metrics = metrics or Metrics()
        self._clock = clock
        self.groups = self._build_groups(config)
        self._background: set[asyncio.Task[None]] = set()
        for route in self.routes.values():
            route.provider.rate_limit_listener = self._listener(route)
        self._users = 0  # requests in flight on this router
        self._kept: frozenset[str] | None = None  # set once retired: routes its successor keeps
        self._closed = False

    def enter(self) -> None:
        """A request starts on this router (it finishes on it, even across a reload)."""
        self._users += 1

    def leave(self) -> None:
        self._users -= 1
        if self._kept is not None and self._users == 0:
            self._spawn(self.close())

    def retire(self, kept: set[str]) -> None:
        """A reload replaced this router: close what its successor does not keep, once idle."""
        self._kept = frozenset(kept)
        for name in kept:  # the successor's listener now parks these routes
            self.routes[name].provider.rate_limit_listener = None
        if self._users == 0:
            self._spawn(self.close())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _listener(self, route: Route) -> Callable[[RateLimitHint], None]:
        def on_hint(hint: RateLimitHint) -> None:
            if hint.reset_after:
                self._spawn(self._park(route, hint.reset_after))

        return on_hint

    @staticmethod
    def _build_groups(config: Config) -> dict[str, tuple[str, ...]]:
        groups: dict[str, list[str]] = {}
        for model in config.models:
            if model.model_size:
                groups.setdefault(model.model_size, []).append(model.name)
            for alias in model.aliases:
                groups.setdefault(alias, []).append(model.name)
        for name, members in config.groups.items():
            groups.setdefault(name, []).extend(members)
        return {name: tuple(dict.fromkeys(members)) for name, members in groups.items()}

    def _expand(self, name: str, seen: set[str]) -> list[Route]:
        """Routes a name stands for: a model (itself), or a group ordered by priority, then LRU."""
        if name in seen:
            return []
        seen.add(name)
        route = self.routes.get(name)
        if route is not None:
            return [route]
        members: list[Route] = []
        for member in self.groups.get(name, ()):
            members += self._expand(member, seen)
        return sorted(members, key=lambda r: (r.model.priority, r.last_used))

    def expand(self, name: str) -> list[Route]:
        """The models a model or group name stands for (fallbacks not included)."""
        return self._expand(name, set())

    def plan(self, name: str, length: int, capability: Capability,
             allowed: Callable[[Route], bool] | None = None) -> list[Route]:
        """The ordered candidates for a request; :class:`ProxyError` when there are none.

        ``allowed`` filters the candidates (a client key's permissions).
        """
        route = self.routes.get(name)
        if route is not None and not route.model.fallbacks:
            plan = [route]  # the common case, without building sets and sorting
        elif route is None and name not in self.groups:
            raise ProxyError(404, f"The model {name!r} does not exist", code="model_not_found",
                             param="model")
        else:
            ordered = self._expand(name, set())
            if route is not None:
                seen = {name}
                for fallback in route.model.fallbacks:
                    ordered += self._expand(fallback, seen)
            plan = list(dict.fromkeys(ordered))
        if allowed is not None:
            plan = [r for r in plan if allowed(r)]
        serving = [r for r in plan if r.serves(capability)]
        if not serving:
            raise ProxyError(400, f"model {name!r} does not serve {capability.value}",
                             code="unsupported_capability", param="model")
        fitting = [r for r in serving if not r.model.max_request_length
                   or length <= r.model.max_request_length]
        if not fitting:
            biggest = max(r.model.max_request_length for r in serving)
            raise ProxyError(400, f"request of {length} bytes exceeds the max_request_length of "
                             f"every candidate for {name!r} (largest {biggest})",
                             code="context_length_exceeded", param="messages")
        return fitting

    def plan_any(self, capability: Capability,
                 allowed: Callable[[Route], bool] | None = None) -> list[Route]:
        """Every model meant for ``capability`` (the old ``/image`` with model ``all``): those
        that list it in ``serves:``, or, as the old proxy marked image models, serve nothing
        explicitly and have ``max_request_length: 0``. Priority order, then LRU."""
        chosen = [r for r in self.routes.values() if r.serves(capability) and (
            capability.value in r.model.serves
            or (not r.model.serves and not r.model.max_request_length))
            and (allowed is None or allowed(r))]
        if not chosen:
            raise ProxyError(404, f"no model is configured for {capability.value}",
                             code="model_not_found", param="model")
        return sorted(chosen, key=lambda r: (r.model.priority, r.last_used))

    async def chat(self, request: ChatRequest, name: str, length: int,
                   allowed: Callable[[Route], bool] | None = None) -> Served[ChatResponse]:
        async def call(route: Route) -> ChatResponse:
            async with asyncio.timeout(route.timeouts.total):
                return await route.provider.chat(request)

        return await self._run(self.plan(name, length, Capability.CHAT, allowed), call,
                               estimate_tokens(length, request.body))

    async def open_stream(
        self, request: ChatRequest, name: str, length: int,
        allowed: Callable[[Route], bool] | None = None, *, need_usage: bool = False,
    ) -> Served[tuple[dict[str, Any], AsyncIterator[dict[str, Any]]]]:
        """Try candidates until one yields its first chunk; nothing has reached the client yet."""

        async def call(route: Route) -> tuple[dict[str, Any], AsyncIterator[dict[str, Any]]]:
            chunks = aiter(route.provider.stream(_with_usage(request, route, need_usage)))
            started = time.monotonic()
            try:
                async with asyncio.timeout(route.timeouts.first_token):
                    first = await anext(chunks)
                self.metrics.first_token.labels(route.name).observe(time.monotonic() - started)
            except StopAsyncIteration:
                raise UpstreamError(ErrorKind.PROTOCOL,
                                    "the upstream stream ended before its first chunk") from None
            except BaseException:
                await _aclose(chunks)
                raise
            return first, chunks

        return await self._run(self.plan(name, length, Capability.CHAT, allowed), call,
                               estimate_tokens(length, request.body))

    async def run(self, plan: list[Route], call: Callable[[Route], Awaitable[T]],
                  estimate: int = 0) -> Served[T]:
        """The attempt loop for any capability (embeddings, images use it directly)."""
        return await self._run(plan, call, estimate)

    async def _run(self, plan: list[Route], call: Callable[[Route], Awaitable[T]],
                   estimate: int) -> Served[T]:
        served = await self._rounds(plan, call, estimate, _Tally())
        if served.route is not plan[0]:
            self.metrics.fallbacks.inc()
        return served

    async def _rounds(self, plan: list[Route], call: Callable[[Route], Awaitable[T]],
                      estimate: int, tally: _Tally) -> Served[T]:
        """Rounds over ``plan`` until one candidate answers; the final error otherwise."""
        policy = plan[0].retry
        deadline = self._clock() + policy.max_time
        candidates = plan
        for round_no in range(policy.max_retries + 1):
            retry_next: list[Route] = []
            ready_at: float | None = None  # when the earliest upstream-parked candidate frees
            for index, route in enumerate(candidates):
                outcome = await self._attempt(route, call, estimate, tally)
                if isinstance(outcome, Served):
                    return outcome
                if outcome is None:
                    continue  # skipped: limited, parked or circuit open
                err = outcome
                if not err.kind.retryable:
                    if err.kind is ErrorKind.CONTEXT_LENGTH:
                        bigger = [r for r in candidates[index + 1:]
                                  if route.model.max_request_length
                                  and (not r.model.max_request_length
                                       or r.model.max_request_length
                                       > route.model.max_request_length)]
                        if bigger:
                            return await self._rounds(bigger, call, estimate, tally)
                    if err.kind is ErrorKind.AUTH or (err.kind is ErrorKind.BAD_REQUEST
                                                      and err.upstream_status == 404):
                        continue  # this model is misconfigured; another may serve the request
                    raise from_upstream(err, route.name)
                if err.kind is ErrorKind.RATE_LIMITED and err.retry_after:
                    ready = self._clock() + err.retry_after
                    ready_at = ready if ready_at is None else min(ready_at, ready)
                retry_next.append(route)
            if not retry_next or round_no == policy.max_retries:
                break
            wait = policy.delay(round_no + 1)
            if ready_at is not None:
                # A hair past the park, so the limiter has surely released it.
                wait = max(wait, ready_at - self._clock() + 0.01)
            if wait > policy.max_delay or self._clock() + wait > deadline:
                break  # an upstream asks for longer than we hold a client: answer now
            log.debug("retry_wait", seconds=round(wait, 3), round=round_no + 1)
            self.metrics.retries.inc()
            await asyncio.sleep(wait)
            candidates = retry_next
        raise self._exhausted(plan, tally)

    async def _attempt(self, route: Route, call: Callable[[Route], Awaitable[T]],
                       estimate: int, tally: _Tally) -> Served[T] | UpstreamError | None:
        """One try of one candidate: a result, its error, or ``None`` when it was skipped."""
        if not route.breaker.allow():
            wait = route.breaker.retry_after()
            tally.unavailable_until = wait if tally.unavailable_until is None else min(
                tally.unavailable_until, wait)
            tally.only_rate_limited = False
            return None
        try:
            decision = await self.limiter.acquire(route.name, route.limits, estimate)
        except LimiterUnavailable as exc:
            route.breaker.release()
            raise ProxyError(503, f"rate limiter unavailable: {exc}",
                             code="limiter_unavailable") from None
        except BaseException:
            route.breaker.release()  # a half-open probe that never ran must not stay taken
            raise
        if not decision.allowed:
            route.breaker.release()
            tally.limited(decision.retry_after)
            self.metrics.limited.labels(route.name).inc()
            return None
        route.last_used = self._clock()
        tally.attempts += 1
        tally.attempted_any = True
        tally.tried.append(route.name)
        started = time.monotonic()
        try:
            try:
                result = await call(route)
            except TimeoutError:
                raise UpstreamError(ErrorKind.TIMEOUT, "no answer from the upstream within "
                                    "its time bound") from None
        except UpstreamError as err:
            await self._failed(route, err, decision, tally)
            return err
        except (asyncio.CancelledError, ProxyError):
            route.breaker.release()
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin bug must not become a 500
            log.error("provider_bug", model=route.name, provider=route.model.provider,
                      error=type(exc).__name__)
            bug = UpstreamError(ErrorKind.PROTOCOL, f"provider {route.model.provider!r} failed "
                                f"({type(exc).__name__})")
            await self._failed(route, bug, decision, tally)
            return bug
        route.breaker.success()
        self.metrics.upstream.labels(route.name, route.model.provider).observe(
            time.monotonic() - started)
        self.metrics.breaker_state(route.name, route.breaker.state.value)
        hint = getattr(result, "rate_limit", None)
        if isinstance(hint, RateLimitHint) and hint.remaining == 0 and hint.reset_after:
            await self._park(route, hint.reset_after)
        return Served(route, result, tally.attempts, decision)

    async def _failed(self, route: Route, err: UpstreamError, decision: Decision,
                      tally: _Tally) -> None:
        # Whatever a plugin forgot: the model's token never reaches a client or a log line.
        err.message = route.provider.redact(err.message)
        tally.last_error = err
        self.metrics.upstream_errors.labels(route.name, err.kind.value).inc()
        if decision.reservation is not None:
            # A failed attempt used no tokens the client pays for; give back the estimate.
            await self.limiter.reconcile(decision.reservation, route.limits, 0)
        if err.kind is ErrorKind.RATE_LIMITED:
            route.breaker.release()
            if err.retry_after:
                await self._park(route, err.retry_after)
            tally.limited(err.retry_after or 1.0)
            return
        tally.only_rate_limited = False
        if err.kind in (ErrorKind.OVERLOADED, ErrorKind.TIMEOUT, ErrorKind.CONNECTION,
                        ErrorKind.PROTOCOL, ErrorKind.AUTH):
            route.breaker.failure()
            self.metrics.breaker_state(route.name, route.breaker.state.value)
        else:
            route.breaker.release()
        log.info("upstream_failed", model=route.name, provider=route.model.provider,
                 kind=err.kind.value, status=err.upstream_status, retry_after=err.retry_after)

    async def _park(self, route: Route, seconds: float) -> None:
        try:
            await self.limiter.park(route.name, seconds)
        except LimiterUnavailable:
            log.warning("park_failed", model=route.name)

    def _exhausted(self, plan: list[Route], tally: _Tally) -> ProxyError:
        names = ", ".join(tally.tried) if tally.tried else ", ".join(r.name for r in plan)
        if tally.only_rate_limited and tally.limited_until is not None:
            said = ""
            if tally.last_error is not None and tally.tried:
                said = f" (upstream: {from_upstream(tally.last_error, tally.tried[-1]).message})"
            return ProxyError(429, f"rate limit reached for {names}{said}; retry later",
                              code="rate_limit_exceeded", retry_after=tally.limited_until)
        err = tally.last_error
        if err is None or not tally.attempted_any:
            wait = min(x for x in (tally.unavailable_until, tally.limited_until, 1.0)
                       if x is not None)
            return ProxyError(503, f"no candidate available for {names} (circuit open or "
                              "rate limited); retry later", code="service_unavailable",
                              retry_after=max(wait, 1.0))
        status = 504 if err.kind is ErrorKind.TIMEOUT else 502
        if err.kind is ErrorKind.RATE_LIMITED:
            status = 429
        base = from_upstream(err, tally.tried[-1])
        return ProxyError(status, f"all candidates failed ({names}); last error: "
                          f"{base.message}", code=base.code or "upstream_error",
                          retry_after=err.retry_after if status == 429 else None)

    def breaker_states(self) -> dict[str, BreakerState]:
        return {name: route.breaker.state for name, route in self.routes.items()}

    async def close(self) -> None:
        """Close the providers (those a successor did not keep), once."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        pending = [t for t in self._background if t is not current]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for route in self.routes.values():
            if self._kept is not None and route.name in self._kept:
                continue
            try:
                await route.provider.close()
            except Exception as exc:  # noqa: BLE001 - closing must go on for the others
                log.warning("provider_close_failed", model=route.name, error=type(exc).__name__)


def _with_usage(request: ChatRequest, route: Route, need_usage: bool) -> ChatRequest:
    """Ask for the final usage chunk when a token limit needs it, whatever the client asked
    (the relay keeps it from a client that did not ask)."""
    if request.include_usage or not (need_usage or route.limits.token_windows):
        return request
    body = dict(request.body)
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return ChatRequest(body=body, raw=orjson.dumps(body), stream=True)


async def _aclose(chunks: AsyncIterator[dict[str, Any]]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
