"""How the SSE relay writes to the client (``aiproxy/http/relay.py``): a chunk goes out the
moment it is parsed; the rest of a burst parsed from one upstream read leaves in one write
once the relay waits; order, backpressure and a client gone are kept."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from aiproxy.http.relay import _Coalescer, relay
from aiproxy.http.state import start_stream
from aiproxy.routing import ClientGone
from tests.conftest import TOKEN, openai_model


class Response:
    """Stands in for aiohttp's StreamResponse: records each write; can be made slow or lost."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.gate: asyncio.Future[None] | None = None  # set: the next write waits on it
        self.fail: Exception | None = None
        self.ended = False

    async def write(self, data: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        if self.gate is not None:
            await self.gate
        self.writes.append(data)

    async def write_eof(self, data: bytes = b"") -> None:
        await self.write(data)  # the last data and the end: one write
        self.ended = True


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def _coalescer() -> tuple[_Coalescer, Response]:
    response = Response()
    return _Coalescer(response), response  # type: ignore[arg-type]


async def test_a_paced_chunk_goes_out_before_the_relay_moves_on() -> None:
    out, response = _coalescer()
    await out.write(b"one")
    assert response.writes == [b"one"]  # written by the relay itself, not deferred
    await _turns()
    await out.write(b"two")
    assert response.writes == [b"one", b"two"]
    await out.finish(b"done")
    assert response.writes == [b"one", b"two", b"done"]  # the end goes with the last write
    assert response.ended


async def test_the_rest_of_a_burst_leaves_in_one_write_once_the_relay_waits() -> None:
    out, response = _coalescer()
    for event in (b"a", b"b", b"c", b"d"):  # one upstream read: no wait in between
        await out.write(event)
    assert response.writes == [b"a"]
    await _turns()  # the relay waits for the upstream: the writer task runs
    assert response.writes == [b"a", b"bcd"]
    await out.write(b"e")  # the next read's first event: at once again
    assert response.writes == [b"a", b"bcd", b"e"]
    await out.write(b"f")  # the rest of that read, then the stream's end: in the end's write
    await out.finish(b"done")
    assert response.writes == [b"a", b"bcd", b"e", b"fdone"]


async def test_a_slow_client_keeps_the_order_and_holds_the_relay_past_the_high_water() -> None:
    out, response = _coalescer()
    loop = asyncio.get_running_loop()
    response.gate = loop.create_future()
    first = loop.create_task(out.write(b"first"))  # blocks in the client's write
    await _turns()
    assert not first.done() and response.writes == []
    await out.write(b"second")  # behind a write still draining: queued, the relay goes on
    big = b"y" * (_Coalescer.HIGH_WATER + 1)
    third = loop.create_task(out.write(big))
    await _turns()
    assert not third.done()  # past the high water: the relay waits for the client
    gate, response.gate = response.gate, None
    gate.set_result(None)
    await asyncio.wait_for(asyncio.gather(first, third), 5)
    await out.finish(b"end")
    # One write at a time, in order: what queued behind the slow write left after it.
    assert response.writes == [b"first", b"second" + big, b"end"]


@pytest.mark.parametrize("burst", [False, True])
async def test_a_client_gone_ends_the_relay(burst: bool) -> None:
    out, response = _coalescer()
    if burst:
        await out.write(b"a")
        response.fail = ConnectionResetError()
        await out.write(b"b")  # queued behind the first: the writer task meets the error
        await _turns()
    else:
        response.fail = ConnectionResetError()
    with pytest.raises(ClientGone):
        await out.write(b"c")
    with pytest.raises(ClientGone):
        await out.finish(b"done")
    assert b"c" not in b"".join(response.writes)


# --- the answer's headers, end to end --------------------------------------------------------


def _chunk(**fields: Any) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up",
             **fields}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


FIRST = _chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                         "finish_reason": None}])
LAST = _chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
USAGE_ONLY = _chunk(choices=[], usage={"prompt_tokens": 3, "completion_tokens": 1,
                                       "total_tokens": 4})


