"""Streamed answers: the upstream's events in, OpenAI ``chat.completion.chunk`` objects out.

:class:`StreamAssembler` owns what every translated stream must get right: one ``id``,
``created`` and ``model`` for all chunks; an opening ``role`` chunk per choice before anything
else; tool-call indexes (whole calls and argument fragments); one ``finish_reason`` per choice;
the usage chunk last, only for a client that asked; and the end: reading the upstream's events,
raising ``PROTOCOL`` for a stream cut or ended early, and releasing the connection either way.
Chunk shape: https://platform.openai.com/docs/api-reference/chat-streaming/streaming
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, Literal

import aiohttp
import attrs
import orjson

from aiproxy.kit.answers import completion_id, tool_call_id
from aiproxy.kit.errors import protocol_error
from aiproxy.sse import SSEEvent, iter_sse
from aiproxy.upstream import UpstreamResponse

__all__ = ["Event", "StreamAssembler", "StreamChunks", "end_response"]


def _now() -> int:
    return int(time.time())


@attrs.frozen
class StreamChunks:
    """Builds the ``chat.completion.chunk`` objects of one streamed answer, all with the same
    ``id``, ``created`` and ``model``. :class:`StreamAssembler` uses it; a plugin whose upstream
    already streams OpenAI's chunks needs only this.

    ``logprobs=True`` adds ``"logprobs": None`` to every choice, as OpenAI's own chunks have it.
    """

    model: str
    id: str = attrs.field(factory=completion_id)
    created: int = attrs.field(factory=_now)
    logprobs: bool = False

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, *,
              index: int = 0) -> dict[str, Any]:
        """A chunk of one choice: ``delta`` (``{}`` beside the ``finish_reason``)."""
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason}
        if self.logprobs:
            choice["logprobs"] = None
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [choice]}

    def role(self, index: int = 0) -> dict[str, Any]:
        """The opening chunk of a choice: ``{"role": "assistant", "content": ""}``."""
        return self.chunk({"role": "assistant", "content": ""}, index=index)

    def usage(self, usage: Mapping[str, Any]) -> dict[str, Any]:
        """The usage chunk (``choices: []``): last, and only if ``request.include_usage``."""
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": usage}

    def end(self, finish_reason: str, usage: Mapping[str, Any] | None, *,
            include_usage: bool, role_sent: bool = True) -> list[dict[str, Any]]:
        """The chunks that close a one-choice answer: the opening chunk if none went out yet
        (``role_sent`` false), the ``finish_reason`` chunk, then the usage chunk if the client
        asked for it (``include_usage``) and ``usage`` is known."""
        out = [] if role_sent else [self.role()]
        out.append(self.chunk({}, finish_reason))
        if include_usage and usage is not None:
            out.append(self.usage(usage))
        return out


#: One NDJSON line may not grow past this: an upstream that never sends a newline must not eat
#: memory (SSE events have aiproxy.sse's own bound).
MAX_LINE_BYTES = 16 * 1024 * 1024


async def _ndjson(content: aiohttp.StreamReader) -> AsyncGenerator[SSEEvent, None]:
    """Each non-empty line of an NDJSON body as soon as it has arrived, as an event's data.

    aiohttp's ``readline()`` refuses lines longer than its buffer, so raw chunks are split here,
    as :func:`aiproxy.sse.iter_sse` does for SSE.
    """
    buffer = b""
    async for piece in content.iter_any():
        *lines, buffer = (buffer + piece).split(b"\n")
        if len(buffer) > MAX_LINE_BYTES:
            raise ValueError("an NDJSON line longer than 16 MiB")
        for line in lines:
            if line.strip():
                yield SSEEvent(line)
    if buffer.strip():
        yield SSEEvent(buffer)


def end_response(resp: UpstreamResponse, *, complete: bool) -> None:
    """Let go of a streamed upstream response: call it in the ``finally`` around reading it.

    A ``complete`` body (read to its end) releases the connection to the pool for reuse; any
    other end (``aclose()``, an error, a cut) closes it, so the upstream stops generating and no
    half-read body goes back to the pool.
    """
    if complete:
        resp.release()
    else:
        resp.close()


@attrs.frozen
class Event:
    """One server-sent event of the upstream's stream: its JSON object and its ``event:`` name."""

    data: dict[str, Any]
    name: str | None = None


