"""How the SSE relay writes to the client (``aiproxy/http/relay.py``): a chunk goes out the
moment it is parsed; the rest of a burst parsed from one upstream read leaves in one write
once the relay waits; order, backpressure and a client gone are kept."""

from __future__ import annotations

import asyncio

import pytest

from aiproxy.http.relay import _Coalescer
from aiproxy.routing import ClientGone


class Response:
    """Stands in for aiohttp's StreamResponse: records each write; can be made slow or lost."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.gate: asyncio.Future[None] | None = None  # set: the next write waits on it
        self.fail: Exception | None = None

    async def write(self, data: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        if self.gate is not None:
            await self.gate
        self.writes.append(data)


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
    assert response.writes == [b"one", b"two", b"done"]


async def test_the_rest_of_a_burst_leaves_in_one_write_once_the_relay_waits() -> None:
    out, response = _coalescer()
    for event in (b"a", b"b", b"c", b"d"):  # one upstream read: no wait in between
        await out.write(event)
    assert response.writes == [b"a"]
    await _turns()  # the relay waits for the upstream: the writer task runs
    assert response.writes == [b"a", b"bcd"]
    await out.write(b"e")  # the next read's first event: at once again
    assert response.writes == [b"a", b"bcd", b"e"]
    await out.finish(None)
    assert b"".join(response.writes) == b"abcde"


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

