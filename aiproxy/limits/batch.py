"""Coalesce the calls made in one event-loop iteration into one batch, sent as one unit.

A call joins the pending batch of its group and gets a future; the first call of an iteration
schedules the flush (``loop.call_soon``), so every call made before the loop next polls its
sockets goes out together. The batch runs in its own task: a caller that is cancelled while
waiting leaves the others (and the batch) alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

__all__ = ["Batches"]

G = TypeVar("G", bound=Hashable)
I = TypeVar("I")  # noqa: E741 - the item type, beside G and R
R = TypeVar("R")

# What a sender returns for each group it was given: one result per item, in order, or the
# exception that every item of that group fails with.
Outcome = Sequence[R] | BaseException
Sender = Callable[[list[tuple[G, list[I]]]], Awaitable[list[Outcome[R]]]]


class Batches(Generic[G, I, R]):
    """Pending calls by group; ``send`` gets every group of one iteration at once.

    ``orphan(group, item, result)`` is told of a result whose caller was cancelled after its
    call was sent (the backend has applied it; nobody will read it). A call whose caller was
    cancelled before the flush is dropped unsent.
    """

    def __init__(self, send: Sender[G, I, R], *,
                 orphan: Callable[[G, I, R], None] | None = None) -> None:
        self._send, self._orphan = send, orphan
        self._pending: dict[G, list[tuple[I, asyncio.Future[R]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches_sent = 0  # flushes that sent something (tests and diagnostics)

    def submit(self, group: G, item: I) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.setdefault(group, []).append((item, future))
        return future

    def _flush(self) -> None:
        batch = [(group, live) for group, calls in self._pending.items()
                 if (live := [(item, fut) for item, fut in calls if not fut.done()])]
        self._pending = {}
        if batch:
            self.batches_sent += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[G, list[tuple[I, asyncio.Future[R]]]]]) -> None:
        try:
            outcomes = await self._send([(group, [item for item, _ in calls])
                                         for group, calls in batch])
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
            outcomes = [exc] * len(batch)
        except BaseException:
            # The task itself was cancelled (the loop is going away): so are its callers.
            for _, calls in batch:
                for _, future in calls:
                    future.cancel()
            raise
        self._settle(batch, outcomes)

    def _settle(self, batch: list[tuple[G, list[tuple[I, asyncio.Future[R]]]]],
                outcomes: Sequence[Outcome[R]]) -> None:
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
        """Send what is pending now and wait for every batch in flight."""
        # A batch's settlement may queue more (the reconcile of an orphan): until quiet.
        while self._pending or self._tasks:
            if self._pending:
                self._flush()
            await asyncio.gather(*self._tasks, return_exceptions=True)
