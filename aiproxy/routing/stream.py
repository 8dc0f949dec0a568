"""A routed stream: the answer of one attempt, chunk by chunk, settled when it ends.

The router hands a :class:`RoutedStream` to the HTTP layer with its first chunk in hand. The
HTTP layer only writes what :meth:`RoutedStream.pump` gives it; the stream owns the idle and
total bounds between chunks, the usage it hides from a client that did not ask for it, and the
settlement (reservations, breaker verdict, tokens, the record), whichever way the stream ends:
complete, broken upstream, client gone, cancelled, or never pumped at all (:meth:`aclose`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiproxy.errors import sanitize
from aiproxy.observability import get_logger
from aiproxy.provider import ErrorKind, UpstreamError
from aiproxy.routing.breaker import Verdict
from aiproxy.routing.plan import Served

if TYPE_CHECKING:
    from aiproxy.routing.router import Attempt, Exchange

__all__ = ["ChatChunks", "ClientGone", "RoutedStream", "StreamLens"]

log = get_logger("aiproxy.stream")


class ClientGone(Exception):
    """Writing to the client failed: it went away."""


Emit = Callable[[dict[str, Any]], Awaitable[None]]


class StreamLens(Protocol):
    """How a stream's chunks are read: what of each goes to the client, the usage they
    report, and how much text was relayed (for a settlement without reported usage)."""

    usage: Mapping[str, Any] | None  # OpenAI-shaped: prompt/completion/total_tokens
    relayed_chars: int

    def rewrite(self, chunk: dict[str, Any], model: str) -> bool:
        """Change ``chunk`` in place for the client; False: nothing of it is for the client."""


class ChatChunks:
    """The lens of OpenAI ``chat.completion.chunk`` streams."""

    __slots__ = ("relayed_chars", "usage", "wants_usage")

    def __init__(self, *, wants_usage: bool) -> None:
        self.wants_usage = wants_usage
        self.usage: Mapping[str, Any] | None = None
        self.relayed_chars = 0

    def rewrite(self, chunk: dict[str, Any], model: str) -> bool:
        """Name the model that answers; keep usage we asked for only for our own counting
        from a client that did not ask."""
        chunk["model"] = model
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    self.relayed_chars += len(content)
        if not self.wants_usage and "usage" in chunk:
            del chunk["usage"]
            return bool(chunk.get("choices"))
        return True


class RoutedStream:
    """One streamed answer. Iterate it only through :meth:`pump`."""

    def __init__(self, exchange: Exchange, attempt: Attempt, first: dict[str, Any],
                 chunks: AsyncIterator[dict[str, Any]], prompt_estimate: int,
                 lens: StreamLens) -> None:
        self._exchange = exchange
        self.attempt = attempt
        self._first = first
        self._chunks = chunks
        self._prompt_estimate = prompt_estimate
        self.lens = lens
        self.chunks = 0  # chunks given to the client
        self._watchdog: asyncio.Timeout | None = None
        self._interrupted: str | None = None

    @property
    def served(self) -> Served[None]:
        """Who answers, after how many attempts, under which limiter decision."""
        return Served(self.attempt.route, None, self._exchange.attempts, self.attempt.decision)

    async def pump(self, emit: Emit) -> UpstreamError | None:
        """Give every chunk to ``emit`` as it arrives; ``None`` when the answer is complete,
        the error when the upstream broke it. :class:`ClientGone` from ``emit`` propagates.
        The stream is settled and the upstream closed when this returns or raises."""
        route, lens = self.attempt.route, self.lens
        idle, total = route.timeouts.idle, route.timeouts.stream_total
        loop = asyncio.get_running_loop()
        deadline = None if total is None else loop.time() + total
        last = loop.time()
        handle: asyncio.TimerHandle | None = None
        router = self._exchange.router
        metrics = router.metrics
        metrics.streams.inc()
        router.streams.add(self)
        chunk = self._first

        def due() -> float:
            return last + idle if deadline is None else min(last + idle, deadline)

        try:
            try:
                # One watchdog timer per stream instead of one asyncio.timeout per chunk: a
                # chunk only records when it came; the timer re-arms itself lazily.
                async with asyncio.timeout(None) as watchdog:
                    self._watchdog = watchdog

                    def check() -> None:
                        nonlocal handle
                        if loop.time() >= due():
                            watchdog.reschedule(loop.time())  # expire now
                        else:
                            handle = loop.call_at(due(), check)

                    handle = loop.call_at(due(), check)
                    while True:
                        if lens.rewrite(chunk, route.name):
                            await emit(chunk)
                            self.chunks += 1
                        last = loop.time()
                        try:
                            chunk = await anext(self._chunks)
                        except StopAsyncIteration:
                            break
            except TimeoutError:
                if self._interrupted is not None:
                    raise UpstreamError(ErrorKind.OVERLOADED, f"{self._interrupted}: the answer "
                                        "is incomplete", code="proxy_shutdown") from None
                if deadline is not None and loop.time() >= deadline:
                    message = f"the upstream stream ran past its total bound of {total:.1f}s"
                else:
                    message = f"the upstream stream stalled: no chunk within {idle:.1f}s"
                raise UpstreamError(ErrorKind.TIMEOUT, message) from None
            finally:
                if handle is not None:
                    handle.cancel()
        except (ClientGone, asyncio.CancelledError):
            self._exchange.record.client_gone = True
            await self._end(Verdict.NEUTRAL)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure reaches the client as an event
            err = exc if isinstance(exc, UpstreamError) else UpstreamError(
                ErrorKind.PROTOCOL, f"the provider failed ({type(exc).__name__})")
            sanitize(err, route.secrets)
            record = self._exchange.record
            record.stream_error = err.kind.value
            metrics.stream_errors.labels(route.name, err.kind.value).inc()
            log.warning("stream_failed", model=route.name, kind=err.kind.value,
                        request_id=record.request_id)
            # An interruption by the proxy itself says nothing about the upstream's health.
            await self._end(Verdict.NEUTRAL if self._interrupted else Verdict.FAILED)
            return err
        finally:
            metrics.streams.dec()
            router.streams.discard(self)
        await self._end(Verdict.OK)
        return None

    def interrupt(self, reason: str) -> None:
        """End the stream now with an error event saying ``reason`` (shutdown's grace is
        over); the upstream is closed and the stream settled as usual."""
        self._interrupted = reason
        if self._watchdog is not None:
            self._watchdog.reschedule(asyncio.get_running_loop().time())

    def client_left(self) -> None:
        """The client went away after the stream ended (it missed the last write)."""
        self._exchange.record.client_gone = True

    async def aclose(self) -> None:
        """End a stream that was never pumped to its end (the client left before the first
        write): settle it as abandoned. A no-op once settled."""
        if not self._exchange.settled:
            self._exchange.record.client_gone = True
            await self._end(Verdict.NEUTRAL)

    async def _end(self, verdict: Verdict) -> None:
        try:
            close = getattr(self._chunks, "aclose", None)
            if close is not None:
                await close()
        finally:
            # Without reported usage, what was relayed is what was used (never the max_tokens
            # bound the estimate reserved): nothing relayed, nothing used.
            lens = self.lens
            used = (self._prompt_estimate + lens.relayed_chars // 4) if self.chunks else 0
            await self._exchange.settle(self.attempt, verdict, lens.usage, used)
