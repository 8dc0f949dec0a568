"""A routed stream: the answer of one attempt, chunk by chunk, settled when it ends.

The router hands a :class:`RoutedStream` to the HTTP layer with its first chunk in hand. The
HTTP layer only writes what :meth:`RoutedStream.pump` gives it; the stream owns the idle and
total bounds between chunks, the usage it hides from a client that did not ask for it, and the
settlement (reservations, breaker verdict, tokens, the record), whichever way the stream ends:
complete, broken upstream, client gone, cancelled, or never pumped at all (:meth:`aclose`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiproxy.errors import sanitize
from aiproxy.observability import get_logger
from aiproxy.provider import MALFORMED_EVENT, ErrorKind, UpstreamError
from aiproxy.routing.breaker import Verdict
from aiproxy.routing.plan import Served

if TYPE_CHECKING:
    from aiproxy.routing.plan import Route
    from aiproxy.routing.router import Attempt, Exchange

__all__ = ["ChatChunks", "ClientGone", "RoutedStream", "StallSweeper", "StreamLens"]

log = get_logger("aiproxy.stream")


class ClientGone(Exception):
    """Writing to the client failed: it went away."""


Emit = Callable[[dict[str, Any]], Awaitable[None]]
Continuation = Callable[["Route", str], AsyncIterator[dict[str, Any]]]

# Malformed events dropped in one stream before it counts as broken.
MAX_MALFORMED = 3


async def _aclose(chunks: AsyncIterator[dict[str, Any]]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


class StreamLens(Protocol):
    """How a stream's chunks are read: what of each goes to the client, the usage they
    report, and how much text was relayed (for a settlement without reported usage)."""

    usage: Mapping[str, Any] | None  # OpenAI-shaped: prompt/completion/total_tokens
    relayed_chars: int

    def rewrite(self, chunk: dict[str, Any], model: str) -> bool:
        """Change ``chunk`` in place for the client; False: nothing of it is for the client."""


class ChatChunks:
    """The lens of OpenAI ``chat.completion.chunk`` streams."""

    __slots__ = ("_finished", "_identity", "_offset", "_text", "_tools", "model",
                 "relayed_chars", "usage", "wants_usage")

    def __init__(self, *, wants_usage: bool) -> None:
        self.wants_usage = wants_usage
        self.usage: Mapping[str, Any] | None = None
        self.relayed_chars = 0
        self.model: str | None = None  # the name the client sees, fixed by the first chunk
        self._text: list[str] = []
        self._tools = False
        self._finished = False
        self._identity: dict[str, Any] | None = None  # id and created of the first chunk
        self._offset: int | None = None  # tokens relayed before a continuation

    def rewrite(self, chunk: dict[str, Any], model: str) -> bool:
        """Name the model that answers; keep usage we asked for only for our own counting
        from a client that did not ask. After a continuation, the chunks keep the first
        one's id and model, the continuation's role delta is dropped and its usage made to
        add up (the relayed text counts as completion, not as its prompt)."""
        if self._identity is None:
            self._identity = {k: chunk[k] for k in ("id", "created") if k in chunk}
            self.model = model
        elif self._offset is not None:
            chunk.update(self._identity)
        chunk["model"] = self.model or model
        usage = chunk.get("usage")
        if usage:
            self.usage = usage = self._added_up(usage)
            chunk["usage"] = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                if self._offset is not None:
                    delta.pop("role", None)
                content = delta.get("content")
                if isinstance(content, str):
                    self.relayed_chars += len(content)
                    self._text.append(content)
                if delta.get("tool_calls"):
                    self._tools = True
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self._finished = True
        if not self.wants_usage and "usage" in chunk:
            del chunk["usage"]
            return bool(chunk.get("choices"))
        return True

    def continuable(self) -> str | None:
        if self._tools or self._finished or not self._text:
            return None
        return "".join(self._text)

    def continue_from(self, relayed_tokens: int) -> None:
        self._offset = relayed_tokens
        self.usage = None

    def _added_up(self, usage: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(usage)
        if self._offset is None:
            return out
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            out["prompt_tokens"] = max(0, prompt - self._offset)
            out["completion_tokens"] = completion + self._offset
            out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
        return out


class StallSweeper:
    """The stall and total bounds of every stream segment a router is relaying, kept by one
    loop timer for them all (armed for the soonest bound) instead of a timeout and a timer
    a stream: a chunk only records when it came (``RoutedStream.last``), and a sweep expires
    the segments past a bound and re-arms for the soonest of the others. A stream opening or
    ending costs a set insertion or removal, not a timer created and cancelled."""

    __slots__ = ("_handle", "_loop", "_segments", "_when")

    def __init__(self) -> None:
        self._segments: set[RoutedStream] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._when = math.inf

    def watch(self, stream: RoutedStream, loop: asyncio.AbstractEventLoop) -> None:
        self._segments.add(stream)
        due = stream.due()
        if due < self._when:  # sooner than the timer armed (or none is)
            if self._handle is not None:
                self._handle.cancel()
            self._loop, self._when = loop, due
            self._handle = loop.call_at(due, self._sweep)

    def unwatch(self, stream: RoutedStream) -> None:
        self._segments.discard(stream)

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        self._handle, self._when = None, math.inf
        now = loop.time()
        soonest = math.inf
        for stream in list(self._segments):
            due = stream.due()
            if due <= now:
                self._segments.discard(stream)
                stream.expire()
            elif due < soonest:
                soonest = due
        if soonest < math.inf:
            self._when = soonest
            self._handle = loop.call_at(soonest, self._sweep)


class RoutedStream:
    """One streamed answer. Iterate it only through :meth:`pump`."""

    def __init__(self, exchange: Exchange, attempt: Attempt, first: dict[str, Any],
                 chunks: AsyncIterator[dict[str, Any]], prompt_estimate: int,
                 lens: StreamLens, continue_with: Continuation | None = None) -> None:
        self._exchange = exchange
        self._continue_with = continue_with
        self.malformed = 0
        self.attempt = attempt
        self._first = first
        self._chunks = chunks
        self._prompt_estimate = prompt_estimate
        self.lens = lens
        self.chunks = 0  # chunks given to the client
        self._interrupted: str | None = None
        # The segment being relayed, for the router's StallSweeper: when its last chunk came,
        # its bounds, the task relaying it (None between segments), and whether the sweeper
        # (or an interruption) cancelled that task.
        self.last = 0.0
        self._idle = 0.0
        self._deadline = math.inf
        self._task: asyncio.Task[Any] | None = None
        self._expired = False

    @property
    def served(self) -> Served[None]:
        """Who answers, after how many attempts, under which limiter decision."""
        return Served(self.attempt.route, None, self._exchange.attempts, self.attempt.decision)

    async def pump(self, emit: Emit) -> UpstreamError | None:
        """Give every chunk to ``emit`` as it arrives; ``None`` when the answer is complete,
        the error when the upstream broke it and no candidate could continue it.
        :class:`ClientGone` from ``emit`` propagates. The stream is settled and the upstream
        closed when this returns or raises."""
        router = self._exchange.router
        router.metrics.streams.inc()
        router.streams.add(self)
        try:
            while True:
                err = await self._segment(emit)
                if err is None:
                    await self._end(Verdict.OK)
                    return None
                route = self.attempt.route
                sanitize(err, route.secrets)
                record = self._exchange.record
                router.metrics.stream_errors.labels(route.name, err.kind.value).inc()
                log.warning("stream_failed", model=route.name, kind=err.kind.value,
                            request_id=record.request_id)
                if self._interrupted is None and await self._continued(err):
                    continue
                record.stream_error = err.kind.value
                # An interruption by the proxy itself says nothing about the upstream.
                await self._end(Verdict.NEUTRAL if self._interrupted else Verdict.FAILED)
                return err
        except (ClientGone, asyncio.CancelledError):
            self._exchange.record.client_gone = True
            await self._end(Verdict.NEUTRAL)
            raise
        finally:
            router.metrics.streams.dec()
            router.streams.discard(self)

    def due(self) -> float:
        """When the segment being relayed passes a bound, as it stands now."""
        return min(self.last + self._idle, self._deadline)

    def expire(self) -> None:
        """End the segment being relayed now, as a bound passed (or an interruption). Called
        from outside the task relaying it (a timer, another request's task), never from it:
        a task that cancels itself is cancelled at its next wait, wherever that is."""
        if self._task is not None and not self._expired:
            self._expired = True
            self._task.cancel()

    async def _segment(self, emit: Emit) -> UpstreamError | None:
        """Relay the current upstream to its end: ``None``, or the error that broke it."""
        if self._interrupted is not None:  # between two segments (a continuation opening)
            return self._interruption()
        route, lens = self.attempt.route, self.lens
        idle, total = route.timeouts.idle, route.timeouts.stream_total
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        cancelling = task.cancelling()  # cancellations already pending: not the sweeper's
        now = loop.time()
        self._idle, self._deadline = idle, math.inf if total is None else now + total
        self.last, self._task, self._expired = now, task, False
        sweeper = self._exchange.router.sweeper
        sweeper.watch(self, loop)
        metrics = self._exchange.router.metrics
        chunk = self._first
        try:
            while True:
                if chunk is MALFORMED_EVENT:
                    self._malformed(route.name, metrics)
                elif lens.rewrite(chunk, route.name):
                    await emit(chunk)
                    self.chunks += 1
                self.last = loop.time()
                try:
                    chunk = await anext(self._chunks)
                except StopAsyncIteration:
                    return None
        except asyncio.CancelledError:
            if not self._expired or task.uncancel() > cancelling:
                raise  # cancelled from outside (the client left, shutdown)
            if self._interrupted is not None:
                return self._interruption()
            if loop.time() >= self._deadline:
                message = f"the upstream stream ran past its total bound of {total:.1f}s"
            else:
                message = f"the upstream stream stalled: no chunk within {idle:.1f}s"
            return UpstreamError(ErrorKind.TIMEOUT, message)
        except ClientGone:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure reaches the client as an event
            return exc if isinstance(exc, UpstreamError) else UpstreamError(
                ErrorKind.PROTOCOL, f"the provider failed ({type(exc).__name__})")
        finally:
            sweeper.unwatch(self)
            self._task = None

    def _interruption(self) -> UpstreamError:
        return UpstreamError(ErrorKind.OVERLOADED, f"{self._interrupted}: the answer is "
                             "incomplete", code="proxy_shutdown")

    def _malformed(self, model: str, metrics: Any) -> None:
        """An event the plugin could not parse: dropped, counted, logged; only repeated ones
        break the stream."""
        self.malformed += 1
        metrics.malformed.labels(model).inc()
        log.warning("malformed_event", model=model, count=self.malformed,
                    request_id=self._exchange.record.request_id)
        if self.malformed >= MAX_MALFORMED:
            raise UpstreamError(ErrorKind.PROTOCOL, f"the upstream sent {self.malformed} "
                                "malformed stream events")

    async def _continued(self, err: UpstreamError) -> bool:
        """Continue the answer on the next candidate that accepts a continuation, when text
        (and nothing else) has reached the client; True when the stream goes on there."""
        lens = self.lens
        if self._continue_with is None or not isinstance(lens, ChatChunks):
            return False
        text = lens.continuable()
        if text is None:
            return False
        broken = self.attempt
        await _aclose(self._chunks)
        found = await self._exchange.continue_stream(broken, text, self._continue_with)
        relayed = -(-len(text) // 4)
        await self._exchange.end_attempt(broken, Verdict.FAILED,
                                         self._prompt_estimate + relayed)
        if found is None:
            log.info("continuation_unavailable", model=broken.route.name,
                     request_id=self._exchange.record.request_id)
            return False
        self.attempt, self._first, self._chunks = found
        lens.continue_from(relayed)
        record = self._exchange.record
        record.continuations += 1
        self._exchange.router.metrics.continuations.labels(broken.route.name).inc()
        log.info("stream_continued", model=broken.route.name, to=self.attempt.route.name,
                 kind=err.kind.value, relayed_chars=len(text), request_id=record.request_id)
        return True

    def interrupt(self, reason: str) -> None:
        """End the stream now with an error event saying ``reason`` (shutdown's grace is
        over); the upstream is closed and the stream settled as usual."""
        self._interrupted = reason
        self.expire()

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
            await _aclose(self._chunks)
        finally:
            # Without reported usage, what was relayed is what was used (never the max_tokens
            # bound the estimate reserved): nothing relayed, nothing used.
            lens = self.lens
            used = (self._prompt_estimate + lens.relayed_chars // 4) if self.chunks else 0
            await self._exchange.settle(self.attempt, verdict, lens.usage, used)
