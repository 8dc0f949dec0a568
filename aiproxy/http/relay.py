"""Write a routed stream to the client as SSE.

Headers have gone out by the time this runs, so a failure can no longer change the status:
it ends the stream with an OpenAI-style ``data: {"error": ...}`` event and no ``[DONE]``, so the
client knows the answer is incomplete.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiohttp import web

from aiproxy.errors import error_body
from aiproxy.provider import ErrorKind
from aiproxy.routing import ClientGone, RoutedStream

__all__ = ["DONE", "encode_chunk", "relay"]

DONE = b"data: [DONE]\n\n"


def encode_chunk(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


class _Coalescer:
    """Write-through, then write-behind: the first event the relay produces goes out at once;
    the events produced after it before the relay next waits for the upstream (the rest of a
    burst parsed from one upstream read) leave together in one socket write, made by a task
    of their own once the relay waits. A paced stream (one event a read, as models emit
    tokens) gets each chunk out the moment it is parsed, never behind the other streams'
    work of that loop iteration; it never needs the writer task, which is started only
    when a burst first leaves events behind."""

    HIGH_WATER = 64 * 1024  # past this much unwritten, the relay waits (client backpressure)

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self.parts: list[bytes] = []
        self.size = 0
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.gone = False
        # An event went out at once and the relay has not yielded since: what it produces
        # now is the rest of a burst (one upstream read), for the writer task.
        self.burst = False
        self._loop = asyncio.get_running_loop()
        self.task: asyncio.Task[None] | None = None

    def _wake_writer(self) -> None:
        if self.task is None:
            self.task = self._loop.create_task(self._run())
        self.wake.set()

    async def _run(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.parts:
                    await self.idle.wait()  # a write-through still draining goes first
                    data = b"".join(self.parts)
                    self.parts.clear()
                    self.size = 0
                    self.idle.clear()
                    await self.response.write(data)  # drains when the client is slow
                    self.idle.set()
        except Exception:  # noqa: BLE001 - any failed write means this client is lost
            self.gone = True
            self.idle.set()

    def _burst_over(self) -> None:
        """Called soon after a write-through, so once the relay has yielded: the events it
        queued meanwhile (the rest of the burst) go to the writer task in one write."""
        self.burst = False
        if self.parts:
            self._wake_writer()

    async def write(self, data: bytes) -> None:
        if self.gone:
            raise ClientGone
        if not self.burst and not self.parts and self.idle.is_set():
            self.burst = True
            self._loop.call_soon(self._burst_over)  # a callback: no task step a chunk
            self.idle.clear()
            try:
                await self.response.write(data)
            except Exception:  # noqa: BLE001 - as in _run: this client is lost
                self.gone = True
                raise ClientGone from None
            finally:
                self.idle.set()
            return
        self.parts.append(data)
        self.size += len(data)
        if not self.burst:
            self._wake_writer()  # behind a write still draining: the writer takes it after
        if self.size > self.HIGH_WATER:
            await self.idle.wait()  # let the writer catch up before reading more upstream
            if self.gone:
                raise ClientGone

    async def finish(self, last: bytes) -> None:
        """Write what is queued and ``last``, and end the answer: one socket write."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.gone:
            raise ClientGone
        self.parts.append(last)
        data = b"".join(self.parts)
        self.parts.clear()
        try:
            await self.response.write_eof(data)
        except ConnectionError:
            raise ClientGone from None


async def relay(response: web.StreamResponse, stream: RoutedStream) -> None:
    """Write the stream's chunks as SSE as they arrive, then ``[DONE]``, or the error event
    when the upstream broke it; a client gone mid-way just ends the relay (the stream has
    settled itself either way)."""
    out = _Coalescer(response)

    async def emit(chunk: dict[str, Any]) -> None:
        await out.write(encode_chunk(chunk))

    try:
        err = await stream.pump(emit)
        if err is None:
            await out.finish(DONE)
        else:
            body = error_body(f"the stream was interrupted: {err.message}", "upstream_error",
                              err.code or ("upstream_timeout" if err.kind is ErrorKind.TIMEOUT
                                           else "stream_interrupted"))
            await out.finish(b"data: " + orjson.dumps(body) + b"\n\n")
    except (ClientGone, ConnectionError):
        stream.client_left()
    finally:
        if out.task is not None:
            out.task.cancel()
