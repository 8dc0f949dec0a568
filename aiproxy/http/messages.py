"""The Anthropic Messages API: ``POST /v1/messages`` (plain or streamed) and
``POST /v1/messages/count_tokens``, in Anthropic's wire format, errors included.

Errors are Anthropic's envelope ``{"type": "error", "error": {"type", "message"}}`` with the
matching status (https://docs.anthropic.com/en/api/errors), so the ``anthropic`` SDK raises its
typed exceptions; a stream that breaks after its first event ends with an ``error`` event, as
Anthropic's own do (https://docs.anthropic.com/en/api/messages-streaming#error-events).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from aiproxy.errors import ProxyError
from aiproxy.frontdoor.anthropic import (
    count_tokens,
    create_message,
    open_message_stream,
    parse_count_request,
    parse_messages_request,
)
from aiproxy.http.body import read_json
from aiproxy.http.chat import JSON_HEADERS, route_headers
from aiproxy.http.state import generation_of, start_stream, trace_of
from aiproxy.provider import ErrorKind, UpstreamError
from aiproxy.routing import ClientGone, RoutedStream

__all__ = ["PATHS", "add_routes", "envelope_for", "error_body", "error_response"]

#: The paths whose every answer, errors included, is in Anthropic's format.
PATHS = frozenset({"/v1/messages", "/messages", "/v1/messages/count_tokens",
                   "/messages/count_tokens"})
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-store",
               "X-Accel-Buffering": "no"}

# Anthropic's error type for each status the proxy answers.
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
          403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
          408: "timeout_error", 413: "request_too_large", 422: "invalid_request_error",
          429: "rate_limit_error", 500: "api_error", 502: "api_error",
          503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}
# The error event type that ends a broken stream, by the upstream failure's kind.
_EVENT_TYPES = {ErrorKind.OVERLOADED: "overloaded_error", ErrorKind.TIMEOUT: "timeout_error",
                ErrorKind.RATE_LIMITED: "rate_limit_error"}


def envelope_for(request: web.Request) -> Callable[[ProxyError], web.Response] | None:
    """How the gateway answers an error of ``request`` on a Messages path (authentication,
    unknown method, body too large, internal error): Anthropic's envelope; None elsewhere."""
    if request.path not in PATHS:
        return None
    request_id = trace_of(request).request_id
    return lambda exc: error_response(exc, request_id)


def error_body(type_: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": type_, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


def error_response(exc: ProxyError, request_id: str | None = None) -> web.Response:
    """A :class:`ProxyError` in Anthropic's envelope, with ``retry-after`` on a 429 (whole
    seconds, rounded up) and ``request-id`` (what the SDK reports as the error's request id)."""
    status = exc.status
    if status == 502 and exc.code == "overloaded_error":
        status = 529  # the last candidate was an overloaded Anthropic: its own status
    headers = {"Cache-Control": "no-store", **exc.headers}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(-(-exc.retry_after // 1))))
    if request_id:
        headers["request-id"] = request_id
    type_ = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return web.Response(status=status, body=orjson.dumps(error_body(
        type_, exc.message, request_id)), content_type="application/json", headers=headers)


def encode_event(event: dict[str, Any]) -> bytes:
    """One named server-sent event: ``event: <type>`` and its JSON."""
    return b"event: " + str(event.get("type") or "message").encode() + b"\ndata: " + \
        orjson.dumps(event) + b"\n\n"


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError:
        raise ClientGone from None


def _stream_error(err: UpstreamError) -> bytes:
    type_ = _EVENT_TYPES.get(err.kind, "api_error")
    return encode_event(error_body(type_, f"the stream was interrupted: {err.message}"))


async def relay_events(response: web.StreamResponse, stream: RoutedStream) -> None:
    """Write the stream's events as they arrive; an ``error`` event when the upstream broke
    it. A client gone mid-way ends the relay (the stream has settled itself either way)."""

    async def emit(event: dict[str, Any]) -> None:
        await _write(response, encode_event(event))

    try:
        err = await stream.pump(emit)
        if err is not None:
            await _write(response, _stream_error(err))
        await response.write_eof()
    except (ClientGone, ConnectionError):
        stream.client_left()


async def messages(request: web.Request) -> web.StreamResponse:
    body, raw = await read_json(request)
    message = parse_messages_request(body, raw, request.headers)
    trace = trace_of(request)
    trace.requested = message.model
    router = generation_of(request).router
    ids = {"request-id": trace.request_id} if trace.request_id else {}
    if not message.stream:
        served = await create_message(router, trace, trace.grant, message)
        return web.Response(body=orjson.dumps(served.result),
                            headers={**JSON_HEADERS, **route_headers(served), **ids})
    stream = trace.open_stream = await open_message_stream(router, trace, trace.grant, message)
    response = await start_stream(request, {**SSE_HEADERS, **route_headers(stream.served),
                                           **ids})
    await relay_events(response, stream)
    return response


async def count(request: web.Request) -> web.Response:
    body, raw = await read_json(request)
    message = parse_count_request(body, raw, request.headers)
    trace = trace_of(request)
    trace.requested = message.model
    answer, exact = await count_tokens(generation_of(request).router, trace, trace.grant,
                                       message)
    headers = {**JSON_HEADERS, "x-aiproxy-token-count": "exact" if exact else "estimate"}
    if trace.request_id:
        headers["request-id"] = trace.request_id
    return web.Response(body=orjson.dumps(answer), headers=headers)


def add_routes(app: web.Application) -> None:
    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/messages", messages)
        app.router.add_post(f"{prefix}/messages/count_tokens", count)
