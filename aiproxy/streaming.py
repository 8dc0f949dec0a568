"""Relay an upstream chunk stream to the client as SSE, with an idle bound between chunks.

Headers have gone out by the time this runs, so a failure can no longer change the status:
it ends the stream with an OpenAI-style ``data: {"error": ...}`` event and no ``[DONE]``, so the
client knows the answer is incomplete.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class _Coalescer:
    """Write-behind: the events produced while the relay runs without suspending (a burst
    parsed from one upstream read) leave in one socket write, made once the relay waits for
    the upstream. A paced stream still gets each chunk out in the same loop iteration."""

    HIGH_WATER = 64 * 1024  # past this much unwritten, the relay waits (client backpressure)

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self.parts: list[bytes] = []
        self.size = 0
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.gone = False
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.parts:
                    data = b"".join(self.parts)
                    self.parts.clear()
                    self.size = 0
                    self.idle.clear()
                    await self.response.write(data)  # drains when the client is slow
                    self.idle.set()
        except Exception:  # noqa: BLE001 - any failed write means this client is lost
            self.gone = True
            self.idle.set()

    async def write(self, data: bytes) -> None:
        if self.gone:
            raise _ClientGone
        self.parts.append(data)
        self.size += len(data)
        self.wake.set()
        if self.size > self.HIGH_WATER:
            await self.idle.wait()  # let the writer catch up before reading more upstream
            if self.gone:
                raise _ClientGone

    async def finish(self, last: bytes | None) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.gone:
            raise _ClientGone
        if last is not None:
            self.parts.append(last)
        if self.parts:
            data = b"".join(self.parts)
            self.parts.clear()
            await _write(self.response, data)


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
    out = _Coalescer(response)
    last = loop.time()
    handle: asyncio.TimerHandle | None = None

    def due() -> float:
        return last + idle if deadline is None else min(last + idle, deadline)

    try:
        try:
            # One watchdog timer per stream instead of one asyncio.timeout per chunk: a chunk
            # only records when it came; the timer re-arms itself lazily when it fires early.
            async with asyncio.timeout(None) as watchdog:

                def check() -> None:
                    nonlocal handle
                    if loop.time() >= due():
                        watchdog.reschedule(loop.time())  # expire now
                    else:
                        handle = loop.call_at(due(), check)

                handle = loop.call_at(due(), check)
                while True:
                    usage = chunk.get("usage")
                    if usage:
                        outcome.usage = usage
                    if rewrite(chunk):
                        await out.write(encode_chunk(chunk))
                        outcome.chunks += 1
                    last = loop.time()
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
        except TimeoutError:
            what = "stalled" if deadline is None or loop.time() < deadline else "ran too long"
            raise UpstreamError(ErrorKind.TIMEOUT, f"the upstream stream {what}: no chunk "
                                f"within {idle:.1f}s") from None
        finally:
            if handle is not None:
                handle.cancel()
        await out.finish(DONE)
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
            await out.finish(b"data: " + orjson.dumps(body) + b"\n\n")
        except _ClientGone:
            outcome.client_gone = True
    finally:
        out.task.cancel()
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    return outcome
