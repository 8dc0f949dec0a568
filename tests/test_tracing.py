"""Traces: one span per request from its settled record, GenAI attributes, one event per
upstream attempt, no prompt text; exported over OTLP/HTTP when an endpoint is set."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aiproxy.http.state import OBSERVERS
from aiproxy.tracing import SpanWriter, operation_of
from tests.conftest import make_settings, openai_model

PROMPT = "a secret prompt that never leaves"


@pytest.fixture
async def collector(aiohttp_server):
    """A fake OTLP/HTTP collector: the export requests it received."""
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    server = await aiohttp_server(app)
    return received, str(server.make_url("")).rstrip("/")


def test_operation_names():
    assert operation_of("/v1/chat/completions") == "chat"
    assert operation_of("/embeddings") == "embeddings"
    assert operation_of("/v1/images/generations") == "generate_content"
    assert operation_of("/v1/completions") == "text_completion"


def server_span(spans: Any) -> Any:
    (span,) = [s for s in spans if s.kind.name == "SERVER"]
    return span


def in_memory_spans(proxy: Any) -> InMemorySpanExporter:
    """The spans the proxy's span writer finishes, kept in memory as well."""
    writer = next(o.__self__ for o in proxy.app[OBSERVERS]
                  if isinstance(getattr(o, "__self__", None), SpanWriter))
    memory = InMemorySpanExporter()
    writer.provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


async def failing_over(start_proxy: Any, url: str, endpoint: str) -> tuple[Any, Any]:
    """A proxy whose group G tries openai/bad (a 500 from the fake) and then openai/gpt-4o,
    tracing to the collector at ``endpoint``, and its spans in memory."""
    proxy = await start_proxy(
        {"models": [openai_model("openai/bad", url, model_size="G", priority=0),
                    openai_model("openai/gpt-4o", url, model_size="G", priority=1)]},
        settings=make_settings(otel_endpoint=f"{endpoint}/v1/traces", retry_max_retries=0))
    return proxy, in_memory_spans(proxy)


async def test_a_span_per_request_with_a_child_per_attempt(start_proxy, fake_upstream,
                                                           collector):
    fake, url = fake_upstream
    fake.defaults["bad"] = "500"  # the upstream id: the name without "openai/"
    received, endpoint = collector
    proxy, memory = await failing_over(start_proxy, url, endpoint)
    before = time.time_ns()
    raw = await proxy.client.chat.completions.with_raw_response.create(
        model="G", messages=[{"role": "user", "content": PROMPT}])
    answer = raw.parse()
    assert answer.model == "openai/gpt-4o"
    async with proxy.http.get(proxy.url("/ping")):
        pass  # not a model call: no span
    spans = memory.get_finished_spans()
    span = server_span(spans)
    assert span.name == "chat G"
    attributes = dict(span.attributes)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.request.model"] == "G"
    assert attributes["gen_ai.response.model"] == "openai/gpt-4o"
    assert (attributes["gen_ai.usage.input_tokens"],
            attributes["gen_ai.usage.output_tokens"]) == (7, 5)
    assert attributes["aiproxy.request_id"] == raw.headers["x-request-id"]
    assert attributes["http.response.status_code"] == 200
    assert attributes["aiproxy.cost_usd"] == pytest.approx((7 * 2.5 + 5 * 10.0) / 1e6)
    # A 5xx gets one quick retry on the same model, then the next candidate answers.
    assert list(attributes["aiproxy.tried"]) == ["openai/bad", "openai/bad", "openai/gpt-4o"]
    assert [(e.name, e.attributes["gen_ai.request.model"], e.attributes["aiproxy.outcome"])
            for e in span.events] == [("gen_ai.attempt", "openai/bad", "failed"),
                                      ("gen_ai.attempt", "openai/bad", "failed"),
                                      ("gen_ai.attempt", "openai/gpt-4o", "answered")]
    assert before - 5_000_000 <= span.start_time <= span.end_time <= time.time_ns()
    assert PROMPT not in str(attributes) and PROMPT not in str(span.events)
    # A child span per upstream attempt, in order, inside the request's span, with its outcome.
    children = sorted((s for s in spans if s.kind.name == "CLIENT"), key=lambda s: s.start_time)
    assert [(c.name, c.attributes["aiproxy.outcome"]) for c in children] == [
        ("chat openai/bad", "overloaded"), ("chat openai/bad", "overloaded"),
        ("chat openai/gpt-4o", "answered")]
    for child in children:
        assert child.parent is not None and child.parent.span_id == span.context.span_id
        assert span.start_time <= child.start_time <= child.end_time <= span.end_time
    assert children[0].status.status_code.name == "ERROR"
    assert PROMPT not in str([dict(c.attributes) for c in children])
    # The same span went out over OTLP/HTTP when the app closed (the batch is flushed).
    await proxy.server.close()
    names = [s.name for message in received for rs in message.resource_spans
             for ss in rs.scope_spans for s in ss.spans]
    assert sorted(names) == sorted(["chat G", "chat openai/bad", "chat openai/bad",
                                    "chat openai/gpt-4o"])
    resource = {a.key: a.value.string_value
                for a in received[0].resource_spans[0].resource.attributes}
    assert resource["service.name"] == "aiproxy"


async def test_attempts_stay_inside_their_request_when_the_wall_clock_steps(
        start_proxy, fake_upstream, collector, monkeypatch):
    """The wall clock may be stepped or slewed while a request runs (NTP, a VM resumed):
    its attempts are placed by monotonic time from the request's start, so each stays inside
    the request's span, in order, as long as it took."""
    import types

    import aiproxy.routing.router as router_module

    fake, url = fake_upstream
    fake.defaults["bad"] = "500"
    _, endpoint = collector
    proxy, memory = await failing_over(start_proxy, url, endpoint)
    # From the router's point of view the wall clock has jumped five seconds ahead.
    stepped = types.SimpleNamespace(time=lambda: time.time() + 5.0, monotonic=time.monotonic)
    monkeypatch.setattr(router_module, "time", stepped)
    await proxy.client.chat.completions.create(model="G", messages=[{"role": "user",
                                                                     "content": "hi"}])
    spans = memory.get_finished_spans()
    span = server_span(spans)
    children = sorted((s for s in spans if s.kind.name == "CLIENT"), key=lambda s: s.start_time)
    assert len(children) == 3
    previous_end = span.start_time
    for child in children:
        assert previous_end <= child.start_time < child.end_time <= span.end_time
        previous_end = child.end_time
    assert span.end_time - span.start_time < 2_000_000_000


async def test_a_failed_request_is_an_error_span(start_proxy, fake_upstream, collector):
    fake, url = fake_upstream
    fake.defaults["down"] = "503"
    _, endpoint = collector
    proxy = await start_proxy({"models": [openai_model("down", url)]},
                              settings=make_settings(otel_endpoint=f"{endpoint}/v1/traces",
                                                     retry_max_retries=0))
    memory = in_memory_spans(proxy)
    async with proxy.http.post(proxy.url("/v1/embeddings"), headers=proxy.auth,
                               json={"model": "down", "input": "x"}) as resp:
        assert resp.status == 502
    span = server_span(memory.get_finished_spans())
    assert span.name == "embeddings down"
    assert span.status.status_code.name == "ERROR"
    assert span.attributes["error.type"] == "overloaded"


async def test_no_endpoint_no_tracer(start_proxy):
    proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]})
    assert not any(isinstance(getattr(o, "__self__", None), SpanWriter)
                   for o in proxy.app[OBSERVERS])
