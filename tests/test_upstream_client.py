"""The pooled upstream client (``aiproxy.upstream``) against real servers on 127.0.0.1: what it
sends, what the caller sees, and that it behaves as ``aiohttp.ClientSession`` would."""

from __future__ import annotations

import asyncio
import enum
import gzip
import socket
import ssl
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.streams import StreamReader
from aiohttp.test_utils import TestServer
from yarl import URL

from aiproxy.config import ModelConfig, TimeoutConfig
from aiproxy.provider import ChatRequest, ErrorKind, UpstreamError
from aiproxy.upstream import PooledResponse, UpstreamClient, _Target, handles
from aiproxy_providers.openai import OpenAIProvider
from tests.test_provider_gigachat import _make_certs

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
PARTIAL = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"  # 7 bytes still to come
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")


def hang_guard() -> asyncio.Timeout:
    """Where a regression would wait forever: a failure instead, not a timing assertion."""
    return asyncio.timeout(10)


# --- Servers ---------------------------------------------------------------------------------


class Hangup(enum.Enum):
    """What a raw upstream does instead of answering, once it has read the request."""

    CLOSE = "close"  # a FIN: the client reads a clean end
    RESET = "reset"  # an RST (SO_LINGER 0), as a server aborting a connection


Reply = bytes | Hangup
Handler = Callable[["RawUpstream", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawUpstream:
    """An upstream that writes exact bytes: ``handler`` serves each connection. It keeps the
    requests it read, counts connections, and counts the ones the client closed."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.hangups = 0
        self._hangup = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self.handler(self, reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request, head and body; ``None`` once the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hung_up()
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request

    def hung_up(self) -> None:
        """The client closed a connection."""
        self.hangups += 1
        self._hangup.set()

    async def wait_hangups(self, count: int) -> None:
        """Until the client has closed ``count`` connections."""
        async with hang_guard():
            while self.hangups < count:
                self._hangup.clear()
                await self._hangup.wait()


def replies(*answers: Reply) -> Handler:
    """Each request read, on whichever connection, gets the next answer (``OK`` once they run
    out); a :class:`Hangup` ends the connection instead."""
    queue = list(answers)

    async def handler(up: RawUpstream, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while await up.read_request(reader) is not None:
            answer = queue.pop(0) if queue else OK
            if answer is Hangup.RESET:
                writer.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if answer is Hangup.CLOSE:
                return
            assert isinstance(answer, bytes)
            writer.write(answer)
            await writer.drain()

    return handler


def once(*parts: bytes) -> Handler:
    """Reads one request, writes ``parts`` (a write each), then closes the connection."""

    async def handler(up: RawUpstream, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        for part in parts:
            writer.write(part)
            await writer.drain()

    return handler


async def silent(up: RawUpstream, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    """Accepts, never answers (not even a TLS handshake), until the client goes away."""
    await reader.read()
    up.hung_up()


def request_head(raw: bytes) -> tuple[str, list[tuple[str, str]]]:
    """A request's line and its headers as sent (names in the caller's case)."""
    head, _, _ = raw.partition(b"\r\n\r\n")
    line, *fields = head.decode().split("\r\n")
    headers = []
    for field in fields:
        name, _, value = field.partition(":")
        headers.append((name, value.strip()))
    return line, headers


class Seen:
    """What an aiohttp upstream saw: each request's headers, and the client's port for each
    (one port per connection)."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        assert request.transport is not None
        self.ports.append(request.transport.get_extra_info("peername")[1])
        self.headers.append(dict(request.headers))
        self.paths.append(request.path_qs)
        return await handler(request)

    @property
    def connections(self) -> int:
        return len(set(self.ports))


StartRaw = Callable[[Handler], Awaitable[RawUpstream]]
StartApp = Callable[..., Awaitable[tuple[TestServer, Seen]]]


@pytest.fixture
async def raw() -> AsyncIterator[StartRaw]:
    started: list[RawUpstream] = []

    async def start(handler: Handler) -> RawUpstream:
        up = RawUpstream(handler)
        await up.start()
        started.append(up)
        return up

    yield start
    for up in started:
        await up.stop()


@pytest.fixture
async def upstream(aiohttp_server: Any) -> StartApp:
    async def start(*routes: web.RouteDef, tls: ssl.SSLContext | None = None
                    ) -> tuple[TestServer, Seen]:
        seen = Seen()
        app = web.Application(middlewares=[seen.middleware])
        app.add_routes(routes)
        server: TestServer = await aiohttp_server(app, ssl=tls)
        return server, seen

    return start


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., UpstreamClient]]:
    clients: list[UpstreamClient] = []

    def make(**kwargs: Any) -> UpstreamClient:
        clients.append(UpstreamClient(**kwargs))
        return clients[-1]

    yield make
    for made in clients:
        await made.close()


