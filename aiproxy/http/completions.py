"""Legacy text completions, ``POST /v1/completions``: passed through to an upstream that
serves them (``options.completions_api``), translated through chat otherwise
(:mod:`aiproxy.frontdoor.completions`). One router call, as chat."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

import orjson
from aiohttp import web

from aiproxy.errors import ProxyError
from aiproxy.frontdoor.completions import (
    CompletionChunks,
    from_chat,
    parse_completion_request,
    to_chat,
    translate_stream,
)
from aiproxy.frontdoor.native import native_completions
from aiproxy.http.body import read_json
from aiproxy.http.chat import JSON_HEADERS, SSE_HEADERS, route_headers
from aiproxy.http.relay import relay
from aiproxy.http.state import generation_of, start_stream, trace_of
from aiproxy.provider import Capability, ChatResponse, ErrorKind, UpstreamError
from aiproxy.routing import Route, estimate_tokens

__all__ = ["add_routes"]

T = TypeVar("T")


async def _together(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Every call's result; the first failure cancels the others and is raised as it is."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def completions(request: web.Request) -> web.StreamResponse:
    body, raw = await read_json(request)
    req = parse_completion_request(body, raw)
    trace = trace_of(request)
    trace.requested = req.model
    router = generation_of(request).router
    native_only = req.native_only
    length = len(raw)
    if native_only:
        grant = trace.grant
        if grant is not None:
            grant.check(req.model)
        allowed = None if grant is None or grant.everything else grant.allows
        plan = router.planner.plan(req.model, length, Capability.CHAT, allowed)
        if not any(native_completions(r.provider) is not None for r in plan):
            raise ProxyError(400, f"{native_only} need an upstream that serves the completions "
                             f"API itself, and no candidate for {req.model!r} does (set "
                             "options.completions_api: true on an OpenAI-compatible model "
                             "that has it)", code="unsupported_parameter", param="prompt")
    outputs = req.max_tokens * req.n * len(req.prompts)
    estimate = estimate_tokens(length, {"max_tokens": outputs})

    def translated(route: Route) -> None:
        if native_only:
            # upstream_status 404: the router moves on to a candidate that may pass it through.
            raise UpstreamError(ErrorKind.BAD_REQUEST, f"{native_only} need an upstream that "
                                f"serves the completions API itself; {route.name!r} "
                                "translates to chat", upstream_status=404,
                                code="unsupported_parameter")

    if not req.stream:
        async def call(route: Route) -> dict[str, Any]:
            native = native_completions(route.provider)
            if native is not None:
                return await native.completions(body)
            translated(route)
            answers: list[ChatResponse] = await _together(
                [route.provider.chat(to_chat(req, str(p), stream=False)) for p in req.prompts])
            return from_chat(req, [a.data for a in answers], route.name)

        served = await router.serve(trace, trace.grant, req.model, Capability.CHAT, length,
                                    estimate, call, lambda data: data.get("usage"))
        data = served.result
        data["model"] = served.route.name
        return web.Response(body=orjson.dumps(data), headers={**JSON_HEADERS,
                                                              **route_headers(served)})

    def open_call(route: Route) -> AsyncIterator[dict[str, Any]]:
        native = native_completions(route.provider)
        if native is not None:
            # Usage always asked for (limits and the record count it); the lens keeps it
            # from a client that did not ask.
            options = {**(body.get("stream_options") or {}), "include_usage": True}
            return native.completions_stream({**body, "stream_options": options})
        translated(route)
        return translate_stream(req, route.provider.stream, route.name)

    stream = trace.open_stream = await router.open_stream(
        trace, trace.grant, req.model, Capability.CHAT, length, estimate, open_call,
        CompletionChunks(wants_usage=req.include_usage))
    response = await start_stream(request, {**SSE_HEADERS, **route_headers(stream.served)})
    await relay(response, stream)
    return response


def add_routes(app: web.Application) -> None:
    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/completions", completions)
