"""Coalesce calls into batches: those of one event-loop iteration, and those made while the
previous batch was in flight, go out as one unit.

A call joins the pending batch of its group and gets a future. The first call schedules the
flush (``loop.call_soon``), so every call made before the loop next polls its sockets goes
with it; while ``max_in_flight`` batches are out, calls keep gathering and leave as soon as
one comes back (under load that is what makes batches large: a round trip costs the process
the same for one call as for fifty). The batch runs in its own task: a caller cancelled while
waiting leaves the others, and the batch, alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

__all__ = ["Batches", "Outcome"]

G = TypeVar("G", bound=Hashable)
I = TypeVar("I")  # noqa: E741 - the item type, beside G and R
R = TypeVar("R")

# What a sender returns for each group it was given: one result per item, in order, or the
# exception that every item of that group fails with.
Outcome = Sequence[R] | BaseException
# The sender gets the groups and the loop time of the batch's first call (a deadline that
# counts the time spent waiting for the previous batch too).
Sender = Callable[[list[tuple[G, list[I]]], float], Awaitable[list[Outcome[R]]]]
_Calls = list[tuple[G, list[tuple[I, "asyncio.Future[R]"]]]]


class Batches(Generic[G, I, R]):
    """Pending calls by group; ``send`` gets every group of one batch at once.

    ``orphan(group, item, result)`` is told of a result whose caller was cancelled after its
    call was sent (the backend has applied it; nobody will read it). A call whose caller was
    cancelled before its batch left is dropped unsent.
    """

    def __init__(self, send: Sender[G, I, R], *,
                 orphan: Callable[[G, I, R], None] | None = None,
                 max_in_flight: int = 1) -> None:
        self._send, self._orphan = send, orphan
        self._max_in_flight = max_in_flight
        self._pending: dict[G, list[tuple[I, asyncio.Future[R]]]] = {}
        self._since = 0.0  # loop time of the first pending call
        self._scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches_sent = 0  # batches that left (tests and diagnostics)

    def submit(self, group: G, item: I) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._pending:
            self._since = loop.time()
            self._schedule(loop)
        self._pending.setdefault(group, []).append((item, future))
        return future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._in_flight >= self._max_in_flight:
            return  # drain() sent it already; the returning batch schedules the next
        batch = [(group, live) for group, calls in self._pending.items()
                 if (live := [(item, fut) for item, fut in calls if not fut.done()])]
        self._pending = {}
        if batch:
            self.batches_sent += 1
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch, self._since))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: _Calls[G, I, R], since: float) -> None:
        try:
            try:
                outcomes = await self._send([(group, [item for item, _ in calls])
                                             for group, calls in batch], since)
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
                outcomes = [exc] * len(batch)
            except BaseException:
                # The task itself was cancelled (the loop is going away): so are its callers.
                for _, calls in batch:
                    for _, future in calls:
                        future.cancel()
                raise
            self._settle(batch, outcomes)
        finally:
            self._in_flight -= 1
            if self._pending:  # what gathered meanwhile leaves now
                self._schedule(asyncio.get_running_loop())

    def _settle(self, batch: _Calls[G, I, R], outcomes: Sequence[Outcome[R]]) -> None:
        for (group, calls), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                for _, future in calls:
                    if not future.done():
                        future.set_exception(outcome)
                continue
            for (item, future), result in zip(calls, outcome, strict=True):
                if not future.done():
                    future.set_result(result)
                elif self._orphan is not None and future.cancelled():
                    self._orphan(group, item, result)

    async def drain(self) -> None:
        """Send what is pending and wait until no batch is in flight or pending."""
        # A batch's settlement may queue more (the reconcile of an orphan): until quiet.
        while self._pending or self._tasks:
            if self._pending and self._in_flight < self._max_in_flight:
                self._flush()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.sleep(0)  # a returning batch's follow-up flush is scheduled
