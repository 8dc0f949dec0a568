"""Chat completions and the model list: the OpenAI wire format in, one router call, out."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from aiproxy.errors import ProxyError
from aiproxy.http.body import parse_chat_request, read_json
from aiproxy.http.relay import relay
from aiproxy.http.state import STARTED, generation_of, start_stream, trace_of
from aiproxy.limits.base import Decision
from aiproxy.routing import Served

__all__ = ["JSON_HEADERS", "add_routes", "route_headers"]

JSON_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-store",
               "X-Accel-Buffering": "no"}


def route_headers(served: Served[Any]) -> dict[str, str]:
    """Which model answered, after how many attempts, and its ``x-ratelimit-*`` state."""
    route = served.route
    headers = {
        "x-aiproxy-model": route.name,
        "x-aiproxy-provider": route.model.provider,
        "x-aiproxy-attempts": str(served.attempts),
    }
    decision = served.decision
    if decision.requests_limit is not None or decision.tokens_limit is not None:
        headers.update(_rate_headers(decision))  # the model has limits to report
    return headers


def _rate_headers(decision: Decision) -> dict[str, str]:
    headers: dict[str, str] = {}
    if decision.requests_limit is not None:
        headers["x-ratelimit-limit-requests"] = str(decision.requests_limit)
        headers["x-ratelimit-remaining-requests"] = str(decision.requests_remaining)
        headers["x-ratelimit-reset-requests"] = _reset(decision.requests_reset)
    if decision.tokens_limit is not None:
        headers["x-ratelimit-limit-tokens"] = str(decision.tokens_limit)
        headers["x-ratelimit-remaining-tokens"] = str(decision.tokens_remaining)
        headers["x-ratelimit-reset-tokens"] = _reset(decision.tokens_reset)
    return headers


def _reset(seconds: float | None) -> str:
    """A reset in seconds to the millisecond, whole seconds without decimals (``20s``,
    ``1.500s``)."""
    return f"{seconds or 0.0:.3f}s".replace(".000s", "s")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body, raw = await read_json(request)
    chat = parse_chat_request(body, raw)
    trace = trace_of(request)
    trace.requested = body["model"]
    router = (trace.generation or generation_of(request)).router  # (503 before the first)
    if not chat.stream:
        served = await router.chat(trace, trace.grant, chat)
        data = served.result.data
        data["model"] = served.route.name
        headers = route_headers(served)
        headers.update(JSON_HEADERS)
        return web.Response(body=orjson.dumps(data), headers=headers)
    stream = trace.open_stream = await router.stream(trace, trace.grant, chat)
    response = await start_stream(request, {**SSE_HEADERS, **route_headers(stream.served)})
    await relay(response, stream)
    return response


def _visible_models(request: web.Request) -> list[dict[str, Any]]:
    """The configured models and groups the request's key may use, as OpenAI model objects."""
    generation = generation_of(request)
    router = generation.router
    created = request.app[STARTED]
    grant = trace_of(request).grant
    visible = (lambda name: True) if grant is None or grant.everything else (
        grant.names.__contains__)
    data = []
    for model in generation.config.models:
        if visible(model.name):
            data.append({"id": model.name, "object": "model", "created": created,
                         "owned_by": model.provider})
    data += [{"id": group, "object": "model", "created": created, "owned_by": "aiproxy"}
             for group in router.groups if group not in router.routes and visible(group)]
    return data


async def models(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps({"object": "list", "data": _visible_models(request)}),
                        headers=JSON_HEADERS)


async def model(request: web.Request) -> web.Response:
    """``GET /v1/models/{id}``: one model or group the key may see (ids may hold ``/``, sent
    as is or percent-encoded), else 404 as OpenAI answers it."""
    name = request.match_info["id"]
    for entry in _visible_models(request):
        if entry["id"] == name:
            return web.Response(body=orjson.dumps(entry), headers=JSON_HEADERS)
    raise ProxyError(404, f"The model {name!r} does not exist or you do not have access to it.",
                     code="model_not_found", param="model")


def add_routes(app: web.Application) -> None:
    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_get(f"{prefix}/models", models)
        app.router.add_get(f"{prefix}/models/{{id:.+}}", model)
