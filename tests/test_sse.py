"""The SSE parser: every way an upstream may cut its bytes into reads gives the same events,
whether a read holds exactly one event (the parser's short path) or any part of several."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from aiproxy.sse import SSEEvent, iter_sse

STREAM = (
    b": a comment line\n"
    b"data: {\"a\":1}\n\n"
    b"event: message_start\ndata: {\"b\":2}\n\n"
    b"data: first line\ndata: second line\n\n"
    b"data:no-space\n\n"
    b"data: {\"c\":3}\r\n\r\n"
    b"data: \n\n"
    b"id: 7\nretry: 100\ndata: {\"d\":4}\n\n"
    b"data: {\"e\":\"a\\r\"}\n\n"
    b"event: ping\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent(b'{"a":1}'),
    SSEEvent(b'{"b":2}', "message_start"),
    SSEEvent(b"first line\nsecond line"),
    SSEEvent(b"no-space"),
    SSEEvent(b'{"c":3}'),
    SSEEvent(b""),
    SSEEvent(b'{"d":4}'),
    SSEEvent(b'{"e":"a\\r"}'),
    SSEEvent(b"[DONE]"),
]


class Reads:
    """What iter_sse reads: a stream body as the given reads."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = reads

    async def iter_any(self) -> AsyncIterator[bytes]:
        for read in self.reads:
            yield read


async def parse(reads: list[bytes], **kwargs: int) -> list[SSEEvent]:
    return [event async for event in iter_sse(Reads(reads), **kwargs)]  # type: ignore[arg-type]


def events_of(stream: bytes) -> list[bytes]:
    """The stream cut after each blank line: one read an event (and its preceding fields)."""
    parts = stream.replace(b"\r\n", b"\n").split(b"\n\n")
    return [part + b"\n\n" for part in parts[:-1]]


async def test_one_read_an_event_gives_the_events():
    reads = [part.replace(b"\n", b"\r\n") if b"{\"c\":3}" in part else part
             for part in events_of(STREAM)]
    assert await parse(reads) == EXPECTED


@pytest.mark.parametrize("seed", range(40))
async def test_any_cut_of_the_reads_gives_the_same_events(seed):
    rng = random.Random(seed)
    reads, at = [], 0
    while at < len(STREAM):
        size = rng.choice((1, 2, 3, 7, 16, 40, 200))
        reads.append(STREAM[at:at + size])
        at += size
    assert await parse(reads) == EXPECTED


async def test_a_field_before_a_one_event_read_still_names_it():
    # "event:" in one read, its data line and blank line in the next: the next read looks
    # like one whole event, and must still carry the name.
    assert await parse([b"event: delta\n", b"data: {}\n\n"]) == [SSEEvent(b"{}", "delta")]


async def test_a_carriage_return_ending_the_data_line_is_not_data():
    assert await parse([b"data: x\r\n\n"]) == [SSEEvent(b"x")]


async def test_a_one_event_read_over_the_bound_is_refused():
    with pytest.raises(ValueError, match="larger than"):
        await parse([b"data: " + b"x" * 100 + b"\n\n"], max_event=64)
    assert await parse([b"data: " + b"x" * 50 + b"\n\n"], max_event=64) == [
        SSEEvent(b"x" * 50)]


async def test_a_last_event_without_its_blank_line_is_kept():
    assert await parse([b"data: {\"a\":1}\n\n", b"data: tail"]) == [
        SSEEvent(b'{"a":1}'), SSEEvent(b"tail")]
