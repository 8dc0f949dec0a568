"""Routing: the plan of a request (:mod:`.plan`), its attempts and settlement (:mod:`.router`,
:mod:`.stream`), the circuit breaker (:mod:`.breaker`) and the retry policy (:mod:`.policy`)."""

from __future__ import annotations

from aiproxy.routing.breaker import BreakerState, CircuitBreaker, Probe, Verdict
from aiproxy.routing.plan import Planner, Route, RouteState, Served, Timeouts
from aiproxy.routing.policy import RetryPolicy
from aiproxy.routing.router import (
    AdmissionGuard,
    Attempt,
    Exchange,
    Router,
    estimate_tokens,
    usage_tokens,
)
from aiproxy.routing.stream import ChatChunks, ClientGone, RoutedStream, StreamLens

__all__ = [
    "AdmissionGuard",
    "Attempt",
    "BreakerState",
    "ChatChunks",
    "CircuitBreaker",
    "ClientGone",
    "Exchange",
    "Planner",
    "Probe",
    "RetryPolicy",
    "Route",
    "RouteState",
    "RoutedStream",
    "Router",
    "Served",
    "StreamLens",
    "Timeouts",
    "Verdict",
    "estimate_tokens",
    "usage_tokens",
]
