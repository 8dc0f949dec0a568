"""The proxy's own HTTP/1.1 server side (aiproxy/http/protocol.py), on the wire: what a
client sees of pipelining, keep-alive, closing, bodies left unread, upgrades, departures and
the bounds on idle connections."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from aiproxy.http.protocol import ProxyRunner, ProxyServer, _plain_routes
from aiproxy.http.state import OBSERVERS
from aiproxy.record import Record
from tests.conftest import TOKEN, make_settings, openai_model

MOCK = {"models": [{"name": "m", "provider": "mock"}]}
AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
CHAT = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def post(body: bytes = CHAT, *, auth: bytes = AUTH, extra: bytes = b"") -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + auth + extra
            + b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


PING = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"


def echoed(body: bytes) -> bool:
    """The mock's answer to CHAT."""
    return bool(orjson.loads(body)["choices"][0]["message"]["content"] == "You said: hi")


async def echo_answered(reader: asyncio.StreamReader) -> bool:
    """The next answer on the wire is a 200 with the mock's answer to CHAT."""
    status, _, body = await answer(reader)
    return status == "HTTP/1.1 200 OK" and echoed(body)


async def answer(reader: asyncio.StreamReader, *, head_only: bool = False
                 ) -> tuple[str, dict[str, str], bytes]:
    """One HTTP/1.x answer off the wire: (status line, headers, body by Content-Length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
    return lines[0], headers, body


async def closed(reader: asyncio.StreamReader, within: float = 2.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


@contextlib.asynccontextmanager
async def serving(app: web.Application
                  ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``app`` served by ``ProxyRunner`` on a free port, and a raw connection to it."""
    runner = ProxyRunner(app, settings=make_settings())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
        yield reader, writer
        writer.close()
    finally:
        await runner.cleanup()


@pytest.fixture
async def proxy(start_proxy: Any) -> Any:
    return await start_proxy(MOCK)


async def connect(proxy: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(proxy.server.host, proxy.server.port)


async def test_the_proxy_serves_with_its_own_server(proxy):
    assert isinstance(proxy.server.runner.server, ProxyServer)


async def test_pipelined_requests_are_answered_in_order(proxy):
    reader, writer = await connect(proxy)
    writer.write(PING + post() + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n")
    first, _, body1 = await answer(reader)
    second, headers2, body2 = await answer(reader)
    third, _, body3 = await answer(reader)
    assert first == second == third == "HTTP/1.1 200 OK"
    assert body1 == b"OK"
    assert echoed(body2)
    assert headers2["content-type"].startswith("application/json")
    assert "x-request-id" in headers2 and headers2["x-content-type-options"] == "nosniff"
    assert [m["id"] for m in orjson.loads(body3)["data"]] == ["m"]
    writer.close()


async def test_a_hundred_pipelined_requests_in_one_write(proxy):
    """More than the queue's bound at once: reading pauses and resumes, none is lost."""
    reader, writer = await connect(proxy)
    writer.write(post() * 100)
    contents = []
    for _ in range(100):
        status, _, body = await answer(reader)
        assert status == "HTTP/1.1 200 OK"
        contents.append(orjson.loads(body)["choices"][0]["message"]["content"])
    assert contents == ["You said: hi"] * 100
    writer.close()


async def test_keep_alive_then_connection_close(proxy):
    reader, writer = await connect(proxy)
    for _ in range(3):
        writer.write(post())
        status, headers, _ = await answer(reader)
        assert status == "HTTP/1.1 200 OK" and "connection" not in headers
    writer.write(post(extra=b"Connection: close\r\n"))
    status, headers, body = await answer(reader)
    assert status == "HTTP/1.1 200 OK" and headers["connection"] == "close"
    assert orjson.loads(body)["object"] == "chat.completion"
    assert await closed(reader)


async def test_http_1_0_is_answered_in_kind_and_closed(proxy):
    reader, writer = await connect(proxy)
    writer.write(b"GET /ping HTTP/1.0\r\n\r\n")
    status, _, _ = await answer(reader)
    assert status.startswith("HTTP/1.0 200")
    assert await closed(reader)


async def test_head_has_headers_and_no_body(proxy):
    reader, writer = await connect(proxy)
    writer.write(b"HEAD /ping HTTP/1.1\r\nHost: x\r\n\r\n" + PING)
    status, headers, _ = await answer(reader, head_only=True)
    assert status == "HTTP/1.1 200 OK"
    # The next answer follows at once: the HEAD answer carried no body.
    status, _, _ = await answer(reader)
    assert status == "HTTP/1.1 200 OK"
    writer.close()


async def test_a_refused_request_s_unread_body_does_not_break_the_connection(proxy):
    """A 401 is answered before the body is read; the body is read and dropped, and the
    next request on the connection is parsed from where it starts."""
    reader, writer = await connect(proxy)
    big = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 300_000}]})
    writer.write(post(big, auth=b""))
    status, _, body = await answer(reader)
    assert status.startswith("HTTP/1.1 401")
    assert orjson.loads(body)["error"]["code"] == "missing_api_key"
    writer.write(post())
    assert await echo_answered(reader)
    writer.close()


