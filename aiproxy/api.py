"""The HTTP handlers: OpenAI wire format in, validated requests to the router, answers out."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web

from aiproxy.auth import grant_of
from aiproxy.errors import ProxyError
from aiproxy.keys import admit
from aiproxy.limits.base import Decision, Limits, RateLimiter, Reservation
from aiproxy.metrics import CONTENT_TYPE
from aiproxy.observability import get_logger
from aiproxy.provider import ChatRequest
from aiproxy.router import Route, Router, Served, estimate_tokens
from aiproxy.state import METRICS, RUNTIME, STARTED, trace_of
from aiproxy.streaming import relay

__all__ = ["JSON_HEADERS", "KeyAdmission", "add_routes", "note_route", "parse_chat_request",
           "read_json", "route_headers", "router_of"]

T = TypeVar("T")
JSON_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}
log = get_logger("aiproxy.api")


async def read_json(request: web.Request) -> tuple[dict[str, Any], bytes]:
    """The body as a JSON object and its bytes; 400 naming what is wrong, 413 when too large."""
    raw = await request.read()  # aiohttp enforces client_max_size here (413)
    if not raw:
        raise ProxyError(400, "request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProxyError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProxyError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body, raw


# Optional fields and the JSON types they must have (bool is not a number here).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "temperature": (int, float),
    "top_p": (int, float),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "n": (int,),
    "seed": (int,),
    "stop": (str, list),
    "tools": (list,),
    "tool_choice": (str, dict),
    "response_format": (dict,),
    "stream_options": (dict,),
    "user": (str,),
    "logit_bias": (dict,),
    "parallel_tool_calls": (bool,),
    "logprobs": (bool,),
    "top_logprobs": (int,),
}


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def router_of(request: web.Request) -> Router:
    """The router this request runs on: the one current when it arrived, even across a reload."""
    router: Router | None = trace_of(request).router
    if router is None:
        raise ProxyError(503, "the proxy is not ready", code="not_ready")
    return router


def parse_chat_request(body: dict[str, Any], raw: bytes) -> ChatRequest:
    """Validate an OpenAI chat completion request enough to route it and fail early."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ProxyError(400, "'model' is required and must be a non-empty string",
                         param="model", code="invalid_request")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ProxyError(400, "'messages' is required and must be a non-empty array",
                         param="messages", code="invalid_request")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ProxyError(400, f"'messages[{i}]' must be an object, got "
                             f"{_type_name(message)}", param=f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in (
                "system", "developer", "user", "assistant", "tool", "function"):
            raise ProxyError(400, f"'messages[{i}].role' must be one of system, developer, user, "
                             f"assistant, tool; got {role!r}", param=f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ProxyError(400, f"'messages[{i}].content' must be a string or an array, got "
                             f"{_type_name(content)}", param=f"messages[{i}].content")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise ProxyError(400, f"'stream' must be a boolean, got {_type_name(stream)}",
                         param="stream")
    for field in _FIELD_TYPES.keys() & body.keys():
        types = _FIELD_TYPES[field]
        value = body[field]
        if value is None:
            continue
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            wanted = " or ".join(_type_name(t()) for t in types)
            raise ProxyError(400, f"'{field}' must be {wanted}, got {_type_name(value)}",
                             param=field)
    return ChatRequest(body=body, raw=raw, stream=bool(stream))


def route_headers(served: Served[Any]) -> dict[str, str]:
    route: Route = served.route
    headers = {
        "x-aiproxy-model": route.name,
        "x-aiproxy-provider": route.model.provider,
        "x-aiproxy-attempts": str(served.attempts),
    }
    headers.update(_rate_headers(served.decision))
    return headers


def _rate_headers(decision: Decision) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        limit = getattr(decision, f"{kind}_limit")
        if limit is None:
            continue
        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(getattr(decision, f"{kind}_remaining"))
        reset = getattr(decision, f"{kind}_reset") or 0.0
        headers[f"x-ratelimit-reset-{kind}"] = f"{reset:.3f}s".replace(".000s", "s")
    return headers


def _usage_tokens(usage: Mapping[str, Any] | None) -> int | None:
    if not isinstance(usage, Mapping):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    return sum(p for p in parts if isinstance(p, int)) if any(
        isinstance(p, int) for p in parts) else None


def _count_tokens(request: web.Request, model: str, usage: Any) -> None:
    if not isinstance(usage, Mapping):
        return
    tokens = request.app[METRICS].tokens
    for key, direction in (("prompt_tokens", "in"), ("completion_tokens", "out")):
        value = usage.get(key)
        if isinstance(value, int) and value > 0:
            tokens.labels(model, direction).inc(value)


async def _settle(limiter: RateLimiter, reservation: Reservation | None, limits: Limits,
                  usage: Mapping[str, Any] | None, used_anything: bool) -> None:
    """Replace a token reservation by the reported usage (nothing used: give it back)."""
    if reservation is None:
        return
    tokens = _usage_tokens(usage)
    if tokens is None and used_anything:
        return  # no usage reported: the estimate stands
    await limiter.reconcile(reservation, limits, tokens or 0)


class KeyAdmission:
    """A client key's share of a request: permission, then its own limits, settled at the end."""

    def __init__(self, request: web.Request, name: str | None) -> None:
        """``name`` None: the request names no model (any image model)."""
        self.grant = grant_of(request)
        if self.grant is not None and name is not None:
            self.grant.check(name)
        self.reservation: Reservation | None = None

    @property
    def allowed(self) -> Callable[[Route], bool] | None:
        return None if self.grant is None or self.grant.everything else self.grant.allows

    @property
    def counts_tokens(self) -> bool:
        return self.grant is not None and bool(self.grant.limits.token_windows)

    async def admit(self, limiter: RateLimiter, estimate: int) -> None:
        self.reservation = await admit(limiter, self.grant, estimate)

    async def settle(self, limiter: RateLimiter, usage: Mapping[str, Any] | None,
                     used_anything: bool) -> None:
        if self.grant is not None:
            await _settle(limiter, self.reservation, self.grant.limits, usage, used_anything)

    async def guard(self, limiter: RateLimiter, call: Awaitable[T]) -> T:
        """Await the routed call; if it fails, the key's token reservation is given back."""
        try:
            return await call
        except BaseException:
            await self.settle(limiter, None, False)
            raise


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body, raw = await read_json(request)
    chat = parse_chat_request(body, raw)
    router = router_of(request)
    name = body["model"]
    trace_of(request).requested = name
    key = KeyAdmission(request, name)
    await key.admit(router.limiter, estimate_tokens(len(raw), body))
    started = time.monotonic()
    if not chat.stream:
        served = await key.guard(router.limiter,
                                 router.chat(chat, name, len(raw), key.allowed))
        note_route(request, served, started)
        data = served.result.data
        data["model"] = served.route.name
        usage = data.get("usage")
        _count_tokens(request, served.route.name, usage)
        await _settle(router.limiter, served.decision.reservation, served.route.limits, usage,
                      True)
        await key.settle(router.limiter, usage, True)
        return web.Response(body=orjson.dumps(data), headers={**JSON_HEADERS,
                                                              **route_headers(served)})
    streamed = await key.guard(router.limiter, router.open_stream(
        chat, name, len(raw), key.allowed, need_usage=key.counts_tokens))
    note_route(request, streamed, started)
    first, chunks = streamed.result
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-store",
        "X-Accel-Buffering": "no", **route_headers(streamed)})
    try:
        await response.prepare(request)
    except ConnectionError:
        await chunks.aclose()  # type: ignore[attr-defined]
        raise
    model_name = streamed.route.name

    wants_usage = chat.include_usage

    def rewrite(chunk: dict[str, Any]) -> bool:
        chunk["model"] = model_name
        if not wants_usage and "usage" in chunk:
            # Usage we asked for only to count tokens: not for a client that did not ask.
            del chunk["usage"]
            return bool(chunk.get("choices"))
        return True

    timeouts = streamed.route.timeouts
    metrics = request.app[METRICS]
    trace_of(request).stream = True
    metrics.streams.inc()
    try:
        outcome = await relay(response, first, chunks, idle=timeouts.idle,
                              total=timeouts.stream_total, rewrite=rewrite)
    finally:
        metrics.streams.dec()
    route = streamed.route
    _count_tokens(request, route.name, outcome.usage)
    await key.settle(router.limiter, outcome.usage, outcome.chunks > 0)
    if outcome.complete:
        route.breaker.success()
    elif outcome.error is not None:
        route.breaker.failure()
        trace_of(request).stream_error = outcome.error.kind.value
        metrics.stream_errors.labels(route.name, outcome.error.kind.value).inc()
        log.warning("stream_failed", model=route.name, kind=outcome.error.kind.value,
                    request_id=trace_of(request).request_id)
    else:
        route.breaker.release()
        trace_of(request).client_gone = True
    await _settle(router.limiter, streamed.decision.reservation, route.limits, outcome.usage,
                  outcome.chunks > 0)
    if not outcome.client_gone:
        await response.write_eof()
    return response


