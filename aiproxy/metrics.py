"""Prometheus metrics, one registry per application.

With ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``: every worker writes its
samples there and ``/metrics`` (answered by whichever worker the scrape reaches) adds them up.
"""

from __future__ import annotations

import os
from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

M = TypeVar("M", Counter, Gauge, Histogram)

# Seconds: LLM calls range from milliseconds (cached, mock) to minutes (long generations).
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The proxy's own overhead: well under a millisecond when healthy.
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

_BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class _Cached(Generic[M]):
    """A labelled metric whose children are looked up once: prometheus_client's ``labels``
    validates and locks on every call, and the hot path calls it several times a request."""

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def labels(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class Metrics:
    """Everything the proxy counts. Label values are model and provider names from the config
    and route names from the code: never anything a client chose."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        registry = None if self.multiprocess else CollectorRegistry()
        self.registry = registry
        self.requests = _Cached(Counter(
            "aiproxy_requests_total", "Requests answered, by route, model, provider and status.",
            ["route", "model", "provider", "status"], registry=registry))
        self.duration = _Cached(Histogram(
            "aiproxy_request_duration_seconds", "Time to answer a request, start to end.",
            ["route"], buckets=_LATENCY, registry=registry))
        self.upstream = _Cached(Histogram(
            "aiproxy_upstream_duration_seconds",
            "Time spent on upstream attempts (to the answer, or to the first chunk of a stream).",
            ["model", "provider"], buckets=_LATENCY, registry=registry))
        self.first_token = _Cached(Histogram(
            "aiproxy_time_to_first_token_seconds", "Streams: time to the first upstream chunk.",
            ["model"], buckets=_LATENCY, registry=registry))
        self.overhead = _Cached(Histogram(
            "aiproxy_overhead_seconds",
            "The proxy's own time per non-streaming request (total minus upstream).",
            ["route"], buckets=_OVERHEAD, registry=registry))
        self.tokens = _Cached(Counter(
            "aiproxy_tokens_total", "Tokens reported by upstreams, by model and direction.",
            ["model", "direction"], registry=registry))
        self.limited = _Cached(Counter(
            "aiproxy_rate_limited_total",
            "Candidates skipped because their rate limit (or an upstream park) refused them.",
            ["model"], registry=registry))
        self.upstream_errors = _Cached(Counter(
            "aiproxy_upstream_errors_total", "Failed upstream attempts, by model and kind.",
            ["model", "kind"], registry=registry))
        self.retries = Counter(
            "aiproxy_retries_total", "Extra rounds over the candidates after retryable failures.",
            registry=registry)
        self.fallbacks = Counter(
            "aiproxy_fallbacks_total",
            "Requests answered by another candidate than the first planned.", registry=registry)
        self.breaker = _Cached(Gauge(
            "aiproxy_circuit_breaker_state", "Per model: 0 closed, 1 half-open, 2 open.",
            ["model"], registry=registry, multiprocess_mode="liveall"))
        self.streams = Gauge(
            "aiproxy_streams_in_flight", "Streams being relayed now.", registry=registry,
            multiprocess_mode="livesum")
        self.stream_errors = _Cached(Counter(
            "aiproxy_stream_errors_total", "Streams ended with an error event, by model and kind.",
            ["model", "kind"], registry=registry))
        self._breaker_seen: dict[str, str] = {}

    def breaker_state(self, model: str, state: str) -> None:
        if self._breaker_seen.get(model) != state:
            self._breaker_seen[model] = state
            self.breaker.labels(model).set(_BREAKER_VALUES[state])

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        assert self.registry is not None
        return bytes(generate_latest(self.registry))
