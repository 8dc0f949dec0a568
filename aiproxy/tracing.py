"""OpenTelemetry traces (``pip install 'aiproxy[otel]'``, on when an OTLP endpoint is set).

An observer builds one span per request from its settled record: the request's start and
duration, the GenAI semantic conventions' attributes (operation, provider, requested and
answering model, tokens), the request id, and a child span per upstream attempt (its model,
provider, start, duration and outcome, from the record's attempt log; also an event each).
No prompt or answer text is ever attached: the record has none.
Conventions: https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiproxy import __version__
from aiproxy.config import Settings
from aiproxy.observability import get_logger
from aiproxy.record import Record

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["SpanWriter", "make_tracer", "operation_of"]

log = get_logger("aiproxy.tracing")

# Our plugin names as the conventions' gen_ai.provider.name values, where they differ.
_PROVIDERS = {"gemini": "gcp.gemini", "google": "gcp.gemini", "cloudflare": "cloudflare",
              "huggingface": "huggingface", "anthropic": "anthropic", "openai": "openai",
              "cohere": "cohere", "groq": "groq", "gigachat": "gigachat"}


def operation_of(route: str) -> str:
    """gen_ai.operation.name for a route."""
    if route.endswith("/embeddings"):
        return "embeddings"
    if route.endswith(("/images/generations", "/image")):
        return "generate_content"
    if route.endswith("/completions") and not route.endswith("/chat/completions"):
        return "text_completion"
    return "chat"


class SpanWriter:
    """The observer: one finished span per request, written through ``provider``."""

    def __init__(self, provider: TracerProvider,
                 cost: Callable[[Record], float | None] | None = None) -> None:
        from opentelemetry.trace import SpanKind, StatusCode, set_span_in_context

        self.provider = provider
        self._client = SpanKind.CLIENT
        self._in_context = set_span_in_context
        self.tracer = provider.get_tracer("aiproxy", __version__)
        self.cost = cost
        self._server = SpanKind.SERVER
        self._error = StatusCode.ERROR

    def observe(self, record: Record) -> None:
        if record.requested is None and record.model is None:
            return  # not a model call (/ping, /metrics, the dashboard, a 401)
        operation = operation_of(record.route)
        start = int(record.started * 1e9)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": record.requested or "",
            "http.request.method": record.method,
            "http.route": record.route,
            "http.response.status_code": record.status,
            "aiproxy.request_id": record.request_id,
            "aiproxy.stream": record.stream,
            "aiproxy.total_ms": record.total_ms,
        }
        if record.provider:
            name = _PROVIDERS.get(record.provider, record.provider)
            attributes["gen_ai.provider.name"] = name
            attributes["gen_ai.system"] = name  # the older name of the same attribute
        if record.model:
            attributes["gen_ai.response.model"] = record.model
        optional = (("gen_ai.usage.input_tokens", record.tokens_in),
                    ("gen_ai.usage.output_tokens", record.tokens_out),
                    ("gen_ai.usage.cache_read.input_tokens", record.tokens_cached),
                    ("gen_ai.usage.reasoning.output_tokens", record.tokens_reasoning),
                    ("aiproxy.key", record.key_name),
                    ("aiproxy.attempts", record.attempts),
                    ("aiproxy.upstream_ms", record.upstream_ms),
                    ("aiproxy.ttft_ms", record.ttft_ms),
                    ("gen_ai.response.time_to_first_chunk",
                     record.ttft_ms / 1000 if record.ttft_ms is not None else None),
                    ("aiproxy.hedges", record.hedges or None),
                    ("aiproxy.continuations", record.continuations or None))
        attributes.update({name: value for name, value in optional if value is not None})
        if record.tried:
            attributes["aiproxy.tried"] = list(record.tried)
        cost = record.cost_usd  # priced by the usage ledger, an observer before this one
        if cost is None and self.cost is not None:
            cost = self.cost(record)
        if cost is not None:
            attributes["aiproxy.cost_usd"] = cost
        failed = record.error_kind or record.stream_error
        if failed or record.status >= 400:
            attributes["error.type"] = failed or str(record.status)
        span = self.tracer.start_span(f"{operation} {record.requested or record.model}",
                                      kind=self._server, start_time=start,
                                      attributes=attributes)
        last = len(record.tried or ()) - 1
        for i, model in enumerate(record.tried or ()):
            answered = i == last and record.model == model and record.status < 400
            span.add_event("gen_ai.attempt", timestamp=start, attributes={
                "gen_ai.request.model": model, "aiproxy.attempt": i + 1,
                "aiproxy.outcome": "answered" if answered else "failed"})
        parent = self._in_context(span)
        end = start + int(record.total_ms * 1e6)
        for i, entry in enumerate(record.attempt_log):
            # Inside the request's span: attempts are placed by monotonic time from its start
            # (Record.clock); the bounds absorb the rounding of float seconds to nanoseconds.
            began = min(max(int(entry.started * 1e9), start), end)
            child = self.tracer.start_span(
                f"{operation} {entry.model}", context=parent, kind=self._client,
                start_time=began, attributes={
                    "gen_ai.operation.name": operation, "gen_ai.request.model": entry.model,
                    "gen_ai.provider.name": _PROVIDERS.get(entry.provider, entry.provider),
                    "aiproxy.attempt": i + 1, "aiproxy.outcome": entry.outcome})
            if entry.outcome not in ("answered", "cancelled"):
                child.set_attribute("error.type", entry.outcome)
                child.set_status(self._error, entry.outcome)
            child.end(end_time=min(began + int(entry.duration * 1e9), end))
        if record.status >= 500 or record.stream_error:
            span.set_status(self._error, failed or f"HTTP {record.status}")
        span.end(end_time=end)

    async def close(self, _: object = None) -> None:
        """Export what is batched (off the event loop: the exporter blocks)."""
        await asyncio.to_thread(self.provider.shutdown)


def make_tracer(settings: Settings,
                cost: Callable[[Record], float | None] | None = None) -> SpanWriter | None:
    """A :class:`SpanWriter` exporting over OTLP/HTTP when an endpoint is set, else None.
    ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_EXPORTER_OTLP_HEADERS``
    are read by the SDK, as everywhere."""
    if not settings.otel_endpoint:
        return None
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        log.error("tracing_unavailable", reason="OTEL_EXPORTER_OTLP_ENDPOINT is set but the "
                  "OpenTelemetry SDK is not installed (pip install 'aiproxy[otel]')")
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource: dict[str, str] = {"service.version": __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        resource["service.name"] = "aiproxy"  # what Resource.create would take over the env's
    provider = TracerProvider(resource=Resource.create(resource))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=settings.otel_endpoint)))
    return SpanWriter(provider, cost)
