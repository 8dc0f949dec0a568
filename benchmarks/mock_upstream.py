"""A fast OpenAI-compatible mock upstream for benchmarks.

``POST /v1/chat/completions`` (also without ``/v1``) answers a fixed small ``chat.completion``,
or with ``"stream": true`` N ``chat.completion.chunk`` SSE events (the last with
``finish_reason: stop``, plus a usage chunk when ``stream_options.include_usage``), then
``data: [DONE]``. Each chunk is written separately, as a real upstream sends tokens.

It runs on aiohttp's low-level server (no router, no middlewares, no access log) and on
uvloop when that is installed, so that it stays well ahead of what it feeds.

    python benchmarks/mock_upstream.py --port 9001 [--chunks 50] [--latency-ms 0]
        [--chunk-delay-ms 0] [--stamp]

``--latency-ms``: wait before answering (both modes; the time to first token of a stream).
``--chunk-delay-ms``: wait between two stream chunks.
``--stamp``: put ``"x_sent_ns": <time.monotonic_ns()>`` into every chunk as it is written;
CLOCK_MONOTONIC is one clock for every process on a Linux host, so a client can compute each
chunk's one-way delay (``benchmarks/run.py`` does, to measure the delay a proxy adds per chunk).
Per request, the body fields ``mock_chunks``, ``mock_chunk_delay_ms`` and ``mock_stamp``
override these stream settings (a proxy forwards unknown body fields untouched).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time

from aiohttp import web

try:  # orjson is an aiproxy dependency; plain json works too
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    _loads = json.loads

_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

_COMPLETION = {
    "id": "chatcmpl-mock0000000000000000000000",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "mock-model",
    "system_fingerprint": "fp_mock",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant",
                    "content": "Why did the proxy cross the road? To forward the request."},
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 12, "completion_tokens": 14, "total_tokens": 26},
}

_CHUNK_HEAD = ('{"id":"chatcmpl-mock0000000000000000000000","object":"chat.completion.chunk",'
               '"created":1700000000,"model":"mock-model","system_fingerprint":"fp_mock",')
_DONE = b"data: [DONE]\n\n"


def _chunk_tail(index: int, last: bool) -> str:
    if index == 0:
        delta = '{"role":"assistant","content":""}'
    elif last:
        delta = "{}"
    else:
        delta = '{"content":" tok%d"}' % index  # noqa: UP031 - a template, not a message
    finish = '"stop"' if last else "null"
    return f'"choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}'


class Mock:
    def __init__(self, chunks: int, latency: float, chunk_delay: float, stamp: bool) -> None:
        self.chunks = max(2, chunks)
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.stamp = stamp
        self.completion = json.dumps(_COMPLETION, separators=(",", ":")).encode()
        tails = [_chunk_tail(i, i == self.chunks - 1) for i in range(self.chunks)]
        # Pre-encoded events; with --stamp the send time goes between head and tail.
        self.events = [f"data: {_CHUNK_HEAD}{tail}\n\n".encode() for tail in tails]
        self.heads = b"data: " + _CHUNK_HEAD.encode() + b'"x_sent_ns":'
        self.tails = [b"," + tail.encode() + b"\n\n" for tail in tails]
        self.usage = ("data: " + _CHUNK_HEAD + '"choices":[],"usage":'
                      + json.dumps(_COMPLETION["usage"], separators=(",", ":"))
                      + "}\n\n").encode()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if request.method == "GET" and path in ("/ping", "/health"):
            return web.Response(text="OK")
        if request.method != "POST" or path not in ("/v1/chat/completions", "/chat/completions"):
            return web.Response(status=404, body=b'{"error":{"message":"not found"}}',
                                headers=_JSON_HEADERS)
        raw = await request.read()
        try:
            body = _loads(raw)
        except ValueError:
            return web.Response(status=400, body=b'{"error":{"message":"bad json"}}',
                                headers=_JSON_HEADERS)
        if self.latency:
            await asyncio.sleep(self.latency)
        if not body.get("stream"):
            return web.Response(body=self.completion, headers=_JSON_HEADERS)
        return await self.stream(request, body)

    def event(self, i: int, n: int, stamp: bool) -> bytes:
        if n == self.chunks:  # the pre-encoded common case
            head, tail, event = self.heads, self.tails[i], self.events[i]
        else:
            text = _chunk_tail(i, i == n - 1)
            head, tail = self.heads, b"," + text.encode() + b"\n\n"
            event = f"data: {_CHUNK_HEAD}{text}\n\n".encode()
        if stamp:
            return head + str(time.monotonic_ns()).encode() + tail
        return event

    async def stream(self, request: web.BaseRequest, body: dict) -> web.StreamResponse:
        # Per-request overrides (unknown fields that a proxy forwards untouched):
        # mock_chunks, mock_chunk_delay_ms, mock_stamp.
        n = body.get("mock_chunks")
        n = max(2, n) if isinstance(n, int) else self.chunks
        delay = body.get("mock_chunk_delay_ms")
        delay = delay / 1000 if isinstance(delay, int | float) else self.chunk_delay
        stamp = bool(body.get("mock_stamp", self.stamp))
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        try:
            for i in range(n):
                if i and delay:
                    await asyncio.sleep(delay)
                await response.write(self.event(i, n, stamp))
            opts = body.get("stream_options")
            if isinstance(opts, dict) and opts.get("include_usage"):
                await response.write(self.usage)
            await response.write(_DONE)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away mid-stream: fine for a mock
        return response


async def serve(args: argparse.Namespace) -> None:
    mock = Mock(args.chunks, args.latency_ms / 1000, args.chunk_delay_ms / 1000, args.stamp)
    server = web.Server(mock.handle, access_log=None)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(server, args.host, args.port, backlog=4096,
                                   reuse_address=True)
    print(f"mock upstream on http://{args.host}:{args.port}/v1 "
          f"(chunks={mock.chunks} latency={args.latency_ms}ms "
          f"chunk_delay={args.chunk_delay_ms}ms stamp={args.stamp})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        srv.close()
        await server.shutdown(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=50, help="SSE chunks per stream (>= 2)")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="delay before answering / before the first chunk")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0,
                        help="delay between stream chunks")
    parser.add_argument("--stamp", action="store_true",
                        help="add x_sent_ns (monotonic send time) to every chunk")
    args = parser.parse_args()
    try:
        import uvloop  # optional; not an aiproxy dependency
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args))


if __name__ == "__main__":
    main()
