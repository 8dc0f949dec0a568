"""The routes of one config and the plan of a request: which models, in which order.

A :class:`Route` is a configured model with its provider and the run-time state it keeps in
this process (breaker, recency), shared by every generation whose config leaves the model
unchanged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

import attrs

from aiproxy.config import Config, ModelConfig
from aiproxy.errors import ProxyError, Secrets, shown
from aiproxy.limits.base import Decision, Limits
from aiproxy.provider import Capability, Provider
from aiproxy.routing.breaker import CircuitBreaker
from aiproxy.routing.policy import RetryPolicy

__all__ = ["Planner", "Route", "RouteState", "Served", "Timeouts"]

T = TypeVar("T")

DEFAULT_FIRST_TOKEN = 60.0
DEFAULT_IDLE = 20.0  # short enough to rescue a stalled stream while it still matters
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


# Hedging: the delay is learned from a model's own recent times once it has this many, as
# HEDGE_FACTOR times their 95th percentile, at least HEDGE_FLOOR; before that, streams hedge
# after HEDGE_DEFAULT and non-streamed answers do not hedge.
HEDGE_SAMPLES = 10
HEDGE_FACTOR = 2.0
HEDGE_FLOOR = 3.0
HEDGE_DEFAULT = 10.0


@attrs.define(eq=False, slots=True)
class RouteState:
    """What a model learns while it serves: its breaker, when it was last chosen, and its
    recent times to a first chunk (streams) and to an answer (for hedging)."""

    breaker: CircuitBreaker
    last_used: float = 0.0
    first_chunk_times: deque[float] = attrs.field(factory=lambda: deque(maxlen=100))
    answer_times: deque[float] = attrs.field(factory=lambda: deque(maxlen=100))

    @classmethod
    def of(cls, model: ModelConfig) -> RouteState:
        cb = model.circuit_breaker
        return cls(CircuitBreaker(cb.failures, cb.cooldown, max(cb.max_cooldown, cb.cooldown)))


@attrs.frozen(eq=False)
class Route:
    """A configured model: its provider, its policies and its shared run-time state."""

    model: ModelConfig
    provider: Provider
    retry: RetryPolicy
    state: RouteState
    limits: Limits = attrs.field(init=False)
    timeouts: Timeouts = attrs.field(init=False)
    secrets: Secrets = attrs.field(init=False, repr=False)  # scrubbed from upstream errors
    # Read several times a request: plain attributes, not properties.
    name: str = attrs.field(init=False)  # the model's name
    breaker: CircuitBreaker = attrs.field(init=False, repr=False)  # the state's breaker
    capabilities: frozenset[Capability] = attrs.field(init=False, repr=False)  # it serves

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "limits", Limits.of(self.model))
        object.__setattr__(self, "timeouts", Timeouts.of(self.model))
        object.__setattr__(self, "secrets", Secrets.of(self.model.token, self.model.options))
        object.__setattr__(self, "name", self.model.name)
        object.__setattr__(self, "breaker", self.state.breaker)
        served = self.model.serves
        object.__setattr__(self, "capabilities", frozenset(
            c for c in self.provider.capabilities if not served or c.value in served))

    @property
    def accepts_continuation(self) -> bool:
        """May a broken stream be continued here: the model's ``continuation:``, else what
        its provider documents."""
        configured = self.model.continuation
        return self.provider.accepts_continuation if configured is None else configured

    def hedge_delay(self, stream: bool) -> float | None:
        """How long a first chunk (stream) or answer may take before the next candidate is
        started beside it; ``None``: no hedge. Configured (``timeouts.hedge``, 0 = never), or
        learned from this model's own recent times, bounded by its own time limit."""
        ceiling = self.timeouts.first_token if stream else (self.timeouts.total or DEFAULT_TOTAL)
        configured = self.model.timeouts.hedge
        if configured is not None:
            return min(configured, ceiling) if configured > 0 else None
        times = self.state.first_chunk_times if stream else self.state.answer_times
        if len(times) >= HEDGE_SAMPLES:
            ordered = sorted(times)
            p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
            return min(max(p95 * HEDGE_FACTOR, HEDGE_FLOOR), ceiling)
        return min(HEDGE_DEFAULT, ceiling) if stream else None

    def serves(self, capability: Capability) -> bool:
        return capability in self.capabilities


@attrs.frozen
class Served(Generic[T]):
    """What answered: the route, the result, the attempts it took and the limiter's decision."""

    route: Route
    result: T
    attempts: int
    decision: Decision


def _recency(route: Route) -> tuple[int, float]:
    return route.model.priority, route.state.last_used


class Planner:
    """Names to routes: a model is itself, a group (``model_size``, ``aliases``, ``groups:``)
    is its members by priority, then least recently used; ``fallbacks:`` extend a plan."""

    def __init__(self, config: Config, routes: Mapping[str, Route]) -> None:
        self.config = config
        self.routes = dict(routes)
        self.groups = _build_groups(config)
        # unknown_models: where a name that is neither a model nor a group goes (None: 404).
        self.unknown_to = config.unknown_models.route_to
        self.unknown_shorter_than = config.unknown_models.shorter_than

    def _expand(self, name: str, seen: set[str]) -> list[Route]:
        if name in seen:
            return []
        seen.add(name)
        route = self.routes.get(name)
        if route is not None:
            return [route]
        members: list[Route] = []
        for member in self.groups.get(name, ()):
            members += self._expand(member, seen)
        return sorted(members, key=_recency)

    def expand(self, name: str) -> list[Route]:
        """The models a model or group name stands for (fallbacks not included)."""
        return self._expand(name, set())

    def resolve(self, name: str) -> str:
        """The name a request is planned by: ``name``, or where ``unknown_models:`` sends a
        name that is neither a model nor a group (the old proxy's short names)."""
        if self.unknown_to is not None and name not in self.routes \
                and name not in self.groups \
                and (not self.unknown_shorter_than or len(name) < self.unknown_shorter_than):
            return self.unknown_to
        return name

    def plan(self, name: str, length: int, capability: Capability,
             allowed: Callable[[Route], bool] | None = None) -> list[Route]:
        """The ordered candidates for a request; :class:`ProxyError` when there are none.

        ``allowed`` filters the candidates (a client key's permissions).
        """
        name = self.resolve(name)
        route = self.routes.get(name)
        if route is not None and not route.model.fallbacks:
            # The common case, one model: its plan is itself when it may take the request
            # (else the checks below say why not).
            longest = route.model.max_request_length
            if (capability in route.capabilities and (allowed is None or allowed(route))
                    and (not longest or length <= longest)):
                return [route]
            plan = [route]
        elif route is None and name not in self.groups:
            raise ProxyError(404, f"The model {shown(name)} does not exist", code="model_not_found",
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
            raise ProxyError(400, f"model {shown(name)} does not serve {capability.value}",
                             code="unsupported_capability", param="model")
        fitting = [r for r in serving if not r.model.max_request_length
                   or length <= r.model.max_request_length]
        if not fitting:
            biggest = max(r.model.max_request_length for r in serving)
            raise ProxyError(400, f"request of {length} bytes exceeds the max_request_length of "
                             f"every candidate for {shown(name)} (largest {biggest})",
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
        return sorted(chosen, key=_recency)


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