async def test_a_body_in_pieces(proxy):
    reader, writer = await connect(proxy)
    request = post()
    head, body = request.split(b"\r\n\r\n", 1)
    writer.write(head + b"\r\n\r\n")
    for i in range(0, len(body), 7):
        await asyncio.sleep(0.01)
        writer.write(body[i:i + 7])
    assert await echo_answered(reader)
    writer.close()


async def test_an_upgrade_is_answered_and_the_connection_closed(proxy):
    reader, writer = await connect(proxy)
    writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                 b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    status, _, _ = await answer(reader)
    assert status == "HTTP/1.1 200 OK"  # answered as plain HTTP: no protocol switch
    assert await closed(reader)


@pytest.mark.parametrize(("target", "status"), [
    (b"/v1/models?limit=1", 200),       # a query: resolved by the router
    (b"/v1/%6Dodels", 200),             # an escape: decoded by the router
    (b"/v1/models/m", 200),             # a pattern route
    (b"/v1/nothing-here", 404),
])
async def test_paths_the_fast_lookup_leaves_to_the_router(proxy, target, status):
    reader, writer = await connect(proxy)
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n")
    line, _, body = await answer(reader)
    assert line.startswith(f"HTTP/1.1 {status}")
    if status == 404:
        assert orjson.loads(body)["error"]["code"] == "not_found"
    writer.close()


async def test_a_method_a_plain_path_lacks_is_a_405_with_allow(proxy):
    reader, writer = await connect(proxy)
    writer.write(b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n")
    line, headers, body = await answer(reader)
    assert line.startswith("HTTP/1.1 405")
    assert "POST" in headers["allow"]
    assert orjson.loads(body)["error"]["message"].startswith("method GET is not allowed")
    writer.close()


async def test_a_client_that_leaves_cancels_its_request(start_proxy, fake_upstream):
    fake, url = fake_upstream
    fake.delay = 5.0
    proxy = await start_proxy({"models": [openai_model("slow", url)]})
    seen: list[Record] = []
    proxy.app[OBSERVERS].append(seen.append)
    reader, writer = await connect(proxy)
    writer.write(post(orjson.dumps({"model": "slow", "messages": [{"role": "user",
                                                                    "content": "hi"}]})))
    await writer.drain()
    for _ in range(100):
        if fake.upstream.requests:
            break
        await asyncio.sleep(0.02)
    started = asyncio.get_running_loop().time()
    writer.close()
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.02)
    [record] = seen
    assert record.status == 499
    assert asyncio.get_running_loop().time() - started < 2.0  # not the upstream's 5 s


async def test_idle_connections_close_after_their_bound_and_busy_ones_stay(start_proxy):
    proxy = await start_proxy(MOCK, settings=make_settings(client_header_timeout=0.4,
                                                          client_keepalive_timeout=0.4))
    idle_r, idle_w = await connect(proxy)  # never sends anything
    used_r, used_w = await connect(proxy)
    used_w.write(PING)
    await answer(used_r)  # then idle, between keep-alive requests
    busy_r, busy_w = await connect(proxy)
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < 1.5:  # a request every 0.15 s: never idle 0.4 s
        busy_w.write(PING)
        status, _, _ = await answer(busy_r)
        assert status == "HTTP/1.1 200 OK"
        await asyncio.sleep(0.15)
    assert await closed(idle_r, 0.1)
    assert await closed(used_r, 0.1)
    busy_w.write(PING)
    status, _, _ = await answer(busy_r)
    assert status == "HTTP/1.1 200 OK"
    assert proxy.server.runner.server.timed_out >= 2
    for w in (idle_w, used_w, busy_w):
        w.close()