@pytest.fixture
def client(make_client: Callable[..., UpstreamClient]) -> UpstreamClient:
    return make_client()


async def get(client: UpstreamClient, url: str, **kwargs: Any) -> bytes:
    """One GET read to its end."""
    resp = await client.request("GET", url, **kwargs)
    return await resp.read()


def refused_url() -> tuple[socket.socket, str]:
    """A port bound but not listening (connections to it are refused), kept until closed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/"


# --- What is sent -----------------------------------------------------------------------------


class TestTarget:
    @pytest.mark.parametrize(("url", "host"), [
        ("http://example.com/v1", "example.com"),
        ("http://example.com:80/v1", "example.com"),
        ("https://example.com:443/v1", "example.com"),
        ("https://example.com:8443/v1", "example.com:8443"),
        ("http://example.com:443/v1", "example.com:443"),
        ("http://[::1]:8080/v1", "[::1]:8080"),
    ])
    def test_host_header_names_a_port_only_when_not_the_default(self, url: str, host: str) -> None:
        assert _Target(URL(url)).host_header == host

    def test_path_and_query_are_kept_and_an_empty_path_is_slash(self) -> None:
        assert _Target(URL("https://h/v1/x?api-version=1&a=%20")).target == \
            "/v1/x?api-version=1&a=%20"
        assert _Target(URL("http://h")).target == "/"
        assert _Target(URL("https://h/v1")).port == 443
        assert _Target(URL("http://h/v1")).port == 80


class TestHandles:
    @pytest.mark.parametrize(("data", "options", "expected"), [
        (None, {}, True),
        (b"{}", {}, True),
        (b"{}", {"ssl": False}, True),
        (None, {"ssl": ssl.create_default_context()}, True),
        ("{}", {}, False),
        (bytearray(b"{}"), {}, False),
        (None, {"params": {"a": "1"}}, False),
        (None, {"ssl": False, "timeout": 1}, False),
        (None, {"ssl": "yes"}, False),
    ])
    def test_plain_calls_only(self, data: object, options: dict[str, Any], expected: bool) -> None:
        assert handles(data, options) is expected


class TestRequestBytes:
    async def test_request_line_host_and_default_headers(self, raw: StartRaw,
                                                         client: UpstreamClient) -> None:
        up = await raw(replies(OK))
        await get(client, up.url("/v1/x?api-version=1"),
                  headers={"Authorization": "Bearer k", "x-Custom": "a b"})
        line, headers = request_head(up.requests[0])
        assert line == "GET /v1/x?api-version=1 HTTP/1.1"
        assert sorted(headers) == sorted([
            ("Host", f"127.0.0.1:{up.port}"), ("Authorization", "Bearer k"),
            ("x-Custom", "a b"), ("Accept", "*/*"), ("Accept-Encoding", "gzip, deflate"),
            ("User-Agent", SERVER_SOFTWARE)])

    async def test_callers_defaults_win(self, raw: StartRaw, client: UpstreamClient) -> None:
        up = await raw(replies(OK))
        await get(client, up.url(), headers={"Host": "api.example", "accept": "text/plain",
                                             "User-Agent": "me", "Accept-Encoding": "br"})
        _, headers = request_head(up.requests[0])
        assert sorted(headers) == sorted([("Host", "api.example"), ("accept", "text/plain"),
                                          ("User-Agent", "me"), ("Accept-Encoding", "br")])

    async def test_body_with_callers_content_type(self, raw: StartRaw,
                                                  client: UpstreamClient) -> None:
        up = await raw(replies(OK))
        resp = await client.request("POST", up.url("/v1/chat"), data=b'{"a":1}',
                                    headers={"Content-Type": "application/json"})
        await resp.read()
        line, headers = request_head(up.requests[0])
        assert line == "POST /v1/chat HTTP/1.1"
        assert ("Content-Type", "application/json") in headers
        assert ("Content-Length", "7") in headers
        assert [name for name, _ in headers].count("Content-Type") == 1
        assert up.requests[0].endswith(b'\r\n\r\n{"a":1}')

    async def test_body_without_content_type_is_octet_stream(self, raw: StartRaw,
                                                             client: UpstreamClient) -> None:
        up = await raw(replies(OK))
        await (await client.request("PUT", up.url(), data=b"xyz")).read()
        _, headers = request_head(up.requests[0])
        assert ("Content-Type", "application/octet-stream") in headers
        assert ("Content-Length", "3") in headers

    async def test_callers_length_and_transfer_encoding_are_replaced(
            self, raw: StartRaw, client: UpstreamClient) -> None:
        up = await raw(replies(OK))
        resp = await client.request("POST", up.url(), data=b"abc", headers={
            "Content-Length": "999", "Transfer-Encoding": "chunked", "Content-Type": "a/b"})
        await resp.read()
        _, headers = request_head(up.requests[0])
        names = [name.lower() for name, _ in headers]
        assert "transfer-encoding" not in names
        assert names.count("content-length") == 1
        assert ("Content-Length", "3") in headers

    @pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
    async def test_body_method_without_body_sends_zero_length(self, raw: StartRaw,
                                                              client: UpstreamClient,
                                                              method: str) -> None:
        up = await raw(replies(OK))
        await (await client.request(method, up.url())).read()
        _, headers = request_head(up.requests[0])
        assert ("Content-Length", "0") in headers
        assert "Content-Type" not in dict(headers)

    @pytest.mark.parametrize("method", ["GET", "DELETE"])
    async def test_get_and_delete_without_body_send_no_length(self, raw: StartRaw,
                                                              client: UpstreamClient,
                                                              method: str) -> None:
        up = await raw(replies(OK))
        await (await client.request(method.lower(), up.url())).read()
        line, headers = request_head(up.requests[0])
        assert line == f"{method} / HTTP/1.1"
        assert "content-length" not in {name.lower() for name, _ in headers}

    async def test_each_call_sends_its_own_head(self, raw: StartRaw,
                                                client: UpstreamClient) -> None:
        # Heads are built once per method, URL and header set: no call gets another's.
        up = await raw(replies())
        calls: list[tuple[str, bytes | None, dict[str, str]]] = [
            ("POST", b"abc", {"X-Key": "1"}), ("POST", b"abcde", {"X-Key": "1"}),
            ("POST", None, {"X-Key": "1"}), ("POST", b"abc", {"X-Key": "2"}),
            ("PUT", b"abc", {"X-Key": "2"}), ("POST", b"abc", {"X-Key": "1"})]
        async with hang_guard():  # a head cut short leaves both sides waiting
            for method, data, headers in calls:
                await (await client.request(method, up.url(), data=data,
                                            headers=headers)).read()
        sent = [request_head(request) for request in up.requests]
        assert [line for line, _ in sent] == [f"{method} / HTTP/1.1" for method, _, _ in calls]
        assert [(dict(headers)["X-Key"], dict(headers)["Content-Length"])
                for _, headers in sent] == [("1", "3"), ("1", "5"), ("1", "0"), ("2", "3"),
                                            ("2", "3"), ("1", "3")]
        assert [request.partition(b"\r\n\r\n")[2] for request in up.requests] == [
            b"abc", b"abcde", b"", b"abc", b"abc", b"abc"]

    @pytest.mark.parametrize("header", [
        {"X-A": "1\r\nX-Injected: 1"}, {"X-A": "1\nX-Injected: 1"}, {"X-A": "1\x00"},
        {"X-A\r\nX-Injected": "1"}, {"X-\nA": "1"}, {"X-\x00": "1"},
    ])
    async def test_cr_lf_nul_raise_and_send_nothing(self, raw: StartRaw,
                                                    client: UpstreamClient,
                                                    header: dict[str, str]) -> None:
        up = await raw(replies(OK, OK))
        assert await get(client, up.url("/first")) == b"ok"
        with pytest.raises(ValueError, match="invalid HTTP header"):
            await client.request("GET", up.url("/bad"), headers=header)
        assert await get(client, up.url("/second")) == b"ok"
        # One connection carried both good requests and nothing between them.
        assert up.connections == 1
        assert [request_head(r)[0] for r in up.requests] == [
            "GET /first HTTP/1.1", "GET /second HTTP/1.1"]


# --- Keep-alive -------------------------------------------------------------------------------


class TestKeepAlive:
    async def test_sequential_calls_share_one_connection(self, upstream: StartApp,
                                                         client: UpstreamClient) -> None:
        server, seen = await upstream(web.get("/", hello))
        for _ in range(3):
            assert await get(client, str(server.make_url("/"))) == b"hello"
        assert seen.connections == 1
        assert client.pooled == 1

    @pytest.mark.parametrize("answer", [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ], ids=["connection-close", "http-1.0"])
    async def test_an_answer_that_ends_the_connection_is_not_reused(
            self, raw: StartRaw, client: UpstreamClient, answer: bytes) -> None:
        up = await raw(replies(answer, OK))  # the server itself would go on
        assert await get(client, up.url()) == b"ok"
        assert client.pooled == 0
        await up.wait_hangups(1)  # the client closed it
        assert await get(client, up.url()) == b"ok"
        assert up.connections == 2

    async def test_released_before_its_end_closes_the_connection(self, raw: StartRaw,
                                                                 client: UpstreamClient) -> None:
        up = await raw(replies(PARTIAL, OK))
        resp = await client.request("GET", up.url())
        assert resp.status == 200
        resp.release()
        await up.wait_hangups(1)
        assert client.pooled == 0
        assert await get(client, up.url()) == b"ok"
        assert up.connections == 2

    async def test_read_to_its_end_returns_the_connection_without_release(
            self, upstream: StartApp, client: UpstreamClient) -> None:
        server, seen = await upstream(web.get("/", hello))
        resp = await client.request("GET", str(server.make_url("/")))
        assert await resp.read() == b"hello"  # and no release()
        assert client.pooled == 1
        assert await get(client, str(server.make_url("/"))) == b"hello"
        assert seen.connections == 1


# --- Bodies -----------------------------------------------------------------------------------


class TestBodies:
    async def test_content_length_body(self, upstream: StartApp, client: UpstreamClient) -> None:
        body = bytes(range(256)) * 4096  # 1 MiB: several reads of the socket

        async def big(request: web.Request) -> web.Response:
            return web.Response(body=body)

        server, _ = await upstream(web.get("/", big))
        resp = await client.request("GET", str(server.make_url("/")))
        assert resp.content_length == len(body)
        assert await resp.read() == body
        assert client.pooled == 1

    async def test_chunked_body_and_the_connection_reused(self, raw: StartRaw,
                                                          client: UpstreamClient) -> None:
        up = await raw(replies(CHUNKED, OK))
        assert await get(client, up.url()) == b"hello world"
        assert await get(client, up.url()) == b"ok"
        assert up.connections == 1

    @pytest.mark.parametrize(("encoding", "compress"), [
        ("gzip", gzip.compress), ("deflate", zlib.compress)])
    async def test_compressed_body_is_decoded(
            self, raw: StartRaw, client: UpstreamClient, encoding: str,
            compress: Callable[[bytes], bytes]) -> None:
        packed = compress(b'{"text": "hello"}' * 100)
        up = await raw(replies(
            f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\n"
            f"Content-Length: {len(packed)}\r\n\r\n".encode() + packed))
        resp = await client.request("GET", up.url())
        assert await resp.read() == b'{"text": "hello"}' * 100
        assert resp.headers["Content-Encoding"] == encoding
        assert client.pooled == 1

    async def test_a_large_compressed_body_read_slowly(self, raw: StartRaw,
                                                       client: UpstreamClient) -> None:
        """16 MiB from 16 KiB of gzip: decoding fills the reader far past its high-water
        mark, so the connection pauses and resumes many times (the resume the client's
        protocol skips when nothing paused it must still happen when something did)."""
        plain = b'{"text": "hello"}' * (1024 * 1024)
        packed = gzip.compress(plain)
        up = await raw(replies(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
            + f"Content-Length: {len(packed)}\r\n\r\n".encode() + packed, OK))
        resp = await client.request("GET", up.url())
        got = bytearray()
        async for chunk in resp.content.iter_chunked(100_000):
            got += chunk
            await asyncio.sleep(0)
        assert got == plain
        assert await get(client, up.url()) == b"ok"  # the connection served again
        assert up.connections == 1

    @pytest.mark.parametrize("answer", [
        PARTIAL, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"],
        ids=["content-length", "chunked"])
    async def test_body_cut_short_raises_payload_error(
            self, raw: StartRaw, client: UpstreamClient, answer: bytes) -> None:
        up = await raw(once(answer))
        resp = await client.request("GET", up.url())
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        assert client.pooled == 0

    async def test_body_without_length_is_read_until_the_close(self, raw: StartRaw,
                                                               client: UpstreamClient) -> None:
        up = await raw(once(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of",
                            b" it"))
        resp = await client.request("GET", up.url())
        assert resp.content_length is None
        assert await resp.read() == b"all of it"
        assert client.pooled == 0

    @pytest.mark.parametrize(("method", "answer"), [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
    ], ids=["head", "204", "304"])
    async def test_answers_without_a_body_keep_the_connection(
            self, raw: StartRaw, client: UpstreamClient, method: str, answer: bytes) -> None:
        up = await raw(replies(answer, OK))
        resp = await client.request(method, up.url())
        async with hang_guard():  # waiting for a body that never comes
            assert await resp.read() == b""
        assert client.pooled == 1
        assert await get(client, up.url()) == b"ok"  # the next answer, not 5 bytes of it
        assert up.connections == 1
        assert request_head(up.requests[0])[0] == f"{method} / HTTP/1.1"

    @pytest.mark.parametrize("informational", [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    ], ids=["100", "103"])
    async def test_informational_answers_are_skipped(self, raw: StartRaw,
                                                     client: UpstreamClient,
                                                     informational: bytes) -> None:
        up = await raw(replies(informational + b"HTTP/1.1 201 Created\r\n"
                                               b"Content-Length: 4\r\n\r\nmade"))
        resp = await client.request("POST", up.url(), data=b"x")
        assert (resp.status, resp.reason) == (201, "Created")
        assert await resp.read() == b"made"
        assert client.pooled == 1

    @pytest.mark.parametrize("first_of", [
        lambda content: content.readline(),
        lambda content: anext(aiter(content.iter_any())),
        lambda content: anext(aiter(content.iter_chunked(1024))),
    ], ids=["readline", "iter_any", "iter_chunked"])
    async def test_stream_arrives_as_it_is_written(
            self, upstream: StartApp, client: UpstreamClient,
            first_of: Callable[[StreamReader], Awaitable[bytes]]) -> None:
        first_seen = asyncio.Event()

        async def events(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"data: 1\n\n")
            await first_seen.wait()  # the second event only once the client saw the first
            await resp.write(b"data: 2\n\n")
            await resp.write_eof()
            return resp

        server, _ = await upstream(web.get("/events", events))
        async with hang_guard():
            resp = await client.request("GET", str(server.make_url("/events")))
            assert resp.content_type == "text/event-stream"
            first = await first_of(resp.content)
            assert first.startswith(b"data: 1\n")
            first_seen.set()
            rest = await resp.content.read()
        assert first + rest == b"data: 1\n\ndata: 2\n\n"
        assert client.pooled == 1


# --- Failures ---------------------------------------------------------------------------------


class TestFailures:
    async def test_connection_refused(self, client: UpstreamClient) -> None:
        sock, url = refused_url()
        with sock, pytest.raises(aiohttp.ClientConnectorError) as info:
            await client.request("GET", url)
        assert not isinstance(info.value, aiohttp.ClientConnectorDNSError)
        assert isinstance(info.value.os_error, ConnectionRefusedError)

    async def test_unresolvable_host_is_the_dns_form(self, client: UpstreamClient) -> None:
        # The DNS form (a ClientConnectorError, and an OSError) is not wrapped again as a
        # plain ClientConnectorError.
        with pytest.raises(aiohttp.ClientConnectorDNSError) as info:
            await client.request("GET", "http://nonexistent.invalid/v1")
        assert info.value.host == "nonexistent.invalid"

    async def test_no_tls_handshake_within_the_bound_is_a_connect_timeout(
            self, raw: StartRaw, client: UpstreamClient) -> None:
        up = await raw(silent)  # accepts TCP, never answers the ClientHello
        with pytest.raises(aiohttp.ConnectionTimeoutError) as info:
            await client.request("GET", up.url(scheme="https"), connect_timeout=0.1)
        assert isinstance(info.value, TimeoutError)
        await up.wait_hangups(1)  # the half-open connection was closed
        assert up.connections == 1

    @pytest.mark.parametrize("method", ["GET", "POST"])
    async def test_closed_after_reading_the_request(self, raw: StartRaw,
                                                    client: UpstreamClient, method: str) -> None:
        up = await raw(replies(Hangup.CLOSE))
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.request(method, up.url())
        # A fresh connection is not retried: the upstream may have acted on the request.
        assert up.connections == 1

    async def test_garbage_instead_of_http(self, raw: StartRaw, client: UpstreamClient) -> None:
        up = await raw(replies(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
        with pytest.raises(aiohttp.ClientResponseError) as info:
            await client.request("GET", up.url("/v1"))
        assert info.value.request_info.url == URL(up.url("/v1"))
        assert client.pooled == 0

    async def test_idempotent_call_on_a_stale_connection_is_retried_on_a_fresh_one(
            self, raw: StartRaw, client: UpstreamClient) -> None:
        up = await raw(replies(OK, Hangup.CLOSE, b"HTTP/1.1 200 OK\r\n"
                                                 b"Content-Length: 5\r\n\r\nfresh"))
        assert await get(client, up.url()) == b"ok"
        assert await get(client, up.url()) == b"fresh"
        assert up.connections == 2
        assert len(up.requests) == 3

    async def test_post_on_a_stale_connection_is_not_retried(self, raw: StartRaw,
                                                             client: UpstreamClient) -> None:
        up = await raw(replies(OK, Hangup.CLOSE))
        assert await get(client, up.url()) == b"ok"
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.request("POST", up.url(), data=b"{}")
        assert up.connections == 1

    async def test_idempotent_call_on_a_reset_stale_connection_is_retried(
            self, raw: StartRaw, client: UpstreamClient) -> None:
        # An upstream closing an idle connection with the request unread sends an RST: a
        # ClientOSError, not a ServerDisconnectedError, and aiohttp's session retries it too.
        up = await raw(replies(OK, Hangup.RESET, OK))
        assert await get(client, up.url()) == b"ok"
        assert await get(client, up.url()) == b"ok"
        assert up.connections == 2


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return _make_certs(tmp_path_factory.mktemp("tls"))


class TestTLS:
    @pytest.fixture
    async def tls_url(self, upstream: StartApp, certs: tuple[Path, Path, Path]
                      ) -> tuple[str, Seen]:
        _, cert, key = certs
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        server, seen = await upstream(web.get("/", hello), tls=context)
        url = str(server.make_url("/"))
        assert url.startswith("https://127.0.0.1:")
        return url, seen

    @staticmethod
    def trusting(certs: tuple[Path, Path, Path]) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=certs[0])

    async def test_self_signed_fails_by_default(self, tls_url: tuple[str, Seen],
                                                client: UpstreamClient) -> None:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await client.request("GET", tls_url[0])
        assert tls_url[1].ports == []

    async def test_a_context_with_the_ca_verifies(self, tls_url: tuple[str, Seen],
                                                  client: UpstreamClient,
                                                  certs: tuple[Path, Path, Path]) -> None:
        assert await get(client, tls_url[0], tls=self.trusting(certs)) == b"hello"

    async def test_no_verification(self, tls_url: tuple[str, Seen], client: UpstreamClient) -> None:
        assert await get(client, tls_url[0], tls=False) == b"hello"

    async def test_connections_are_not_shared_across_contexts(
            self, tls_url: tuple[str, Seen], client: UpstreamClient,
            certs: tuple[Path, Path, Path]) -> None:
        url, seen = tls_url
        one, other = self.trusting(certs), self.trusting(certs)
        for tls in (one, other, False, one, other, False):
            assert await get(client, url, tls=tls) == b"hello"
        assert seen.connections == 3
        assert client.pooled == 3

    async def test_a_verified_connection_is_not_lent_to_a_default_call(
            self, tls_url: tuple[str, Seen], client: UpstreamClient,
            certs: tuple[Path, Path, Path]) -> None:
        assert await get(client, tls_url[0], tls=self.trusting(certs)) == b"hello"
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await client.request("GET", tls_url[0])


# --- The pool ---------------------------------------------------------------------------------


class TestPool:
    async def test_idle_connections_close_after_keepalive(
            self, raw: StartRaw, make_client: Callable[..., UpstreamClient]) -> None:
        client = make_client(keepalive=0.2)
        up = await raw(replies(OK, OK))
        assert await get(client, up.url()) == b"ok"
        assert client.pooled == 1
        await up.wait_hangups(1)  # closed by the client's sweep
        assert client.pooled == 0
        assert await get(client, up.url()) == b"ok"
        assert up.connections == 2

    async def test_keepalive_zero_keeps_idle_connections(
            self, raw: StartRaw, make_client: Callable[..., UpstreamClient]) -> None:
        client = make_client(keepalive=0)
        up = await raw(replies(OK, OK))
        assert await get(client, up.url()) == b"ok"
        await asyncio.sleep(0.3)  # past what closes them in the test above
        assert client.pooled == 1
        assert await get(client, up.url()) == b"ok"
        assert (up.connections, up.hangups) == (1, 0)

    async def test_close_closes_pooled_and_in_use_connections(self, raw: StartRaw,
                                                              client: UpstreamClient) -> None:
        pooled, in_use = await raw(replies(OK)), await raw(replies(PARTIAL))
        assert await get(client, pooled.url()) == b"ok"
        resp = await client.request("GET", in_use.url())
        assert resp.status == 200
        await client.close()
        await pooled.wait_hangups(1)
        await in_use.wait_hangups(1)
        assert client.pooled == 0
        with pytest.raises(RuntimeError, match="closed"):
            await client.request("GET", pooled.url())
        assert pooled.connections == 1

    async def test_concurrent_calls_open_connections_and_pool_them(self, upstream: StartApp,
                                                                   client: UpstreamClient) -> None:
        arrived: list[web.Request] = []
        both = asyncio.Event()

        async def meet(request: web.Request) -> web.Response:
            arrived.append(request)
            if len(arrived) == 2:
                both.set()
            await both.wait()  # each answers once both are in flight
            return web.Response(text="met")

        server, seen = await upstream(web.get("/", meet))
        url = str(server.make_url("/"))
        assert list(await asyncio.gather(get(client, url), get(client, url))) == [b"met"] * 2
        assert client.pooled == 2
        assert await get(client, url) == b"met"
        assert (seen.connections, client.pooled) == (2, 2)


# --- The response -----------------------------------------------------------------------------


class TestResponse:
    @pytest.fixture
    async def url(self, upstream: StartApp) -> Callable[[str], str]:
        async def latin(request: web.Request) -> web.Response:
            return web.Response(body="héllo".encode("latin-1"), status=201, reason="Made",
                                headers={"X-Thing": "1",
                                         "Content-Type": "text/plain; charset=latin-1"})

        async def json(request: web.Request) -> web.Response:
            return web.json_response({"a": 1})

        async def problem(request: web.Request) -> web.Response:
            return web.Response(body=b'{"title": "no"}', content_type="application/problem+json")

        async def json_as_text(request: web.Request) -> web.Response:
            return web.Response(body=b'{"a": 2}', content_type="text/plain")

        async def missing(request: web.Request) -> web.Response:
            return web.Response(status=404, text="nothing here")

        server, _ = await upstream(web.get("/latin", latin), web.get("/json", json),
                                   web.get("/problem", problem),
                                   web.get("/json-as-text", json_as_text),
                                   web.get("/missing", missing))
        return lambda path: str(server.make_url(path))

    async def test_status_line_and_headers(self, url: Callable[[str], str],
                                           client: UpstreamClient) -> None:
        resp = await client.request("GET", url("/latin"))
        assert (resp.status, resp.reason, resp.ok) == (201, "Made", True)
        assert resp.headers["x-thing"] == resp.headers["X-THING"] == "1"
        assert (resp.content_type, resp.charset, resp.content_length) == (
            "text/plain", "latin-1", 5)
        assert (resp.method, resp.url) == ("GET", URL(url("/latin")))
        assert resp.request_info.url == URL(url("/latin"))
        assert await resp.text() == "héllo"
        assert await resp.read() == "héllo".encode("latin-1")  # read once, kept

    async def test_json(self, url: Callable[[str], str], client: UpstreamClient) -> None:
        resp = await client.request("GET", url("/json"))
        assert (resp.content_type, resp.charset) == ("application/json", "utf-8")
        assert await resp.json() == {"a": 1}

    async def test_json_refuses_another_content_type_unless_told(
            self, url: Callable[[str], str], client: UpstreamClient) -> None:
        resp = await client.request("GET", url("/json-as-text"))
        with pytest.raises(aiohttp.ContentTypeError):
            await resp.json()
        assert await resp.json(content_type=None) == {"a": 2}

    async def test_json_accepts_a_structured_json_type(self, url: Callable[[str], str],
                                                       client: UpstreamClient) -> None:
        # As aiohttp's json(): application/*+json (RFC 6839) is JSON too.
        resp = await client.request("GET", url("/problem"))
        assert await resp.json() == {"title": "no"}

    async def test_raise_for_status(self, url: Callable[[str], str],
                                    client: UpstreamClient) -> None:
        resp = await client.request("GET", url("/missing"))
        assert not resp.ok
        with pytest.raises(aiohttp.ClientResponseError) as info:
            resp.raise_for_status()
        assert (info.value.status, info.value.message) == (404, "Not Found")
        assert info.value.request_info.url == URL(url("/missing"))
        (await client.request("GET", url("/json"))).raise_for_status()

    async def test_async_with_releases(self, url: Callable[[str], str],
                                       client: UpstreamClient) -> None:
        async with await client.request("GET", url("/json")) as resp:
            assert isinstance(resp, PooledResponse)
            assert await resp.json() == {"a": 1}
        assert client.pooled == 1

    async def test_release_is_awaitable(self, raw: StartRaw, client: UpstreamClient) -> None:
        up = await raw(replies(PARTIAL))
        resp = await client.request("GET", up.url())
        await resp.release()  # as code written against aiohttp does
        assert resp.closed
        await up.wait_hangups(1)

    async def test_close_wakes_a_reader_waiting_on_the_body(self, raw: StartRaw,
                                                            client: UpstreamClient) -> None:
        up = await raw(replies(PARTIAL))
        resp = await client.request("GET", up.url())
        reader = asyncio.create_task(resp.content.read())
        await asyncio.sleep(0)  # the reader now waits for the 7 missing bytes
        resp.close()
        # As aiohttp's ClientResponse: the reader wakes with a ClientError, never waits on.
        with pytest.raises(aiohttp.ClientConnectionError):
            async with hang_guard():
                await reader

    async def test_read_after_release_is_a_client_error(self, raw: StartRaw,
                                                        client: UpstreamClient) -> None:
        up = await raw(replies(PARTIAL))
        resp = await client.request("GET", up.url())
        resp.release()
        # A ClientError as from aiohttp (providers catch those), not its bare RuntimeError.
        with pytest.raises(aiohttp.ClientConnectionError):
            await resp.read()


# --- Through Provider.send --------------------------------------------------------------------


class TestThroughProvider:
    @pytest.fixture
    async def session(self) -> AsyncIterator[aiohttp.ClientSession]:
        async with aiohttp.ClientSession() as session:
            yield session

    @pytest.fixture
    def provider(self, session: aiohttp.ClientSession, client: UpstreamClient
                 ) -> Callable[..., OpenAIProvider]:
        def build(url: str, **model: Any) -> OpenAIProvider:
            built = OpenAIProvider(ModelConfig(name="gpt", provider="openai", url=url,
                                               token="sk-test-123456", **model), session)
            built.upstream_client = client
            return built

        return build

    @staticmethod
    def chat_request() -> ChatRequest:
        body = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
        return ChatRequest(body=body, raw=orjson.dumps(body))

    @staticmethod
    async def completion(request: web.Request) -> web.Response:
        assert (await request.json())["model"] == "gpt"
        return web.json_response({"choices": [{"index": 0, "message": {
            "role": "assistant", "content": "hello"}}]})

    async def test_plain_calls_go_over_the_client(self, upstream: StartApp,
                                                  client: UpstreamClient,
                                                  provider: Callable[..., OpenAIProvider]) -> None:
        server, seen = await upstream(web.post("/v1/chat/completions", self.completion))
        gpt = provider(str(server.make_url("/v1")))
        for _ in range(2):
            answer = await gpt.chat(self.chat_request())
            assert answer.data["choices"][0]["message"]["content"] == "hello"
        assert seen.connections == 1
        assert client.pooled == 1
        headers = seen.headers[0]
        assert headers["User-Agent"] == SERVER_SOFTWARE
        assert (headers["Accept"], headers["Accept-Encoding"]) == ("*/*", "gzip, deflate")
        assert headers["Authorization"] == "Bearer sk-test-123456"
        assert headers["Content-Type"] == "application/json"
        assert headers["Host"] == f"127.0.0.1:{server.port}"

    async def test_a_call_with_other_options_goes_through_the_session(
            self, upstream: StartApp, client: UpstreamClient,
            provider: Callable[..., OpenAIProvider]) -> None:
        server, seen = await upstream(web.get("/v1/models", hello))
        gpt = provider(str(server.make_url("/v1")))
        resp = await gpt.send("GET", gpt.endpoint("/models"), params={"page": "2"})
        try:
            assert await resp.read() == b"hello"
        finally:
            resp.release()
        assert not isinstance(resp, PooledResponse)
        assert seen.paths == ["/v1/models?page=2"]
        assert client.pooled == 0

    async def test_refused_is_a_connection_error(
            self, provider: Callable[..., OpenAIProvider]) -> None:
        sock, url = refused_url()
        with sock, pytest.raises(UpstreamError) as info:
            await provider(url + "v1").chat(self.chat_request())
        assert info.value.kind is ErrorKind.CONNECTION

    async def test_connect_timeout_is_a_timeout(self, raw: StartRaw,
                                                provider: Callable[..., OpenAIProvider]) -> None:
        up = await raw(silent)
        gpt = provider(up.url("/v1", scheme="https"), timeouts=TimeoutConfig(connect=0.1))
        # The model's connect bound, not the 10 s default: that would outlast this guard.
        with pytest.raises(UpstreamError) as info:
            async with asyncio.timeout(5):
                await gpt.chat(self.chat_request())
        assert info.value.kind is ErrorKind.TIMEOUT

    async def test_a_redirect_is_not_followed(self, upstream: StartApp,
                                              provider: Callable[..., OpenAIProvider]) -> None:
        async def moved(request: web.Request) -> web.Response:
            raise web.HTTPFound("/v2/chat/completions")

        server, seen = await upstream(web.post("/v1/chat/completions", moved),
                                      web.post("/v2/chat/completions", self.completion))
        with pytest.raises(UpstreamError) as info:
            await provider(str(server.make_url("/v1"))).chat(self.chat_request())
        assert (info.value.kind, info.value.upstream_status) == (ErrorKind.PROTOCOL, 302)
        assert seen.paths == ["/v1/chat/completions"]


def test_content_types_are_parsed_once_and_long_ones_never_kept() -> None:
    """Each short Content-Type value is parsed once for all answers; a long one (a hostile
    upstream's, up to the header limit) is parsed for its answer and not kept."""
    from aiproxy import upstream

    def parsed(value: str) -> tuple[str, str | None]:
        resp = object.__new__(upstream.PooledResponse)
        resp._content_type = None
        resp.headers = {"Content-Type": value}  # type: ignore[assignment]
        return (resp.content_type, resp.charset)

    short = 'Application/JSON; Charset="UTF-8"'
    assert parsed(short) == ("application/json", "UTF-8")
    assert upstream._CONTENT_TYPES[short] == ("application/json", "UTF-8")
    long = "text/plain; x=" + "a" * 8000 + "; charset=latin-1"
    assert parsed(long) == ("text/plain", "latin-1")
    assert long not in upstream._CONTENT_TYPES
