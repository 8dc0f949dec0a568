"""The chat checks: shapes, stream invariants, cut and early-closed streams, error kinds."""

from __future__ import annotations

import socket
from collections.abc import Awaitable

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from aiproxy.provider import Capability, ChatResponse, ErrorKind, Provider, UpstreamError
from aiproxy.testing.adapter import ERROR_KINDS, RETRY_AFTER, ConformanceAdapter
from aiproxy.testing.calls import drain
from aiproxy.testing.shapes import check_chunks, check_completion
from aiproxy.testing.upstream import RecordedRequest, StreamEvent
from aiproxy.testing.world import Check, ConformanceFailure, Run, canonical, expect

__all__ = ["CHAT_CHECKS", "ERROR_CHECKS", "always", "answer_error", "has_error", "upstream"]


def always(adapter: ConformanceAdapter) -> str | None:
    return None


def upstream(adapter: ConformanceAdapter) -> str | None:
    return None if adapter.has_upstream else "the provider calls no upstream"


async def _capabilities(run: Run) -> None:
    cls = type(run.provider)
    caps = cls.capabilities
    expect(isinstance(caps, frozenset) and all(isinstance(c, Capability) for c in caps),
           f"capabilities must be a frozenset of Capability, got {caps!r}")
    expect(Capability.CHAT in caps, "the suite serves chat, but capabilities lacks CHAT")
    for cap, method in ((Capability.CHAT, "chat"), (Capability.CHAT, "stream"),
                        (Capability.EMBEDDINGS, "embeddings"), (Capability.IMAGES, "images")):
        if cap in caps:
            expect(getattr(cls, method) is not getattr(Provider, method),
                   f"capabilities declares {cap.value}, but {cls.__name__}.{method}() is the "
                   "base class's NotImplementedError")


async def _chat(run: Run) -> None:
    run.serve_text(stream=False)
    request, answer, error = await run.call(stream=False)
    if error is not None:
        raise ConformanceFailure(f"chat() raised {error!r}")
    expect(isinstance(answer, ChatResponse), f"chat() returned {type(answer).__name__}, "
           "not ChatResponse")
    check_completion(answer.data, run.adapter.exact_usage)
    if run.adapter.has_upstream:
        run.adapter.check_request(run.expect_one_call("chat"), request)


async def _stream(run: Run, include_usage: bool) -> None:
    run.serve_text(stream=True)
    request, chunks, error = await run.call(stream=True, include_usage=include_usage)
    if error is not None:
        raise ConformanceFailure(f"stream() raised {error!r} after {len(chunks)} chunks")
    check_chunks(chunks, include_usage=include_usage, exact=run.adapter.exact_usage)
    if run.adapter.has_upstream:
        run.adapter.check_request(run.expect_one_call("stream"), request)


async def _stream_usage(run: Run) -> None:
    await _stream(run, include_usage=True)


async def _stream_no_usage(run: Run) -> None:
    await _stream(run, include_usage=False)


async def _stream_cut(run: Run) -> None:
    run.serve_text(stream=True, cut=True)
    _, _, error = await run.call(stream=True)
    run.expect_error(error, ErrorKind.PROTOCOL, "stream cut mid-way (connection reset)")


async def _stream_ends_early(run: Run) -> None:
    def truncate(events: list[StreamEvent]) -> list[StreamEvent]:
        return events[:run.adapter.cut_point(events)]

    run.serve_text(stream=True, events=truncate)
    _, _, error = await run.call(stream=True)
    run.expect_error(error, ErrorKind.PROTOCOL, "stream ended cleanly before its final event")


async def _stream_aclose(run: Run) -> None:
    run.serve_text(stream=True, hold=True)
    stream = run.provider.stream(canonical(stream=True))
    expect(hasattr(stream, "aclose"), "stream() must return an async generator (aclose())")
    try:
        await anext(stream)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    expect(await run.fake.wait_for_disconnect(2.0),
           "after aclose() the upstream connection stayed open: close the response in the "
           "generator's finally")