async def test_an_answer_header_with_a_newline_is_never_sent():
    """A handler's header value with CR LF (response splitting): the serializer refuses it,
    and the client gets a 500 in the envelope, not the injected header."""

    async def split(request: web.Request) -> web.Response:
        return web.Response(body=b"{}", headers={"X-Bad": "a\r\nSet-Cookie: evil=1"})

    app = web.Application()
    app.router.add_get("/split", split)
    async with serving(app) as (reader, writer):
        writer.write(b"GET /split HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await answer(reader)
        assert status.startswith("HTTP/1.1 500")
        assert "set-cookie" not in headers
        assert orjson.loads(body)["error"]["code"] == "internal_error"
        assert await closed(reader)


def test_the_fast_lookup_agrees_with_the_router():
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/a/{rest:.*}", handler)   # registered first, and matches /a/b
    app.router.add_get("/a/b", handler)
    app.router.add_post("/c", handler)
    app.router.add_route("*", "/d", handler)
    plain = _plain_routes(app)
    assert "/a/b" not in plain  # the router would take the pattern first
    assert set(plain["/c"]) == {"POST"}
    assert "/d" not in plain  # any method: left to the router

    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request)

    with_middleware = web.Application(middlewares=[web.middleware(middleware)])
    with_middleware.router.add_post("/c", handler)
    assert _plain_routes(with_middleware) == {}


async def test_an_app_s_response_hooks_still_run():
    """An app with on_response_prepare hooks (not the proxy's own): its plain answers go
    through aiohttp's prepare, which runs them."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b"hi")

    async def hook(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Hooked"] = "yes"

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.on_response_prepare.append(hook)
    async with serving(app) as (reader, writer):
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await answer(reader)
        assert (status, headers["x-hooked"], body) == ("HTTP/1.1 200 OK", "yes", b"hi")


async def test_a_body_without_a_type_is_octet_stream():
    async def raw(request: web.Request) -> web.Response:
        return web.Response(body=b"\x00\x01")

    app = web.Application()
    app.router.add_get("/raw", raw)
    async with serving(app) as (reader, writer):
        writer.write(b"GET /raw HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await answer(reader)
        assert (status, headers["content-type"], body) == (
            "HTTP/1.1 200 OK", "application/octet-stream", b"\x00\x01")
        assert "date" in headers and headers["server"].startswith("Python/")


SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


async def test_a_request_s_context_variables_stay_its_own():
    """As when each request had a task of its own: what one request sets in a context
    variable, the next on the same connection does not see, while the request itself sees
    its own value across its awaits (and the callbacks it schedules do too)."""
    scheduled: list[str] = []

    async def setter(request: web.Request) -> web.Response:
        before = SEEN.get()
        SEEN.set(request.query["v"])
        await asyncio.sleep(0.01)
        asyncio.get_running_loop().call_soon(lambda: scheduled.append(SEEN.get()))
        return web.Response(text=f"{before}>{SEEN.get()}")

    app = web.Application()
    app.router.add_get("/set", setter)
    async with serving(app) as (reader, writer):
        writer.write(b"GET /set?v=a HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /set?v=b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await answer(reader))[2] == b"unset>a"
        assert (await answer(reader))[2] == b"unset>b"
        await asyncio.sleep(0.01)
        assert scheduled == ["a", "b"]


async def test_a_chunked_body_is_read(proxy):
    reader, writer = await connect(proxy)
    half = len(CHAT) // 2
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + AUTH
                 + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"%x\r\n" % half + CHAT[:half] + b"\r\n"
                 + b"%x\r\n" % (len(CHAT) - half) + CHAT[half:] + b"\r\n0\r\n\r\n")
    assert await echo_answered(reader)
    writer.close()


async def test_an_ambiguous_length_is_refused_and_the_connection_closed(proxy):
    """Content-Length beside Transfer-Encoding (request smuggling): the parser refuses it,
    the client gets the envelope, and nothing after it on the connection is read."""
    reader, writer = await connect(proxy)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + AUTH
                 + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                 + PING)
    status, headers, body = await answer(reader)
    assert status.startswith("HTTP/1.1 400") and headers["connection"] == "close"
    assert orjson.loads(body)["error"]["code"] == "bad_http_request"
    assert await closed(reader)
