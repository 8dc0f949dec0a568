"""One check's world: a running fake upstream, a session, the provider under test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import aiohttp
import attrs
from aiohttp import web

from aiproxy.provider import ChatRequest, ErrorKind, Provider, UpstreamError
from aiproxy.testing.adapter import CHECK_TIMEOUT, TEXT, TEXT_PIECES, USAGE, ConformanceAdapter
from aiproxy.testing.calls import chat_request, drain
from aiproxy.testing.upstream import (
    PING,
    FakeUpstream,
    Handler,
    RecordedRequest,
    StreamEvent,
    json_response,
    stream_response,
)

__all__ = ["Check", "CheckFn", "ConformanceFailure", "Run", "canonical", "expect", "world"]


class ConformanceFailure(AssertionError):
    """A check found the provider breaking the contract."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise ConformanceFailure(message)


def canonical(*, stream: bool, include_usage: bool = False, **fields: Any) -> ChatRequest:
    """The suite's chat request: the canonical conversation, a temperature and a bound."""
    return chat_request(stream=stream, include_usage=include_usage, temperature=0.5,
                        max_tokens=32, **fields)


def answer(body: dict[str, Any] | web.StreamResponse | None, what: str) -> web.StreamResponse:
    """An adapter's answer as a response (a dict is sent as JSON)."""
    if body is None:
        raise ConformanceFailure(f"the adapter's {what} returned None")
    return body if isinstance(body, web.StreamResponse) else json_response(body)


@attrs.define
class Run:
    """One check's world: the adapter, a running fake, a session, the provider under test."""

    adapter: ConformanceAdapter
    fake: FakeUpstream
    session: aiohttp.ClientSession
    provider: Provider

    def serve(self, handler: Handler, paths: Sequence[str] | None = None) -> None:
        """Answer every call to ``paths`` (by default the chat paths) with ``handler``."""
        for path in self.adapter.chat_paths if paths is None else paths:
            self.fake.route("POST", path, handler)

    def serve_events(self, native: Callable[[RecordedRequest], list[StreamEvent]], *,
                     events: Callable[[list[StreamEvent]], list[StreamEvent]] | None = None,
                     cut: bool = False, hold: bool = False) -> None:
        """Stream what ``native`` builds for each request; ``events`` may rewrite the stream,
        ``cut`` drops the connection at the adapter's cut point, ``hold`` leaves it open
        there."""
        adapter = self.adapter

        async def handler(request: web.Request) -> web.StreamResponse:
            built = native(await RecordedRequest.of(request))
            at = adapter.cut_point(built)
            if events is not None:
                built = events(built)
            if hold:
                return await stream_response(request, built[:at], format=adapter.stream_format,
                                             hold=CHECK_TIMEOUT)
            return await stream_response(request, built, format=adapter.stream_format,
                                         cut_after=at if cut else None)

        self.serve(handler)

    def serve_text(self, *, stream: bool, events: Callable[[list[StreamEvent]],
                                                           list[StreamEvent]] | None = None,
                   cut: bool = False, hold: bool = False) -> None:
        """Answer the canonical text, plain or streamed (see :meth:`serve_events`)."""
        adapter = self.adapter
        if stream:
            self.serve_events(lambda r: adapter.stream_text(TEXT_PIECES, USAGE, r),
                              events=events, cut=cut, hold=hold)
            return

        async def handler(request: web.Request) -> web.StreamResponse:
            record = await RecordedRequest.of(request)
            return answer(adapter.answer_text(TEXT, USAGE, record), "answer_text")

        self.serve(handler)

    def calls_to(self, paths: Sequence[str]) -> list[RecordedRequest]:
        return [r for r in self.fake.requests if r.path in paths]

    def chat_calls(self) -> list[RecordedRequest]:
        return self.calls_to(self.adapter.chat_paths)

    def expect_routed(self, what: str, paths: Sequence[str]) -> None:
        if self.fake.unrouted:
            first = self.fake.unrouted[0]
            raise ConformanceFailure(
                f"{what}: the provider called {first.method} {first.path}, which the adapter "
                f"does not route (expected one of {tuple(paths)!r})")

    def expect_one_call(self, what: str, paths: Sequence[str] | None = None
                        ) -> RecordedRequest:
        paths = self.adapter.chat_paths if paths is None else paths
        self.expect_routed(what, paths)
        calls = self.calls_to(paths)
        expect(len(calls) == 1, f"{what}: expected exactly one upstream call, saw "
               f"{len(calls)} (a provider makes one attempt; the core retries)")
        return calls[0]

    def expect_error(self, error: Exception | None, kind: ErrorKind | None, what: str) -> None:
        """``error`` is an UpstreamError (of ``kind`` unless None) that leaks no secret."""
        expect(error is not None, f"{what}: no error was raised")
        if not isinstance(error, UpstreamError):
            raise ConformanceFailure(
                f"{what}: raised {type(error).__name__}: {error} — every failure must be an "
                f"UpstreamError{f' of kind {kind.name}' if kind else ''}")
        expect(kind is None or error.kind is kind,
               f"{what}: UpstreamError of kind {error.kind.name}, expected "
               f"{kind.name if kind else ''} ({error.message!r})")
        secret = self.provider.model.token
        if secret:
            shown = " ".join(str(x) for x in (error, error.message, error.code, error.param,
                                              repr(error)))
            expect(secret not in shown,
                   f"{what}: the upstream key appears in the UpstreamError ({error!r})")

    async def call(self, *, stream: bool, include_usage: bool = False,
                   request: ChatRequest | None = None
                   ) -> tuple[ChatRequest, Any, Exception | None]:
        """Make one chat call; ``(request, answer or chunks, exception)``."""
        self.fake.requests.clear()
        if request is None:
            request = canonical(stream=stream, include_usage=include_usage)
        if stream:
            chunks, error = await drain(self.provider.stream(request))
            return request, chunks, error
        try:
            return request, await self.provider.chat(request), None
        except Exception as exc:  # noqa: BLE001 - judged by the check
            return request, None, exc

    async def expect_pool_free(self) -> None:
        """The provider left no connection checked out (the suite's session allows one)."""
        try:
            async with asyncio.timeout(2.0):
                async with self.session.get(self.fake.url_for(PING)) as resp:
                    await resp.read()
        except TimeoutError:
            raise ConformanceFailure(
                "a connection to the upstream was still held after the call: release() or "
                "close() every response, also on errors and early exits") from None


CheckFn: TypeAlias = Callable[[Run], Awaitable[None]]


@attrs.frozen
class Check:
    """One conformance check: ``skip`` says why it does not apply to an adapter (or None)."""

    name: str
    doc: str
    run: CheckFn
    skip: Callable[[ConformanceAdapter], str | None]


@contextlib.asynccontextmanager
async def world(adapter: ConformanceAdapter) -> AsyncIterator[Run]:
    async with FakeUpstream() as fake:
        adapter.setup(fake)
        # One connection at most: a response the provider forgets to release then shows up as
        # a pool that is never free again (see Run.expect_pool_free).
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            provider = adapter.provider(adapter.model_config(fake.url), session)
            try:
                yield Run(adapter, fake, session, provider)
            finally:
                await provider.close()
