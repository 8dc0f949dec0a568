"""``deadline``: the time bound around every upstream attempt behaves as asyncio.timeout."""

from __future__ import annotations

import asyncio

import pytest

from aiproxy.routing.deadline import deadline


async def test_a_block_past_its_bound_raises_timeout() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        with deadline(0.05):
            await asyncio.sleep(5)
    assert loop.time() - started < 1
    await asyncio.sleep(0.01)  # the task carries no cancellation afterwards


async def test_a_block_within_its_bound_returns_and_leaves_no_timer() -> None:
    with deadline(0.2) as bound:
        await asyncio.sleep(0.01)
    assert bound._handle is None
    await asyncio.sleep(0.3)  # the timer was cancelled: nothing fires into later awaits


async def test_none_is_no_bound() -> None:
    with deadline(None):
        await asyncio.sleep(0.02)


async def test_a_cancellation_from_elsewhere_is_not_turned_into_a_timeout() -> None:
    async def bounded() -> None:
        with deadline(10):
            await asyncio.sleep(5)

    task = asyncio.create_task(bounded())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_at_the_same_moment_as_the_timeout_propagates() -> None:
    async def bounded() -> None:
        with deadline(0.02):
            await asyncio.sleep(5)

    task = asyncio.create_task(bounded())
    await asyncio.sleep(0.02)
    task.cancel()  # the timer fired or is about to: the outer cancellation must win
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_error_inside_the_block_passes_through() -> None:
    with pytest.raises(ValueError, match="inner"):
        with deadline(1):
            raise ValueError("inner")


def test_outside_a_task_it_refuses() -> None:
    with pytest.raises(RuntimeError), deadline(1):
        pass
