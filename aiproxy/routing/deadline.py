"""``deadline``: what ``asyncio.timeout`` does for one block, at half its cost.

Every upstream attempt runs under a time bound, so its cost is paid on every request.
``asyncio.timeout`` is an async context manager (two coroutines a use) with a state machine
that also supports rescheduling; a bound that is set once needs neither. This one arms one
loop timer on entry and cancels it on exit; when it fires, the task is cancelled and the
block raises ``TimeoutError``, exactly as with ``asyncio.timeout``: a cancellation that comes
from elsewhere at the same moment is not swallowed (``Task.uncancel`` counts them).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["deadline"]


class deadline:
    """``with deadline(seconds):`` inside a task; ``None`` means no bound."""

    __slots__ = ("_cancelling", "_delay", "_fired", "_handle", "_task")

    def __init__(self, delay: float | None) -> None:
        self._delay = delay
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False

    def __enter__(self) -> deadline:
        if self._delay is not None:
            # One loop lookup (on Python 3.11 each costs a getpid() system call).
            loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
            if task is None:
                raise RuntimeError("deadline() must be used inside a task")
            self._task = task
            self._cancelling = task.cancelling()  # cancellations already pending: not ours
            self._handle = loop.call_later(self._delay, self._fire)
        return self

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fired and self._task.uncancel() <= self._cancelling \
                and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
