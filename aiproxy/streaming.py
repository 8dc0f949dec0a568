"""Relay an upstream chunk stream to the client as SSE, with an idle bound between chunks.

Headers have gone out by the time this runs, so a failure can no longer change the status:
it ends the stream with an OpenAI-style ``data: {"error": ...}`` event and no ``[DONE]``, so the
client knows the answer is incomplete.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import orjson
from aiohttp import web

from aiproxy.errors import error_body
from aiproxy.provider import ErrorKind, UpstreamError

__all__ = ["DONE", "RelayOutcome", "encode_chunk", "relay"]

DONE = b"data: [DONE]\n\n"


def encode_chunk(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


@attrs.define
class RelayOutcome:
    """How a relay ended: ``complete``, or the error sent, or the client gone."""

    complete: bool = False
    error: UpstreamError | None = None
    client_gone: bool = False
    usage: dict[str, Any] | None = None
    chunks: int = 0


class _ClientGone(Exception):
    """Writing to the client failed: it went away."""


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError:
        raise _ClientGone from None


async def relay(
    response: web.StreamResponse,
    first: dict[str, Any],
    chunks: AsyncIterator[dict[str, Any]],
    *,
    idle: float,
    total: float | None,
    rewrite: Callable[[dict[str, Any]], bool],
) -> RelayOutcome:
    """Write ``first`` and every later chunk as it arrives; always closes ``chunks``.

    ``rewrite`` may change a chunk in place; it returns False for a chunk not to send.
    """
    outcome = RelayOutcome()
    loop = asyncio.get_running_loop()
    deadline = None if total is None else loop.time() + total
    chunk = first
    try:
        while True:
            usage = chunk.get("usage")
            if usage:
                outcome.usage = usage
            if rewrite(chunk):
                await _write(response, encode_chunk(chunk))
                outcome.chunks += 1
            bound = idle if deadline is None else min(idle, deadline - loop.time())
            try:
                async with asyncio.timeout(max(bound, 0.0)):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                what = "stalled" if deadline is None or loop.time() < deadline else "ran too long"
                raise UpstreamError(ErrorKind.TIMEOUT, f"the upstream stream {what}: no chunk "
                                    f"within {bound:.1f}s") from None
        await _write(response, DONE)
        outcome.complete = True
    except _ClientGone:
        outcome.client_gone = True
    except Exception as exc:  # noqa: BLE001 - any failure must reach the client as an event
        err = exc if isinstance(exc, UpstreamError) else UpstreamError(
            ErrorKind.PROTOCOL, f"the provider failed ({type(exc).__name__})")
        outcome.error = err
        body = error_body(f"the stream was interrupted: {err.message}", "upstream_error",
                          err.code or ("upstream_timeout" if err.kind is ErrorKind.TIMEOUT
                                       else "stream_interrupted"))
        try:
            await _write(response, b"data: " + orjson.dumps(body) + b"\n\n")
        except _ClientGone:
            outcome.client_gone = True
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    return outcome