def note_route(request: web.Request, served: Served[Any], started: float) -> None:
    """What the access log line reports about the route taken."""
    trace_of(request).model = served.route.name
    trace_of(request).provider = served.route.model.provider
    trace_of(request).attempts = served.attempts
    trace_of(request).upstream_ms = round((time.monotonic() - started) * 1000, 2)


async def models(request: web.Request) -> web.Response:
    router = router_of(request)
    created = request.app[STARTED]
    grant = grant_of(request)
    visible = (lambda name: True) if grant is None or grant.everything else (
        grant.names.__contains__)
    data = []
    for model in router.config.models:
        if visible(model.name):
            data.append({"id": model.name, "object": "model", "created": created,
                         "owned_by": model.provider})
    data += [{"id": group, "object": "model", "created": created, "owned_by": "aiproxy"}
             for group in router.groups if group not in router.routes and visible(group)]
    return web.Response(body=orjson.dumps({"object": "list", "data": data}),
                        headers=JSON_HEADERS)


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; needs the proxy token or ``METRICS_TOKEN`` (see auth)."""
    registry = request.app[METRICS]
    router = request.app[RUNTIME].router
    if router is not None:
        for name, state in router.breaker_states().items():
            registry.breaker_state(name, state.value)
    return web.Response(body=registry.render(), headers={"Content-Type": CONTENT_TYPE,
                                                          "Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ping", ping)
    app.router.add_get("/metrics", metrics)
    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_get(f"{prefix}/models", models)