async def _malformed(run: Run) -> None:
    async def html(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(body=b"<html>gateway page</html>", content_type="text/html")

    run.serve(html)
    _, _, error = await run.call(stream=False)
    run.expect_error(error, ErrorKind.PROTOCOL, "plain answer that is not JSON")

    def garble(events: list[StreamEvent]) -> list[StreamEvent]:
        return [*events[:run.adapter.cut_point(events)], b"{not json"]

    run.serve_text(stream=True, events=garble)
    _, _, error = await run.call(stream=True)
    run.expect_error(error, ErrorKind.PROTOCOL, "stream event that is not JSON")


async def _stream_error_event(run: Run) -> None:
    event = run.adapter.stream_error("conformance: the model crashed")
    assert event is not None  # guaranteed by the check's skip

    def fail(events: list[StreamEvent]) -> list[StreamEvent]:
        return [*events[:run.adapter.cut_point(events)], event]

    run.serve_text(stream=True, events=fail)
    _, _, error = await run.call(stream=True)
    run.expect_error(error, None, "an error event inside the stream")
    # Not just "the stream ended early": the client should learn what the upstream said.
    expect("the model crashed" in str(error), f"the error does not carry the upstream's "
           f"message ({error!r})")


async def _connection_refused(run: Run) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = run.adapter.provider(run.adapter.model_config(f"http://127.0.0.1:{port}"),
                                    run.session)
    try:
        try:
            await provider.chat(canonical(stream=False))
            error: Exception | None = None
        except Exception as exc:  # noqa: BLE001 - judged below
            error = exc
        run.expect_error(error, ErrorKind.CONNECTION, "chat() with the upstream down")
        _, error = await drain(provider.stream(canonical(stream=True)))
        run.expect_error(error, ErrorKind.CONNECTION, "stream() with the upstream down")
    finally:
        await provider.close()


def _error_check(kind: ErrorKind) -> Check:
    async def check(run: Run) -> None:
        def serve(request: web.Request) -> Awaitable[web.StreamResponse]:
            return answer_error(run.adapter, kind, f"conformance {kind.value} failure", request)

        run.serve(serve)
        for stream in (False, True):
            what = f"{kind.name} from the upstream ({'stream' if stream else 'chat'})"
            _, got, error = await run.call(stream=stream)
            if kind is ErrorKind.AUTH:
                # One fresh-credentials retry is fine (an expired OAuth token, say).
                expect(1 <= len(run.chat_calls()) <= 2, f"{what}: "
                       f"{len(run.chat_calls())} upstream calls for one attempt")
            else:
                run.expect_one_call(what)
            if stream:
                expect(not got, f"{what}: stream() yielded {len(got)} chunks before raising; "
                       "raise before the first chunk so the core can fail over")
            run.expect_error(error, kind, what)
            assert isinstance(error, UpstreamError)
            if kind is ErrorKind.RATE_LIMITED:
                expect(error.retry_after is not None and abs(error.retry_after - RETRY_AFTER) <= 1,
                       f"{what}: retry_after is {error.retry_after!r}, expected ~{RETRY_AFTER}")

    def skip(adapter: ConformanceAdapter) -> str | None:
        if not adapter.has_upstream:
            return "the provider calls no upstream"
        if not has_error(adapter, kind):
            return f"the adapter's upstream has no {kind.name} answer"
        return None

    return Check(f"error_{kind.value}", f"an upstream {kind.name} maps to ErrorKind.{kind.name}",
                 check, skip)


async def answer_error(adapter: ConformanceAdapter, kind: ErrorKind, message: str,
                        request: web.Request) -> web.StreamResponse:
    response = adapter.error(kind, message, await RecordedRequest.of(request))
    assert response is not None
    return response


def has_error(adapter: ConformanceAdapter, kind: ErrorKind) -> bool:
    """Whether the adapter's upstream has ``kind``, asked with the canonical plain request."""
    request = canonical(stream=False)
    probe = RecordedRequest("POST", (adapter.chat_paths or ("/",))[0], {},
                            CIMultiDictProxy(CIMultiDict()), request.raw, dict(request.body))
    return adapter.error(kind, "probe", probe) is not None


def _secret_kind(adapter: ConformanceAdapter) -> ErrorKind | None:
    for kind in (ErrorKind.AUTH, *ERROR_KINDS):
        if has_error(adapter, kind):
            return kind
    return None


async def _no_secret(run: Run) -> None:
    kind = _secret_kind(run.adapter)
    assert kind is not None
    assert run.adapter.token
    # Some upstreams echo the key they refused; the provider must scrub it.
    echo = f"Incorrect API key provided: {run.adapter.token}"

    def serve(request: web.Request) -> Awaitable[web.StreamResponse]:
        return answer_error(run.adapter, kind, echo, request)

    run.serve(serve)
    for stream in (False, True):
        _, _, error = await run.call(stream=stream)
        run.expect_error(error, None, f"an upstream error quoting the key "
                         f"({'stream' if stream else 'chat'})")


def _no_secret_skip(adapter: ConformanceAdapter) -> str | None:
    if not adapter.has_upstream or not adapter.token:
        return "no upstream key is configured"
    return None if _secret_kind(adapter) else "the adapter's upstream answers no errors"


def _stream_error_skip(adapter: ConformanceAdapter) -> str | None:
    if not adapter.has_upstream:
        return "the provider calls no upstream"
    if adapter.stream_error("probe") is None:
        return "the adapter's upstream reports no mid-stream error"
    return None


CHAT_CHECKS: tuple[Check, ...] = (
    Check("capabilities", "declared capabilities are implemented", _capabilities, always),
    Check("chat", "a plain answer in the OpenAI chat.completion shape", _chat, always),
    Check("stream_usage", "stream invariants, with the usage chunk asked for", _stream_usage,
          always),
    Check("stream_no_usage", "stream invariants, no usage chunk when not asked",
          _stream_no_usage, always),
    Check("stream_cut", "a connection reset mid-stream raises PROTOCOL", _stream_cut, upstream),
    Check("stream_ends_early", "a stream ending before its final event raises PROTOCOL",
          _stream_ends_early, upstream),
    Check("stream_aclose", "aclose() after the first chunk releases the connection",
          _stream_aclose, upstream),
    Check("malformed", "an answer or event that is not JSON raises PROTOCOL", _malformed,
          upstream),
    Check("stream_error_event", "an error event inside a stream raises its UpstreamError",
          _stream_error_event, _stream_error_skip),
    Check("connection_refused", "an unreachable upstream raises CONNECTION",
          _connection_refused, upstream),
)

ERROR_CHECKS: tuple[Check, ...] = (
    *(_error_check(kind) for kind in ERROR_KINDS),
    Check("no_secret_in_errors", "an upstream error quoting the key does not leak it",
          _no_secret, _no_secret_skip),
)