async def _held_upstream(aiohttp_server: Any, first: bytes) -> tuple[str, asyncio.Event]:
    """An upstream that streams ``first``, then waits for the event before it ends."""
    go_on = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(first)
        await go_on.wait()
        await response.write(LAST + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    return str(server.make_url("/v1")), go_on


async def test_a_stream_s_first_read_holds_its_head_and_first_chunk(
        start_proxy: Any, aiohttp_server: Any) -> None:
    # Through the proxy, with the upstream holding the rest back: the client's first read has
    # the status line and the first event. (In one process the client cannot tell one socket
    # write from two; test_the_relay_makes_three_writes_of_a_two_chunk_stream counts them.)
    url, go_on = await _held_upstream(aiohttp_server, FIRST)
    proxy = await start_proxy({"models": [openai_model("m", url)]})
    body = orjson.dumps({"model": "m", "stream": True,
                         "messages": [{"role": "user", "content": "x"}]})
    reader, writer = await asyncio.open_connection(proxy.server.host, proxy.server.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
                 b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    first_read = await asyncio.wait_for(reader.read(65536), 10)
    assert first_read.startswith(b"HTTP/1.1 200 ")
    assert b'"content":"Hi"' in first_read
    go_on.set()
    rest = first_read
    while b"0\r\n\r\n" not in rest:
        rest += await asyncio.wait_for(reader.read(65536), 10)
    assert b"data: [DONE]" in rest
    writer.close()


async def test_a_first_chunk_that_gives_the_client_nothing_does_not_hold_the_headers(
        start_proxy: Any, aiohttp_server: Any) -> None:
    # The first chunk is the usage the client did not ask for: nothing of it is written, and
    # the next chunk is far off; the client has its answer's head meanwhile.
    url, go_on = await _held_upstream(aiohttp_server, USAGE_ONLY)
    proxy = await start_proxy({"models": [openai_model("m", url)]})
    request = proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                              json={"model": "m", "stream": True,
                                    "messages": [{"role": "user", "content": "x"}]})
    resp = await asyncio.wait_for(request.__aenter__(), 10)  # the upstream still waits
    assert resp.status == 200
    assert resp.headers["X-Request-ID"]
    go_on.set()
    text = (await resp.read()).decode()
    await request.__aexit__(None, None, None)
    assert '"finish_reason":"stop"' in text and text.endswith("data: [DONE]\n\n")
    assert '"usage"' not in text


def _recording(request: web.Request, writes: list[bytes]) -> None:
    """Record every socket write of ``request``'s answer, each as one bytes."""
    transport = request.transport
    assert transport is not None
    write = transport.write

    def recorded(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    transport.write = recorded  # type: ignore[method-assign]
    transport.writelines = lambda parts: recorded(b"".join(parts))  # type: ignore[method-assign]


Answer = Callable[[web.StreamResponse], Awaitable[None]]


async def _served(aiohttp_client: Any, answer: Answer) -> tuple[bytes, list[bytes]]:
    """What a client reads of a stream that ``answer`` writes after ``start_stream``, and the
    socket writes it took."""
    writes: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        _recording(request, writes)
        response = await start_stream(request, {"Content-Type": "text/event-stream"})
        await answer(response)
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    async with client.get("/") as resp:
        return await resp.read(), writes


async def test_start_stream_sends_the_headers_in_the_first_write(aiohttp_client: Any) -> None:
    async def answer(response: web.StreamResponse) -> None:
        await response.write(b"data: one\n\n")
        await asyncio.sleep(0.01)
        await response.write(b"data: two\n\n")
        await response.write_eof()

    body, writes = await _served(aiohttp_client, answer)
    assert body == b"data: one\n\ndata: two\n\n"
    assert writes[0].startswith(b"HTTP/1.1 200 ")  # the head and the first event: one write
    assert writes[0].endswith(b"\r\n\r\nb\r\ndata: one\n\n\r\n")
    assert len(writes) == 3  # then the second event, then the end


class _Chunks:
    """Stands in for a RoutedStream: two chunks a loop turn apart, then the end."""

    async def pump(self, emit: Any) -> None:
        await emit({"n": 1})
        await asyncio.sleep(0.01)
        await emit({"n": 2})

    def client_left(self) -> None:
        raise AssertionError("the client is here")


async def test_the_relay_makes_three_writes_of_a_two_chunk_stream(aiohttp_client: Any) -> None:
    async def answer(response: web.StreamResponse) -> None:
        await relay(response, _Chunks())  # type: ignore[arg-type]

    body, writes = await _served(aiohttp_client, answer)
    assert body == b'data: {"n":1}\n\ndata: {"n":2}\n\ndata: [DONE]\n\n'
    # The head with the first chunk, the second chunk, [DONE] with the answer's end.
    assert len(writes) == 3
    assert writes[0].startswith(b"HTTP/1.1 200 ") and writes[0].endswith(b'{"n":1}\n\n\r\n')
    assert writes[2] == b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
