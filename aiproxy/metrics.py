"""Prometheus metrics, one registry per application.

With ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``: every worker writes its
samples there and ``/metrics`` (answered by whichever worker the scrape reaches) adds them up.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

M = TypeVar("M", Counter, Gauge, Histogram)

# Seconds: LLM calls range from milliseconds (cached, mock) to minutes (long generations).
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The proxy's own overhead: well under a millisecond when healthy.
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

_BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class _Cached(Generic[M]):
    """A labelled prometheus_client metric whose children are looked up once (its ``labels``
    validates and locks on every call). Used in multiprocess mode only."""

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def labels(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class _Value:
    """A counter's or gauge's value: one event loop touches it, so no lock."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class _Buckets:
    """A histogram's counts per upper bound (``le``), its sum and count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family:
    """One metric of the in-process registry: plain Python numbers, rendered on a scrape.
    prometheus_client's own values take a lock per update, several times a request."""

    def __init__(self, kind: str, name: str, doc: str, labels: Sequence[str] = (),
                 buckets: tuple[float, ...] = ()) -> None:
        self.kind, self.name, self.doc, self.label_names = kind, name, doc, list(labels)
        self.buckets = buckets
        self.children: dict[tuple[str, ...], Any] = {}
        if not labels:
            self._default = self.labels()

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = (_Buckets(self.buckets) if self.kind == "histogram"
                                             else _Value())
        return child

    # Unlabelled metrics are used directly.
    def inc(self, amount: float = 1.0) -> None:
        self._default.inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._default.dec(amount)

    def collect(self) -> Metric:
        if self.kind == "histogram":
            family: Metric = HistogramMetricFamily(self.name, self.doc, labels=self.label_names)
            for values, child in self.children.items():
                running, buckets = 0, []
                for bound, count in zip((*self.buckets, math.inf), child.counts, strict=True):
                    running += count
                    buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
                family.add_metric(list(values), buckets, child.sum)  # type: ignore[attr-defined]
            return family
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = cls(self.name, self.doc, labels=self.label_names)
        for values, child in self.children.items():
            family.add_metric(list(values), child.value)
        return family


class _Registry(Collector):
    def __init__(self) -> None:
        self.families: list[_Family] = []

    def collect(self) -> Iterable[Metric]:
        return [family.collect() for family in self.families]


class Metrics:
    """Everything the proxy counts. Label values are model and provider names from the config
    and route names from the code: never anything a client chose."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._own = _Registry()
        self.registry = CollectorRegistry(auto_describe=False)
        if not self.multiprocess:
            self.registry.register(self._own)
        m = self._metric
        self.requests = m("counter", "aiproxy_requests_total",
                          "Requests answered, by route, model, provider and status.",
                          ["route", "model", "provider", "status"])
        self.duration = m("histogram", "aiproxy_request_duration_seconds",
                          "Time to answer a request, start to end.", ["route"], _LATENCY)
        self.upstream = m("histogram", "aiproxy_upstream_duration_seconds",
                          "Time spent on upstream attempts (to the answer, or to the first "
                          "chunk of a stream).", ["model", "provider"], _LATENCY)
        self.first_token = m("histogram", "aiproxy_time_to_first_token_seconds",
                             "Streams: time to the first upstream chunk.", ["model"], _LATENCY)
        self.overhead = m("histogram", "aiproxy_overhead_seconds",
                          "The proxy's own time per non-streaming request (total minus "
                          "upstream).", ["route"], _OVERHEAD)
        self.tokens = m("counter", "aiproxy_tokens_total",
                        "Tokens reported by upstreams, by model and direction.",
                        ["model", "direction"])
        self.limited = m("counter", "aiproxy_rate_limited_total",
                         "Candidates skipped because their rate limit (or an upstream park) "
                         "refused them.", ["model"])
        self.upstream_errors = m("counter", "aiproxy_upstream_errors_total",
                                 "Failed upstream attempts, by model and kind.", ["model", "kind"])
        self.retries = m("counter", "aiproxy_retries_total",
                         "Extra rounds over the candidates after retryable failures.")
        self.fallbacks = m("counter", "aiproxy_fallbacks_total",
                           "Requests answered by another candidate than the first planned.")
        self.breaker = m("gauge", "aiproxy_circuit_breaker_state",
                         "Per model: 0 closed, 1 half-open, 2 open.", ["model"], mode="liveall")
        self.streams = m("gauge", "aiproxy_streams_in_flight", "Streams being relayed now.",
                         mode="livesum")
        self.stream_errors = m("counter", "aiproxy_stream_errors_total",
                               "Streams ended with an error event, by model and kind.",
                               ["model", "kind"])
        self.hedges = m("counter", "aiproxy_hedges_total",
                        "Extra attempts started beside a slow first token or answer, by the "
                        "slow model.", ["model"])
        self.continuations = m("counter", "aiproxy_continuations_total",
                               "Broken streams continued on another model, by the model that "
                               "broke.", ["model"])
        self.malformed = m("counter", "aiproxy_malformed_events_total",
                           "Stream events that were not valid JSON, dropped, by model.",
                           ["model"])
        # The usage ledger (aiproxy/usage): spend, and the health of its database.
        self.cost = m("counter", "aiproxy_cost_usd_total",
                      "Spend in USD at the configured prices, by model and client key "
                      "(empty: AUTH_TOKEN).", ["model", "key"])
        self.usage_written = m("counter", "aiproxy_usage_records_written_total",
                               "Usage records written to the database.")
        self.usage_queued = m("gauge", "aiproxy_usage_records_queued",
                              "Usage records waiting for the database.", mode="livesum")
        self.usage_dropped = m("counter", "aiproxy_usage_records_dropped_total",
                               "Usage records lost: the buffer was full (USAGE_BUFFER) while "
                               "the database was away, or it was still away at shutdown.")
        self.usage_errors = m("counter", "aiproxy_usage_write_errors_total",
                              "Failed or timed-out operations on the usage database (writes "
                              "are retried, budget reads fall back to this process's view).",
                              ["operation"])
        # The Responses API's stored conversations (memory, Redis or the usage database).
        self.responses_store_errors = m(
            "counter", "aiproxy_responses_store_errors_total",
            "Stored-response operations that failed because the store was unreachable: "
            "store (the answer went out unstored), read and delete (answered 503).",
            ["operation"])
        self.budget_refusals = m("counter", "aiproxy_budget_refusals_total",
                                 "Requests refused (or candidates skipped) because a budget "
                                 "was spent, by the budget's subject.", ["subject"])
        self._breaker_seen: dict[str, str] = {}

    def _metric(self, kind: str, name: str, doc: str, labels: Sequence[str] = (),
                buckets: tuple[float, ...] = (), mode: str = "all") -> Any:
        """In one process, a plain-Python family; under --workers, a prometheus_client metric
        whose values live in the shared multiprocess directory."""
        if not self.multiprocess:
            family = _Family(kind, name, doc, labels, buckets)
            self._own.families.append(family)
            return family
        if kind == "histogram":
            metric: Any = Histogram(name, doc, labels, buckets=buckets, registry=None)
        elif kind == "gauge":
            metric = Gauge(name, doc, labels, registry=None,
                           multiprocess_mode=mode)  # type: ignore[arg-type]
        else:
            metric = Counter(name, doc, labels, registry=None)
        return _Cached(metric) if labels else metric

    def breaker_state(self, model: str, state: str) -> None:
        if self._breaker_seen.get(model) != state:
            self._breaker_seen[model] = state
            self.breaker.labels(model).set(_BREAKER_VALUES[state])

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))
