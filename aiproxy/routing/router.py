"""The router: it owns a request from admission to settlement, for every capability.

Admission (the client key's permission and limits), the plan, the attempts (model limits,
breakers, retries, timeouts, parking) and the settlement (both token reservations reconciled
with the reported usage or given back, the breaker's verdict, token and latency metrics, the
request's record) all happen here. HTTP handlers parse, call one method, and write.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import attrs
import orjson

from aiproxy.config import Config
from aiproxy.errors import ProxyError, from_upstream, sanitize
from aiproxy.keys import Grant
from aiproxy.limits.base import Decision, LimiterUnavailable, Limits, RateLimiter, Reservation
from aiproxy.metrics import Metrics
from aiproxy.observability import get_logger
from aiproxy.provider import (
    MALFORMED_EVENT,
    UPSTREAM_CALLED,
    Capability,
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorKind,
    ImageRequest,
    ImageResponse,
    UpstreamError,
)
from aiproxy.record import AttemptEntry, Record
from aiproxy.routing.breaker import BreakerState, Probe, Verdict
from aiproxy.routing.deadline import deadline
from aiproxy.routing.plan import Planner, Route, Served
from aiproxy.routing.stream import ChatChunks, RoutedStream, StallSweeper, StreamLens

__all__ = ["AdmissionGuard", "Router", "Served", "estimate_tokens", "usage_tokens"]

T = TypeVar("T")
log = get_logger("aiproxy.router")

# A broken stream's continuation: the same request continuing the text on a route.
Continuation = Callable[[Route, str], AsyncIterator[dict[str, Any]]]

# Asked at admission, after the plan and before any attempt: raise a ProxyError (e.g. 429 for
# a spent budget) to refuse the request, at once or from the awaitable it returns (``None``:
# admitted, nothing to wait for). Given the record, the key's grant and the plan.
AdmissionGuard = Callable[[Record, "Grant | None", "list[Route]"], "Awaitable[None] | None"]

# Failures worth one quick retry on the same model: a 5xx or a reset before the headers.
_SAME_MODEL_RETRYABLE = frozenset({ErrorKind.OVERLOADED, ErrorKind.CONNECTION})

# What a failed attempt says about the model's health.
_UNWELL = frozenset({ErrorKind.OVERLOADED, ErrorKind.TIMEOUT, ErrorKind.CONNECTION,
                     ErrorKind.PROTOCOL, ErrorKind.AUTH})


class _Nothing:
    """No outcome yet (``None`` is one: the candidate was skipped)."""


_NOTHING = _Nothing()


def estimate_tokens(request_length: int, body: Mapping[str, Any]) -> int:
    """A cheap upper-ish estimate for token limits: ~4 bytes a token plus the output bound."""
    out = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return request_length // 4 + (out if isinstance(out, int) and out > 0 else 0)


def usage_tokens(usage: Any) -> int | None:
    """The total tokens an OpenAI ``usage`` object reports, or ``None`` when it reports none."""
    if type(usage) is not dict:
        if not isinstance(usage, Mapping):
            return None
        usage = dict(usage)
    total = _count(usage, "total_tokens")
    if total is not None:
        return total
    prompt, completion = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    if prompt is None and completion is None:
        return None
    return (prompt or 0) + (completion or 0)


def _count(usage: dict[str, Any], name: str) -> int | None:
    """A token count of a usage object: an integer (JSON's true and false are not counts)."""
    value = usage.get(name)
    return value if type(value) is int else None


@attrs.define(eq=False, slots=True)
class Attempt:
    """One admitted try of one route: its breaker permit, its model reservation, its start."""

    route: Route
    probe: Probe
    decision: Decision
    started: float


@attrs.define(eq=False, slots=True)
class Exchange:
    """One request from admission to settlement; :meth:`settle` runs exactly once."""

    router: Router
    record: Record
    grant: Grant | None
    plan: list[Route]
    estimate: int
    key_reservation: Reservation | None = None
    attempts: int = 0
    upstream: float = 0.0  # seconds spent in attempts
    settled: bool = False
    streaming: bool = False  # the attempts yield a first chunk, not a whole answer

    async def admit_key(self) -> None:
        """Take one request (and the estimate) from the client key's own limits, or 429."""
        grant = self.grant
        if grant is None or grant.limits.unlimited:
            return
        key = f"key:{grant.key.name}"
        decision = (self.router.limiter.decide_now(key, grant.limits, self.estimate)
                    or await self.router.acquire(key, grant.limits, self.estimate))
        if not decision.allowed:
            raise ProxyError(429, f"rate limit reached for key {grant.key.name!r}; retry later",
                             code="rate_limit_exceeded", retry_after=decision.retry_after)
        self.key_reservation = decision.reservation

    async def settle(self, attempt: Attempt | None, verdict: Verdict,
                     usage: Mapping[str, Any] | None, used: int | None) -> None:
        """Reconcile both reservations (``used`` tokens; ``None`` keeps the estimate), report
        the breaker's verdict, count tokens and time, and complete the record. Shielded: a
        cancelled request still gives back what it took."""
        owed = self.settle_now(attempt, verdict, usage, used)
        if owed:
            # Only the limiter calls can wait; shielded, so a cancelled request still gives
            # back what it took. (Most requests owe none: no token limits, nothing to await.)
            await asyncio.shield(self.router.reconcile_all(owed))

    def settle_now(self, attempt: Attempt | None, verdict: Verdict,
                   usage: Mapping[str, Any] | None, used: int | None) -> list[_Owed]:
        """:meth:`settle` but the limiter calls, which it returns for the caller to make
        (shielded); nothing the second time."""
        if self.settled:
            return []
        self.settled = True
        return self._settle(attempt, verdict, usage, used)

    def _settle(self, attempt: Attempt | None, verdict: Verdict,
                usage: Mapping[str, Any] | None, used: int | None) -> list[_Owed]:
        """Everything of the settlement but the limiter calls, which it returns."""
        router, record = self.router, self.record
        if usage is not None and type(usage) is not dict:  # JSON gives dicts; a plugin may not
            usage = dict(usage) if isinstance(usage, Mapping) else None
        reported = usage_tokens(usage)
        tokens = reported if reported is not None else used
        record.attempts = self.attempts
        record.upstream_ms = round(self.upstream * 1000, 2) if self.attempts else None
        owed: list[_Owed] = []
        if attempt is not None:
            route = attempt.route
            attempt.probe.end(verdict)
            router.metrics.breaker_state(route.name, route.breaker.state.value)
            _owe(owed, attempt.decision.reservation, route.limits, tokens)
            if usage is not None:
                prompt, completion = _count(usage, "prompt_tokens"), _count(usage,
                                                                          "completion_tokens")
                record.tokens_in, record.tokens_out = prompt, completion
                if prompt is not None and prompt > 0:
                    router.metrics.tokens.labels(route.name, "in").inc(prompt)
                if completion is not None and completion > 0:
                    router.metrics.tokens.labels(route.name, "out").inc(completion)
                record.tokens_cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
                record.tokens_reasoning = _detail(usage, "completion_tokens_details",
                                                  "reasoning_tokens")
        if self.grant is not None:
            _owe(owed, self.key_reservation, self.grant.limits,
                 tokens if attempt is not None else 0)
        return owed

    async def end_attempt(self, attempt: Attempt, verdict: Verdict, used: int | None) -> None:
        """End one attempt that is not the answer (a hedge that lost, a stream continued
        elsewhere): its breaker verdict, its model reservation settled at ``used``."""
        attempt.probe.end(verdict)
        owed: list[_Owed] = []
        _owe(owed, attempt.decision.reservation, attempt.route.limits, used)
        if owed:
            await asyncio.shield(self.router.reconcile_all(owed))

    async def run(self, call: Callable[[Route], Awaitable[T]]) -> tuple[Attempt, T]:
        """Candidates in order until one answers, under the retry policy (see
        docs/routing.md): the final error otherwise (and then the request is settled:
        nothing served it)."""
        tally = _Tally()
        plan = self.plan
        give_up_at = self.router.clock() + plan[0].retry.max_time
        try:
            outcome: tuple[Attempt, T] | UpstreamError | _Nothing | None = _NOTHING
            if len(plan) == 1:
                # The common case, one candidate: no partner to hedge with, so its first
                # attempt is made here; the rounds take over only when it did not answer.
                outcome = await self._attempt(plan[0], call, tally)
            if isinstance(outcome, tuple):
                attempt, result = outcome
            else:
                attempt, result = await self._rounds(plan, call, tally, give_up_at, outcome)
        except BaseException:
            if tally.last_error is not None:
                self.record.error_kind = tally.last_error.kind.value
            await self.settle(None, Verdict.NEUTRAL, None, 0)
            raise
        if attempt.route is not self.plan[0]:
            self.router.metrics.fallbacks.inc()
        record = self.record
        record.model = attempt.route.name
        record.provider = attempt.route.model.provider
        return attempt, result

    async def _rounds(self, plan: list[Route], call: Callable[[Route], Awaitable[T]],
                      tally: _Tally, give_up_at: float,
                      first: tuple[Attempt, T] | UpstreamError | _Nothing | None = _NOTHING,
                      ) -> tuple[Attempt, T]:
        """Rounds over ``plan``: each candidate once (with its same-model retries and a hedge
        beside it when slow), then, while some failed retryably, another round after a
        backoff; a round whose candidates are all open or parked past the wait is skipped
        and the request answered at once. ``first``: the outcome of the first candidate's
        first attempt, when it was already made (:meth:`run`)."""
        router = self.router
        policy = plan[0].retry
        candidates = plan
        for round_no in range(policy.max_retries + 1):
            retry_next: list[Route] = []
            queue = list(candidates)
            while queue:
                route = queue.pop(0)
                outcome = await self._try(route, call, tally, queue, give_up_at, first)
                first = _NOTHING
                if isinstance(outcome, tuple):
                    return outcome
                if outcome is None:
                    continue  # skipped: limited, parked or circuit open
                err = outcome
                if err.kind is ErrorKind.CONTEXT_LENGTH:
                    # Every remaining candidate not known to be smaller (an unknown length
                    # may be larger), and the configured fallbacks always.
                    size = route.model.max_request_length
                    fallbacks = self._fallbacks(plan)
                    queue = [r for r in queue if r.name in fallbacks or not size
                             or not r.model.max_request_length
                             or r.model.max_request_length > size]
                    if queue:
                        continue
                    raise from_upstream(err, route.name)
                if not err.kind.retryable:
                    if err.kind is ErrorKind.AUTH or (err.kind is ErrorKind.BAD_REQUEST
                                                      and err.upstream_status == 404):
                        continue  # this model is misconfigured; another may serve the request
                    if err.kind is ErrorKind.BAD_REQUEST and err.code == "unsupported_parameter":
                        # This provider cannot express a parameter; a later candidate may.
                        tally.refused = tally.refused or (err, route.name)
                        continue
                    raise from_upstream(err, route.name)
                retry_next.append(route)
            if not retry_next or round_no == policy.max_retries:
                break
            wait = policy.delay(round_no + 1)
            now = router.clock()
            viable = [r for r in retry_next if r.breaker.retry_after() <= wait
                      and tally.parked_until.get(r.name, 0.0) <= now + wait]
            if not viable:
                parked = [tally.parked_until.get(r.name, 0.0) - now for r in retry_next]
                soonest = min(parked) if parked else 0.0
                if soonest <= 0 or soonest > policy.max_delay or now + soonest > give_up_at:
                    break  # nothing would be tried after the wait: answer now
                wait = soonest + 0.01  # a hair past the park, so the limiter released it
                viable = retry_next
            if wait > policy.max_delay or now + wait > give_up_at:
                break  # an upstream asks for longer than we hold a client: answer now
            log.debug("retry_wait", seconds=round(wait, 3), round=round_no + 1,
                      request_id=self.record.request_id)
            router.metrics.retries.inc()
            await asyncio.sleep(wait)
            candidates = viable
        raise tally.exhausted(plan)

    def _fallbacks(self, plan: list[Route]) -> frozenset[str]:
        planner = self.router.planner
        return frozenset(r.name for name in plan[0].model.fallbacks
                         for r in planner.expand(name))

    async def _try(self, route: Route, call: Callable[[Route], Awaitable[T]], tally: _Tally,
                   queue: list[Route], give_up_at: float,
                   first: tuple[Attempt, T] | UpstreamError | _Nothing | None = _NOTHING,
                   ) -> tuple[Attempt, T] | UpstreamError | None:
        """One candidate, retried on the same model when it is worth it: a 429 whose
        Retry-After fits the budget is waited out once; a 5xx or a connection reset gets
        ``retry.same_model`` quick retries (backoff with jitter). A timeout falls over at
        once (a silent upstream stays silent), a client error is never retried."""
        router = self.router
        policy = route.retry
        quick = policy.same_model
        waited = False
        while True:
            if isinstance(first, _Nothing):
                delay = route.hedge_delay(self.streaming) if queue else None
                outcome = await (self._attempt(route, call, tally) if delay is None
                                 else self._hedged(route, call, tally, queue, delay))
            else:
                outcome, first = first, _NOTHING  # made already, by run()
            if not isinstance(outcome, UpstreamError):
                return outcome
            err = outcome
            left = give_up_at - router.clock()
            if (err.kind is ErrorKind.RATE_LIMITED and err.retry_after and not waited
                    and err.retry_after <= min(policy.max_delay, left)):
                waited = True
                await asyncio.sleep(err.retry_after + 0.01)  # past the park it set
                continue
            if err.kind in _SAME_MODEL_RETRYABLE and quick > 0 and err.code != _PLUGIN_FAILED:
                quick -= 1
                pause = min(policy.base_delay, 0.5) * random.uniform(0.5, 1.5)  # noqa: S311
                if pause < left and route.breaker.retry_after() == 0:
                    await asyncio.sleep(pause)
                    continue
            return err

    async def _hedged(self, route: Route, call: Callable[[Route], Awaitable[T]],
                      tally: _Tally, queue: list[Route], delay: float
                      ) -> tuple[Attempt, T] | UpstreamError | None:
        """An attempt of ``route``; when it has not answered after ``delay`` (its hedge
        delay: another candidate is queued), that one starts beside it and whichever answers
        first wins (the other is cancelled and settled at once). At most one extra call."""
        loop = asyncio.get_running_loop()
        primary = loop.create_task(self._attempt(route, call, tally))
        done, _ = await asyncio.wait({primary}, timeout=delay)
        if done:
            return primary.result()
        partner = queue.pop(0)
        self.record.hedges += 1
        self.router.metrics.hedges.labels(route.name).inc()
        log.info("hedge", model=route.name, partner=partner.name, after_s=round(delay, 3),
                 request_id=self.record.request_id)
        pending = {primary, loop.create_task(self._attempt(partner, call, tally))}
        first_failure: UpstreamError | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                winner: tuple[Attempt, T] | None = None
                for task in done:
                    result = task.result()
                    if isinstance(result, tuple) and winner is None:
                        winner = result
                    elif isinstance(result, tuple):
                        await self._discard(*result)  # both answered at once: one is spare
                    elif isinstance(result, UpstreamError) and first_failure is None:
                        first_failure = result
                if winner is not None:
                    return winner
            return first_failure
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _discard(self, attempt: Attempt, result: Any) -> None:
        """A spare answer (a hedge that also answered): closed, its permit and reservation
        given back."""
        if isinstance(result, tuple) and len(result) == 2:
            await _aclose(result[1])
        await self.end_attempt(attempt, Verdict.NEUTRAL, 0)

    async def _attempt(self, route: Route, call: Callable[[Route], Awaitable[T]],
                       tally: _Tally) -> tuple[Attempt, T] | UpstreamError | None:
        """One try of one candidate: the attempt and its result, its error, or ``None`` when
        it was skipped (circuit open, limited, parked)."""
        router = self.router
        probe = route.breaker.probe()
        if probe is None:
            tally.unavailable(route.breaker.retry_after())
            return None
        with probe:  # a permit an exception leaves unended (cancelled, limiter down) is freed
            decision = (router.limiter.decide_now(route.name, route.limits, self.estimate)
                        or await router.acquire(route.name, route.limits, self.estimate))
            if not decision.allowed:
                probe.end(Verdict.NEUTRAL)
                tally.limited(decision.retry_after)
                router.metrics.limited.labels(route.name).inc()
                return None
            route.state.last_used = router.clock()
            UPSTREAM_CALLED.set(False)
            self.attempts += 1
            tally.tried.append(route.name)
            self.record.tried = tally.tried
            attempt = Attempt(route, probe, decision, time.monotonic())
            record = self.record
            # On the wall clock as the request's start plus monotonic time since (see
            # Record.clock): traces nest the attempt inside its request, whatever the clock.
            wall = (record.started + (attempt.started - record.clock) if record.clock
                    else time.time())
            outcome = "cancelled"
            try:
                try:
                    result = await call(route)
                except TimeoutError:
                    raise UpstreamError(ErrorKind.TIMEOUT, "no answer from the upstream within "
                                        "its time bound") from None
                outcome = "answered"
            except UpstreamError as err:
                outcome = err.kind.value
                await self._failed(attempt, err, tally)
                return err
            except (asyncio.CancelledError, ProxyError):
                owed: list[_Owed] = []
                _owe(owed, decision.reservation, route.limits, 0)
                if owed:
                    await asyncio.shield(router.reconcile_all(owed))
                raise
            except Exception as exc:  # noqa: BLE001 - a plugin bug must not become a 500
                bug = _plugin_failure(route, exc, self.record)
                outcome = bug.kind.value
                await self._failed(attempt, bug, tally)
                return bug
            finally:
                elapsed = time.monotonic() - attempt.started
                self.upstream += elapsed
                self.record.attempt_log.append(AttemptEntry(
                    route.name, route.model.provider, wall, elapsed, outcome))
            router.metrics.upstream.labels(route.name, route.model.provider).observe(elapsed)
            times = route.state.first_chunk_times if self.streaming else route.state.answer_times
            times.append(elapsed)
            return attempt, result
        return None  # pragma: no cover - the with block always returns

    async def continue_stream(
        self, broken: Attempt, text: str,
        call: Callable[[Route, str], AsyncIterator[dict[str, Any]]],
    ) -> tuple[Attempt, dict[str, Any], AsyncIterator[dict[str, Any]]] | None:
        """A stream broke after ``text`` reached the client: the next candidate after the
        broken one that accepts a continuation, answering ``call(route, text)`` (the request
        plus an assistant turn holding ``text``), with its first chunk in hand; ``None``
        when none can (the client then gets the original failure, never this one's)."""
        plan = self.plan
        start = plan.index(broken.route) + 1 if broken.route in plan else 0
        tally = _Tally()
        for route in plan[start:]:
            if route is broken.route or not route.accepts_continuation:
                continue
            outcome = await self._attempt(
                route, lambda r: self.router.first_chunk(r, call(r, text), self.record), tally)
            if isinstance(outcome, tuple):
                attempt, (first, chunks) = outcome
                return attempt, first, chunks
        return None

    async def _failed(self, attempt: Attempt, err: UpstreamError, tally: _Tally) -> None:
        router, route = self.router, attempt.route
        # Whatever a plugin forgot: no credential reaches a client or a log line, and only
        # short identifiers of the upstream's code and param, a bounded Retry-After.
        sanitize(err, route.secrets)
        tally.last_error = err
        tally.last_model = route.name
        router.metrics.upstream_errors.labels(route.name, err.kind.value).inc()
        # A failed attempt used no tokens the client pays for: give back the estimate.
        await router.reconcile(attempt.decision.reservation, route.limits, 0)
        if err.kind is ErrorKind.RATE_LIMITED:
            attempt.probe.end(Verdict.NEUTRAL)
            if err.retry_after:
                tally.parked_until[route.name] = router.clock() + err.retry_after
                await router.park(route.name, err.retry_after)
            tally.limited(err.retry_after or 1.0)
            return
        tally.only_rate_limited = False
        unwell = err.kind in _UNWELL and err.code != _PLUGIN_FAILED
        attempt.probe.end(Verdict.FAILED if unwell else Verdict.NEUTRAL)
        router.metrics.breaker_state(route.name, route.breaker.state.value)
        log.info("upstream_failed", model=route.name, provider=route.model.provider,
                 kind=err.kind.value, status=err.upstream_status, retry_after=err.retry_after,
                 request_id=self.record.request_id)


class _Tally:
    """What happened to the candidates of one request, for the final error. (A plain class:
    one is made for every request.)"""

    __slots__ = ("last_error", "last_model", "limited_until", "only_rate_limited",
                 "parked_until", "refused", "tried", "unavailable_until")

    def __init__(self) -> None:
        self.tried: list[str] = []
        self.parked_until: dict[str, float] = {}  # by a 429's Retry-After
        self.refused: tuple[UpstreamError, str] | None = None  # a parameter it cannot take
        self.last_error: UpstreamError | None = None
        self.last_model = ""
        self.limited_until: float | None = None  # earliest moment a refused candidate frees
        self.unavailable_until: float | None = None  # earliest breaker re-probe
        self.only_rate_limited = True

    def limited(self, seconds: float) -> None:
        self.limited_until = seconds if self.limited_until is None else min(self.limited_until,
                                                                            seconds)

    def unavailable(self, seconds: float) -> None:
        self.unavailable_until = seconds if self.unavailable_until is None else min(
            self.unavailable_until, seconds)
        self.only_rate_limited = False

    def exhausted(self, plan: list[Route]) -> ProxyError:
        if self.refused is not None:
            # No candidate served, one refused a parameter: the client can mend that.
            return from_upstream(*self.refused)
        names = ", ".join(self.tried) if self.tried else ", ".join(r.name for r in plan)
        if self.only_rate_limited and self.limited_until is not None:
            said = ""
            if self.last_error is not None:
                said = f" (upstream: {from_upstream(self.last_error, self.last_model).message})"
            return ProxyError(429, f"rate limit reached for {names}{said}; retry later",
                              code="rate_limit_exceeded", retry_after=self.limited_until)
        err = self.last_error
        if err is None:
            wait = min(x for x in (self.unavailable_until, self.limited_until, 1.0)
                       if x is not None)
            return ProxyError(503, f"no candidate available for {names} (circuit open or "
                              "rate limited); retry later", code="service_unavailable",
                              retry_after=max(wait, 1.0))
        status = 504 if err.kind is ErrorKind.TIMEOUT else 502
        if err.kind is ErrorKind.RATE_LIMITED:
            status = 429
        base = from_upstream(err, self.last_model)
        return ProxyError(status, f"all candidates failed ({names}); last error: "
                          f"{base.message}", code=base.code or "upstream_error",
                          retry_after=err.retry_after if status == 429 else None)


class Router:
    """Routes one generation's requests. It never reaches back up into HTTP."""

    def __init__(self, planner: Planner, limiter: RateLimiter, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic,
                 guards: tuple[AdmissionGuard, ...] = ()) -> None:
        self.planner = planner
        self.limiter = limiter
        self.metrics = metrics
        self.clock = clock
        self.guards = guards
        self.streams: set[RoutedStream] = set()  # being pumped now
        self.sweeper = StallSweeper()  # their stall and total bounds, one timer for all

    @property
    def config(self) -> Config:
        return self.planner.config

    @property
    def routes(self) -> dict[str, Route]:
        return self.planner.routes

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        return self.planner.groups

    def breaker_states(self) -> dict[str, BreakerState]:
        return {name: route.breaker.state for name, route in self.routes.items()}

    # --- the limiter, with its failure mapped to the client's 503 -------------------------

    async def acquire(self, key: str, limits: Limits, estimate: int) -> Decision:
        try:
            return await self.limiter.acquire(key, limits, estimate)
        except LimiterUnavailable as exc:
            raise ProxyError(503, f"rate limiter unavailable: {exc}",
                             code="limiter_unavailable") from None

    async def reconcile(self, reservation: Reservation | None, limits: Limits,
                        tokens: int | None) -> None:
        """Replace a reservation's estimate by ``tokens`` (``None``: the estimate stands).
        Only token windows count tokens: without one there is nothing to reconcile."""
        if reservation is None or tokens is None or not limits.token_windows:
            return
        try:
            await self.limiter.reconcile(reservation, limits, tokens)
        except LimiterUnavailable:
            log.warning("reconcile_failed", key=reservation.key)

    async def reconcile_all(self, owed: list[_Owed]) -> None:
        for reservation, limits, tokens in owed:
            await self.reconcile(reservation, limits, tokens)

    async def park(self, name: str, seconds: float) -> None:
        try:
            await self.limiter.park(name, seconds)
        except LimiterUnavailable:
            log.warning("park_failed", model=name)

    # --- admission ---------------------------------------------------------------------

    async def _admit(self, record: Record, grant: Grant | None, name: str | None,
                     capability: Capability, length: int, estimate: int) -> Exchange:
        """Permission, plan and the key's own limits: an :class:`Exchange`, or the error."""
        allowed = None if grant is None or grant.everything else grant.allows
        if name is None:
            plan = self.planner.plan_any(capability, allowed)
        else:
            if grant is not None:
                grant.check(self.planner.resolve(name))
            plan = self.planner.plan(name, length, capability, allowed)
        if grant is not None:
            # A key's reservation never exceeds what the key itself may spend, so one
            # request of a small key cannot hold a shared model window.
            windows = grant.limits.token_windows
            if windows:
                estimate = min(estimate, min(limit for _, limit in windows))
        for guard in self.guards:
            pending = guard(record, grant, plan)
            if pending is not None:
                await pending
        exchange = Exchange(self, record, grant, plan, estimate)
        if grant is not None:
            await exchange.admit_key()
        return exchange

    async def _serve(self, exchange: Exchange, call: Callable[[Route], Awaitable[T]],
                     usage_of: Callable[[T], Mapping[str, Any] | None]) -> Served[T]:
        attempt, result = await exchange.run(call)
        owed = exchange.settle_now(attempt, Verdict.OK, usage_of(result), None)
        if owed:
            await asyncio.shield(self.reconcile_all(owed))  # a cancelled request gives back
        return Served(attempt.route, result, exchange.attempts, attempt.decision)

    # --- the capabilities ----------------------------------------------------------------

    async def chat(self, record: Record, grant: Grant | None,
                   request: ChatRequest) -> Served[ChatResponse]:
        length = len(request.raw)
        exchange = await self._admit(record, grant, request.body["model"], Capability.CHAT,
                                     length, estimate_tokens(length, request.body))

        async def call(route: Route) -> ChatResponse:
            with deadline(route.timeouts.total):
                return await route.provider.chat(request)

        return await self._serve(exchange, call, lambda r: r.data.get("usage"))

    async def embeddings(self, record: Record, grant: Grant | None,
                         request: EmbeddingsRequest) -> Served[EmbeddingsResponse]:
        length = len(request.raw)
        exchange = await self._admit(record, grant, request.body["model"],
                                     Capability.EMBEDDINGS, length, length // 4)

        async def call(route: Route) -> EmbeddingsResponse:
            with deadline(route.timeouts.total):
                return await route.provider.embeddings(request)

        return await self._serve(exchange, call, lambda r: r.data.get("usage"))

    async def images(self, record: Record, grant: Grant | None, name: str | None,
                     request: ImageRequest) -> Served[ImageResponse]:
        """``name`` None: any image model (the old ``/image`` with no model or ``all``)."""
        exchange = await self._admit(record, grant, name, Capability.IMAGES,
                                     len(request.raw), 0)

        async def call(route: Route) -> ImageResponse:
            with deadline(route.timeouts.total):
                return await route.provider.images(request)

        served = await self._serve(exchange, call, lambda r: None)
        record.images = len(served.result.images)
        return served

    async def stream(self, record: Record, grant: Grant | None,
                     request: ChatRequest) -> RoutedStream:
        """A chat completion stream: see :meth:`open_stream`."""
        length = len(request.raw)
        # Every stream asks for the final usage chunk, whatever the client asked: token
        # limits reconcile with it, and the usage ledger prices and budgets by it (a stream
        # without usage would cost nothing). The lens keeps it from a client that did not ask.
        # Built once: every candidate gets the same request.
        asked = request.with_usage_requested()

        def call(route: Route) -> AsyncIterator[dict[str, Any]]:
            return route.provider.stream(asked)

        def continued(route: Route, text: str) -> AsyncIterator[dict[str, Any]]:
            return route.provider.stream(_continuation(request, text))

        return await self.open_stream(
            record, grant, request.body["model"], Capability.CHAT, length,
            estimate_tokens(length, request.body), call,
            ChatChunks(wants_usage=request.include_usage), continued)

    async def first_chunk(self, route: Route, stream: AsyncIterator[dict[str, Any]],
                          record: Record) -> tuple[dict[str, Any], AsyncIterator[dict[str, Any]]]:
        """The first chunk of ``stream`` within the route's first-token bound (events a
        plugin could not parse are skipped), and the rest; the stream is closed on failure."""
        chunks = aiter(stream)
        started = time.monotonic()
        try:
            with deadline(route.timeouts.first_token):
                first = await anext(chunks)
                while first is MALFORMED_EVENT:
                    self.metrics.malformed.labels(route.name).inc()
                    first = await anext(chunks)
            ttft = time.monotonic() - started
            self.metrics.first_token.labels(route.name).observe(ttft)
            record.ttft_ms = round(ttft * 1000, 2)
        except StopAsyncIteration:
            await _aclose(chunks)
            raise UpstreamError(ErrorKind.PROTOCOL,
                                "the upstream stream ended before its first chunk") from None
        except BaseException:
            await _aclose(chunks)
            raise
        return first, chunks

    # --- for front doors that speak another API (Messages, Responses) -----------------

    async def serve(self, record: Record, grant: Grant | None, name: str | None,
                    capability: Capability, length: int, estimate: int,
                    call: Callable[[Route], Awaitable[T]],
                    usage_of: Callable[[T], Mapping[str, Any] | None]) -> Served[T]:
        """Any non-streamed call under the whole lifecycle: admission for ``name`` (None: any
        model serving ``capability``), attempts of ``call(route)`` under the route's total
        bound, settlement with ``usage_of(result)`` (an OpenAI-shaped usage mapping)."""
        exchange = await self._admit(record, grant, name, capability, length, estimate)

        async def bounded(route: Route) -> T:
            with deadline(route.timeouts.total):
                return await call(route)

        return await self._serve(exchange, bounded, usage_of)

    async def open_stream(self, record: Record, grant: Grant | None, name: str,
                          capability: Capability, length: int, estimate: int,
                          call: Callable[[Route], AsyncIterator[dict[str, Any]]],
                          lens: StreamLens,
                          continue_with: Continuation | None = None) -> RoutedStream:
        """Try candidates until one yields its first chunk (nothing has reached the client
        yet, so a failure until then falls over invisibly, including a first chunk slower
        than the route's bound). ``lens`` reads and rewrites the chunks (usage, relayed text);
        the stream settles when it ends, whichever way: see :class:`RoutedStream`.
        ``continue_with(route, text)``: the same request continuing ``text`` on ``route``,
        for a stream that breaks after text reached the client (None: never continued)."""
        exchange = await self._admit(record, grant, name, capability, length, estimate)
        exchange.streaming = True

        async def first_of(route: Route) -> tuple[dict[str, Any], AsyncIterator[dict[str, Any]]]:
            return await self.first_chunk(route, call(route), record)

        attempt, (first, chunks) = await exchange.run(first_of)
        record.stream = True
        return RoutedStream(exchange, attempt, first, chunks, length // 4, lens, continue_with)


_PLUGIN_FAILED = "provider_failed"

# A reservation to reconcile at settlement: the reservation, its subject's limits, the tokens.
_Owed = tuple[Reservation, Limits, int]


def _owe(owed: list[_Owed], reservation: Reservation | None, limits: Limits,
         tokens: int | None) -> None:
    """Note a reconcile that has something to do (see :meth:`Router.reconcile`)."""
    if reservation is not None and tokens is not None and limits.token_windows:
        owed.append((reservation, limits, tokens))


def _plugin_failure(route: Route, exc: Exception, record: Record) -> UpstreamError:
    """A plugin raised something other than :class:`UpstreamError`. Before it called its
    upstream, its translation could not express the client's request: the client's 400.
    After, it could not read the answer: a 502. Neither counts against the model's health,
    so no client can open a breaker for everyone with crafted bodies."""
    called = UPSTREAM_CALLED.get()
    log.error("provider_bug", model=route.name, provider=route.model.provider,
              error=type(exc).__name__, upstream_called=called, request_id=record.request_id)
    if not called:
        return UpstreamError(ErrorKind.BAD_REQUEST, f"provider {route.model.provider!r} could "
                             f"not translate the request ({type(exc).__name__})",
                             code="unsupported_request", status=400)
    return UpstreamError(ErrorKind.PROTOCOL, f"provider {route.model.provider!r} failed "
                         f"({type(exc).__name__})", code=_PLUGIN_FAILED)


def _detail(usage: dict[str, Any], group: str, name: str) -> int | None:
    details = usage.get(group)
    return _count(details, name) if type(details) is dict else None


def _continuation(request: ChatRequest, text: str) -> ChatRequest:
    """The request continuing ``text``: an assistant turn holding exactly what the client has,
    marked so the plugin continues it the way its API documents. Usage is always asked for,
    so the answer's usage adds up."""
    body = dict(request.body)
    body["messages"] = [*body["messages"], {"role": "assistant", "content": text}]
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return ChatRequest(body=body, raw=orjson.dumps(body), stream=True, continuation=True)


async def _aclose(chunks: AsyncIterator[dict[str, Any]]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