class _Reading(contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]):
    """What :meth:`StreamAssembler.read` returns. A class, not a generator-based context
    manager: a stream dropped without ``aclose()`` is finalised by the event loop, which closes
    every async generator on its own, and one more generator around the events would be closed
    twice."""

    def __init__(self, assembler: StreamAssembler, resp: UpstreamResponse,
                 events: AsyncGenerator[Event, None]) -> None:
        self.assembler, self.resp, self.events = assembler, resp, events

    async def __aenter__(self) -> AsyncIterator[Event]:
        return self.events

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.events.aclose()
        finally:
            end_response(self.resp, complete=self.assembler.complete)


@attrs.define
class _Choice:
    started: bool = False
    finished: bool = False
    calls: int = 0  # tool calls opened so far: the next one's index
    keys: dict[Any, int] = attrs.Factory(dict)  # an upstream call key -> our index


class StreamAssembler:
    """The chunks of one streamed answer (see the module's docstring).

    Make one when the upstream has answered (``send`` returned): no chunk may go out before,
    so the core can still fall over to another model. Each method returns the chunks to yield,
    in order; ``provider`` names the upstream in ``PROTOCOL`` messages.
    """

    def __init__(self, model: str, *, include_usage: bool, provider: str,
                 logprobs: bool = False, id: str | None = None) -> None:
        self.chunks = StreamChunks(model, id=id or completion_id(), logprobs=logprobs)
        self.include_usage = include_usage
        self.provider = provider
        #: The answer's usage (as :func:`aiproxy.kit.openai_usage` makes it): the last one set
        #: goes out in the usage chunk.
        self.usage: dict[str, Any] | None = None
        self.ended = False  # end() was called
        self.upstream_done = False  # the upstream's own end marker ([DONE]) arrived
        self._choices: dict[int, _Choice] = {}

    @property
    def id(self) -> str:
        return self.chunks.id

    @id.setter
    def id(self, value: str) -> None:
        """Use the upstream's answer id (Cohere's ``message-start``): before the first chunk."""
        if self.started:
            raise RuntimeError("the id of a stream is set before its first chunk")
        self.chunks = attrs.evolve(self.chunks, id=value)

    @property
    def started(self) -> bool:
        """Whether a chunk went out: after it, the core can no longer fall over."""
        return bool(self._choices)

    def _choice(self, index: int) -> _Choice:
        return self._choices.setdefault(index, _Choice())

    # --- What the upstream said ---------------------------------------------------------------

    def start(self, index: int = 0) -> list[dict[str, Any]]:
        """The opening ``{"role": "assistant", "content": ""}`` chunk of a choice, once."""
        choice = self._choice(index)
        if choice.started:
            return []
        choice.started = True
        return [self.chunks.role(index)]

    def text(self, text: str, index: int = 0, *, logprobs: Any = None) -> list[dict[str, Any]]:
        """A piece of the answer's text, with its ``logprobs`` for a client that asked."""
        out = self.start(index)
        if not text and logprobs is None:
            return out
        chunk = self.chunks.chunk({"content": text}, index=index)
        if logprobs is not None and self.chunks.logprobs:
            chunk["choices"][0]["logprobs"] = logprobs
        out.append(chunk)
        return out

    def tool_call(self, name: str, arguments: Any, *, id: str | None = None,
                  index: int = 0, **extra: Any) -> list[dict[str, Any]]:
        """A whole tool call (Gemini's, GigaChat's): the next tool-call index of the choice.
        ``arguments`` is JSON text or an object; ``extra`` adds fields (``extra_content``)."""
        out = self.start(index)
        choice = self._choice(index)
        text = arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()
        call = {"index": choice.calls, "id": id or tool_call_id(), "type": "function",
                "function": {"name": name, "arguments": text}, **extra}
        choice.calls += 1
        out.append(self.chunks.chunk({"tool_calls": [call]}, index=index))
        return out

    def knows_call(self, key: Any, index: int = 0) -> bool:
        """Whether a call with the upstream's ``key`` was opened by :meth:`tool_call_delta`."""
        choice = self._choices.get(index)
        return choice is not None and key in choice.keys

    def tool_call_delta(self, key: Any, *, id: str | None = None,
                        name: str | None = None, arguments: str = "",
                        index: int = 0) -> list[dict[str, Any]]:
        """A fragment of a streamed tool call (OpenAI-shaped streams, Cohere's).

        ``key`` is the upstream's index (or id) of the call. The first fragment of a key opens
        a call (id, name) under the next index; later ones only add to its arguments, under the
        same index, as OpenAI's deltas do. A fragment without a key, id or name continues the
        last call.
        """
        out = self.start(index)
        choice = self._choice(index)
        ours = choice.keys.get(key) if key is not None else None
        if ours is None and key is None and choice.calls and not (id or name):
            ours = choice.calls - 1
        if ours is not None:
            if arguments:
                out.append(self.chunks.chunk({"tool_calls": [
                    {"index": ours, "function": {"arguments": arguments}}]}, index=index))
            return out
        ours, choice.calls = choice.calls, choice.calls + 1
        if key is not None:
            choice.keys[key] = ours
        out.append(self.chunks.chunk({"tool_calls": [{
            "index": ours, "id": id or tool_call_id(), "type": "function",
            "function": {"name": name or "", "arguments": arguments}}]}, index=index))
        return out

    def has_tool_calls(self, index: int = 0) -> bool:
        choice = self._choices.get(index)
        return choice is not None and choice.calls > 0

    def finish(self, reason: str, index: int = 0) -> list[dict[str, Any]]:
        """The ``finish_reason`` chunk of a choice, once; ``stop`` after tool calls is reported
        as ``tool_calls``, as OpenAI does."""
        out = self.start(index)
        choice = self._choice(index)
        if choice.finished:
            return out
        choice.finished = True
        if reason == "stop" and choice.calls:
            reason = "tool_calls"
        out.append(self.chunks.chunk({}, reason, index=index))
        return out

    def finished(self, index: int = 0) -> bool:
        choice = self._choices.get(index)
        return choice is not None and choice.finished

    @property
    def open_choices(self) -> list[int]:
        """The choices that started and have no ``finish_reason`` yet, in order."""
        return sorted(i for i, c in self._choices.items() if not c.finished)

    def end(self, reason: str = "stop") -> list[dict[str, Any]]:
        """The end of the answer: an opening chunk if nothing was said, ``reason`` for every
        choice without a finish reason yet, then the usage chunk if the client asked for it."""
        out = [] if self._choices else self.start(0)
        for index in self.open_choices:
            out += self.finish(reason, index)
        if self.include_usage and self.usage is not None:
            out.append(self.chunks.usage(self.usage))
        self.ended = True
        return out

    @property
    def complete(self) -> bool:
        """The answer is whole: :meth:`end` was called, the upstream's end marker arrived, or
        every choice that started has its finish reason."""
        return self.ended or self.upstream_done or (bool(self._choices) and not self.open_choices)

    # --- Reading the upstream -----------------------------------------------------------------

    def read(self, resp: UpstreamResponse, *, done: bytes | None = b"[DONE]",
             end: str = "its end", framing: Literal["sse", "ndjson"] = "sse",
             ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        """The upstream's events as JSON objects, until ``done`` (its end marker, ``None`` for
        an upstream without one) or the end of the body. ``framing``: server-sent events, or
        newline-delimited JSON (one object a line, as Ollama streams)::

            async with out.read(resp) as events:
                async for event in events:
                    for chunk in translate(event):
                        yield chunk

        A cut connection, an event that is not a JSON object, or a body that ends before the
        answer is :attr:`complete` raise ``PROTOCOL`` (the message says it ended before
        ``end``: what the upstream ends its answer with). Leaving the block releases the
        connection when the answer was read whole and closes it otherwise (an ``aclose()``, an
        error), so the upstream stops generating.
        """
        source = iter_sse(resp.content) if framing == "sse" else _ndjson(resp.content)
        return _Reading(self, resp, self._events(source, done, end))

    async def _events(self, source: AsyncGenerator[SSEEvent, None], done: bytes | None,
                      end: str) -> AsyncGenerator[Event, None]:
        try:
            async with contextlib.aclosing(source) as sse:
                async for event in sse:
                    data = event.data.strip()
                    if not data:
                        continue
                    if done is not None and data == done:
                        self.upstream_done = True
                        return
                    try:
                        parsed = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        raise protocol_error(f"{self.provider}: a stream event is not valid "
                                             "JSON") from None
                    if not isinstance(parsed, dict):
                        raise protocol_error(f"{self.provider}: a stream event is not a JSON "
                                             "object")
                    yield Event(parsed, event.event)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # A connection lost mid-body, or an event over iter_sse's size bound.
            raise protocol_error(f"{self.provider}: the stream broke "
                                 f"({type(exc).__name__})") from None
        if not self.complete:
            raise protocol_error(f"{self.provider}: the stream ended before {end}")
