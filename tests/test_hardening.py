"""Hostile clients and hostile upstreams (issue 13): each finding, through a real server."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import zlib
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from aiproxy.limits import Limits, RedisRateLimiter
from aiproxy.plugins import ProviderRegistry
from aiproxy.provider import ChatRequest, ChatResponse, Provider
from tests.conftest import TOKEN, openai_model
from tests.redis_fixture import RedisServer

MSG = [{"role": "user", "content": "hello"}]
SECRET = "upstream-secret"  # the token openai_model() configures


class Hostile:
    """An upstream that says hostile things; each handler records what it received."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.sent_bytes = 0
        self.mode = "leak_error"
        self.redirect_to = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append({"headers": dict(request.headers), "body": body})
        mode = self.mode
        if mode == "leak_error":  # the key quoted back in every field of the envelope
            return web.json_response({"error": {
                "message": f"Incorrect API key provided: {SECRET}", "type": "invalid_request",
                "code": f"bad_key_{SECRET}", "param": SECRET}}, status=400)
        if mode == "leak_401":
            return web.json_response({"error": {"message": f"key {SECRET} revoked",
                                                "code": SECRET, "param": SECRET}}, status=401)
        if mode == "leak_stream":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                     "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"},
                                                "finish_reason": None}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            err = {"error": {"message": f"upstream died, key {SECRET}", "code": SECRET}}
            await resp.write(b"data: " + orjson.dumps(err) + b"\n\n")
            return resp
        if mode == "redirect":
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        if mode == "huge":  # an endless chunked body
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            block = b" " * 65536
            try:
                for _ in range(100_000):
                    await resp.write(block)
                    self.sent_bytes += len(block)
            except (ConnectionError, asyncio.CancelledError):
                pass
            return resp
        if mode == "endless_event":  # data: lines that never end the event
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            line = b"data: " + b"x" * 65530 + b"\n"
            try:
                for _ in range(100_000):
                    await resp.write(line)
                    self.sent_bytes += len(line)
            except (ConnectionError, asyncio.CancelledError):
                pass
            return resp
        if mode in ("retry_inf", "retry_huge"):
            value = "inf" if mode == "retry_inf" else "1e12"
            return web.json_response({"error": {"message": "slow down"}}, status=429,
                                     headers={"Retry-After": value})
        raise AssertionError(mode)


@pytest.fixture
async def hostile(aiohttp_server: Any) -> tuple[Hostile, str]:
    fake = Hostile()
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("/v1"))


class TestNothingSecretLeaves:
    @pytest.mark.parametrize("mode", ["leak_error", "leak_401"])
    async def test_error_fields_never_carry_the_key(self, start_proxy, hostile, mode):
        fake, url = hostile
        fake.mode = mode
        proxy = await start_proxy({"models": [openai_model("m", url)]})
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                   json={"model": "m", "messages": MSG}) as resp:
            text = await resp.text()
        assert resp.status in (400, 502)
        assert SECRET not in text
        error = orjson.loads(text)["error"]
        assert error["param"] is None  # not an identifier: dropped
        if mode == "leak_error":
            assert error["code"] is None
            assert "[redacted]" in error["message"]

    async def test_a_mid_stream_error_event_never_carries_the_key(self, start_proxy, hostile):
        fake, url = hostile
        fake.mode = "leak_stream"
        proxy = await start_proxy({"models": [openai_model("m", url)]})
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                   json={"model": "m", "messages": MSG, "stream": True}) as resp:
            body = await resp.read()
        assert b'"error"' in body
        assert SECRET.encode() not in body

    async def test_option_header_credentials_are_scrubbed_too(self, start_proxy, hostile):
        fake, url = hostile
        fake.mode = "leak_error"
        model = openai_model("m", url, token="another-token-1234")
        model["options"] = {"headers": {"api-key": SECRET}}
        proxy = await start_proxy({"models": [model]})
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                   json={"model": "m", "messages": MSG}) as resp:
            assert SECRET not in await resp.text()


class TestHostileUpstreams:
    async def test_redirects_are_not_followed(self, start_proxy, hostile, aiohttp_server):
        fake, url = hostile
        other = Hostile()
        other.mode = "leak_error"
        other_server = await aiohttp_server(other.app())
        fake.mode = "redirect"
        fake.redirect_to = str(other_server.make_url("/v1/chat/completions"))
        model = openai_model("m", url, retry={"max_retries": 0})
        model["options"] = {"headers": {"api-key": "header-credential-1"}}
        proxy = await start_proxy({"models": [model]})
        with pytest.raises(openai.APIStatusError) as info:
            await proxy.client.chat.completions.create(model="m", messages=MSG)
        assert info.value.status_code == 502
        assert "redirect" in info.value.message and "'m'" in info.value.message
        assert other.seen == []  # neither the prompt nor the api-key went to the other host

    async def test_an_endless_body_is_cut_at_its_bound(self, start_proxy, hostile):
        fake, url = hostile
        fake.mode = "huge"
        model = openai_model("m", url, retry={"max_retries": 0},
                             http_client_config={"max_response_size": 1024 * 1024})
        proxy = await start_proxy({"models": [model]})
        with pytest.raises(openai.APIStatusError) as info:
            await proxy.client.chat.completions.create(model="m", messages=MSG)
        assert info.value.status_code == 502
        assert "bound" in info.value.message
        await asyncio.sleep(0.1)
        assert fake.sent_bytes < 64 * 1024 * 1024  # it stopped reading long before the end
        # and the proxy still serves
        fake.mode = "leak_error"
        async with proxy.http.get(proxy.url("/ping")) as resp:
            assert resp.status == 200

    async def test_an_event_that_never_ends_is_cut(self, start_proxy, hostile):
        fake, url = hostile
        fake.mode = "endless_event"
        proxy = await start_proxy({"models": [openai_model("m", url,
                                                           retry={"max_retries": 0})]})
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                   json={"model": "m", "messages": MSG, "stream": True}) as resp:
            body = await resp.read()
        assert resp.status == 502
        error = orjson.loads(body)["error"]  # the envelope, naming the model
        assert error["type"] == "upstream_error" and "'m'" in error["message"]
        assert fake.sent_bytes < 40 * 1024 * 1024

    @pytest.mark.parametrize("mode", ["retry_inf", "retry_huge"])
    async def test_retry_after_is_validated_and_capped(self, start_proxy, hostile, mode):
        fake, url = hostile
        fake.mode = mode
        proxy = await start_proxy({"models": [openai_model("m", url,
                                                           retry={"max_retries": 0})]})
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                   json={"model": "m", "messages": MSG}) as resp:
            assert resp.status == 429
            retry_after = int(resp.headers.get("Retry-After", "1"))
        assert retry_after <= 86400
        # Not parked for millennia: a later request is refused by the park for at most a day.
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                   json={"model": "m", "messages": MSG}) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) <= 86400


class TestHostileClients:
    async def test_huge_max_tokens_is_refused_at_the_door(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock",
                                               "tokens_per_minute": 100}]})
        for field in ("max_tokens", "max_completion_tokens"):
            async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                       json={"model": "m", "messages": MSG,
                                             field: 2**63}) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["param"] == field

    async def test_non_utf8_authorization_is_a_401(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]})
        host, port = proxy.server.host, proxy.server.port
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe"
                     b"abc\r\nConnection: close\r\n\r\n")
        await writer.drain()
        head = await reader.read(65536)
        writer.close()
        assert head.startswith(b"HTTP/1.1 401")

    async def test_corrupt_and_oversized_compressed_bodies(self, start_proxy, make_settings_):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]},
                                  settings=make_settings_(max_body_size=64 * 1024))
        headers = {**proxy.auth, "Content-Encoding": "gzip", "Content-Type": "application/json"}
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=headers,
                                   data=b"\x1f\x8b\x08\x00garbage-not-gzip") as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
        bomb = gzip.compress(b'{"model": "m", "messages": [], "pad": "' + b"a" * 10_000_000
                             + b'"}')
        # Raw, since the server closes the connection after its answer, as it must with an
        # unread body (aiohttp's client may see the close before it reads the answer).
        reader, writer = await asyncio.open_connection(proxy.server.host, proxy.server.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + TOKEN.encode() + b"\r\nContent-Encoding: gzip\r\nContent-Length: "
                     + str(len(bomb)).encode() + b"\r\n\r\n" + bomb)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 413")
        assert b'"request_too_large"' in answer
        deflated = zlib.compress(orjson.dumps({"model": "m", "messages": MSG}))
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers={
                **headers, "Content-Encoding": "deflate"}, data=deflated) as resp:
            assert resp.status == 200

    @pytest.mark.parametrize("raw", [
        b'{"model": "m", "model": "other", "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "m", "mod\\u0065l": "other", "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "m", "max_tokens": 1, "messages": [], "max_tokens": 99999}',
        # An escaped spelling in a body whose other escapes are not \u ones.
        b'{"model": "m", "messages": [{"role": "user", "content": "a\\nb \\"c\\""}], '
        b'"str\\u0065am": true, "stream": false}',
        b'{"model": "m", "stream_options": {}, "messages": [{"role": "user", "content": "x"}],'
        b' "stream_options": {"include_usage": true}, "stream": true}',
    ])
    async def test_duplicate_keys_are_refused(self, start_proxy, raw):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"},
                                              {"name": "other", "provider": "mock"}]})
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers={
                **proxy.auth, "Content-Type": "application/json"}, data=raw) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "duplicate_key"

    def test_the_pre_check_finds_what_counting_each_key_finds(self):
        """The pre-check (one pattern, a prefix tree of the watched keys, and a memchr before
        the \\u search) flags exactly the bodies that the plain definition flags: a \\u
        escape anywhere, or a watched key written twice."""
        import itertools

        from aiproxy.http.body import _WATCHED_KEYS, _may_repeat_keys

        def plainly(raw: bytes) -> bool:
            return b"\\u" in raw or any(raw.count(b'"%s"' % k.encode()) > 1
                                         for k in _WATCHED_KEYS)

        near = ["stream_option", "streams", "max_token", "mode", "nn", "inputs", "prompts",
                "max_completion_token", "message", "dimension", "model_", "Model"]
        texts = ["plain", "a\\nb", 'say \\"model\\"', "\\u00e9", "\\\\u", "u\\"]
        bodies = []
        for key, other in itertools.product([*_WATCHED_KEYS, *near], repeat=2):
            for text in texts:
                bodies.append(b'{"%s": 1, "content": "%s", "%s": 2}' % (
                    key.encode(), text.encode(), other.encode()))
        assert len(bodies) > 2000
        flagged = [raw for raw in bodies if _may_repeat_keys(raw)]
        assert flagged == [raw for raw in bodies if plainly(raw)]
        assert 0 < len(flagged) < len(bodies)
        # Every watched key is found, and nothing near one.
        for key in _WATCHED_KEYS:
            assert _may_repeat_keys(b'{"%s": 1, "%s": 2}' % (key.encode(), key.encode()))
        for key in near:
            assert not _may_repeat_keys(b'{"%s": 1, "%s": 2}' % (key.encode(), key.encode()))

    async def test_escapes_in_values_are_fine(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]})
        raw = b'{"model": "m", "messages": [{"role": "user", "content": "\\u043f\\u0440"}]}'
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers={
                **proxy.auth, "Content-Type": "application/json"}, data=raw) as resp:
            assert resp.status == 200

    async def test_a_huge_model_name_is_echoed_and_logged_short(self, start_proxy, capsys):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]})
        name = "x" * 5 * 1024 * 1024
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                   json={"model": name, "messages": MSG}) as resp:
            assert resp.status == 404
            assert len(await resp.read()) < 1024
        out = capsys.readouterr()
        assert len(out.out) + len(out.err) < 64 * 1024

    @pytest.mark.parametrize("body", [
        {"model": "m", "input": [[False]]},
        {"model": "m", "input": "x", "dimensions": 10**9},
        {"model": "m", "input": ["x"] * 5000},
    ])
    async def test_embeddings_bounds(self, start_proxy, body):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]})
        async with proxy.http.post(proxy.url("/v1/embeddings"), headers=proxy.auth,
                                   json=body) as resp:
            assert resp.status == 400


class Fragile(Provider):
    """Crashes translating any request that mentions "crash"; answers others."""

    async def chat(self, request: ChatRequest) -> ChatResponse:
        if "crash" in str(request.body["messages"]):
            raise TypeError("cannot translate")
        return ChatResponse({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                             "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                 "role": "assistant", "content": "fine"}}]})


async def test_a_client_cannot_open_the_breaker_with_crafted_bodies(start_proxy):
    registry = ProviderRegistry()
    registry.register("fragile", Fragile)
    proxy = await start_proxy({"models": [{"name": "m", "provider": "fragile",
                                           "url": "http://127.0.0.1:9",
                                           "circuit_breaker": {"failures": 2}}]},
                              registry=registry)
    for _ in range(5):
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "crash"}])
        assert "could not translate" in info.value.message
    answer = await proxy.client.chat.completions.create(model="m", messages=MSG)
    assert answer.choices[0].message.content == "fine"


async def test_redis_token_arithmetic_cannot_be_overflowed(redis_server: RedisServer):
    limiter = RedisRateLimiter(redis_server.url, prefix="overflow:", timeout=5)
    limits = Limits(tokens_per_minute=141)
    try:
        first = await limiter.acquire("k", limits, 2**63 + 5)
        assert first.allowed  # an empty window takes one request, whatever its estimate
        await limiter.reconcile(first.reservation, limits, 2**64)  # type: ignore[arg-type]
        admitted = 0
        for _ in range(50):
            if (await limiter.acquire("k", limits, 10)).allowed:
                admitted += 1
        assert admitted == 0  # the window is full, not negative
    finally:
        await limiter.close()


@pytest.fixture
def make_settings_():
    from tests.conftest import make_settings

    return make_settings



@pytest.mark.parametrize("token", [["sk-live-abcdefghijklmnop"], {"k": "sk-live-abcdefghijklmnop"}])
def test_config_errors_never_print_a_secret(tmp_path, token):
    import yaml

    from tests.test_cli import run_cli

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "models": [{"name": "m", "provider": "openai", "token": token}],
        "keys": [{"name": "k", "key": token}]}))
    out = run_cli("--config", str(config), "--check-config",
                  env={"AUTH_TOKEN": "t", "RETRY_BASE_DELAY": "sk-live-abcdefghijklmnop"},
                  cwd=tmp_path)
    assert out.returncode == 1
    assert "models[0].token: expected a string, got a" in out.stderr
    assert "sk-live" not in out.stderr + out.stdout


async def test_a_rejected_reload_never_echoes_a_secret(tmp_path, start_proxy, capsys):
    import yaml

    from aiproxy.config import load_config
    from tests.conftest import make_settings

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "m", "provider": "openai",
                                                "token": ["sk-live-abcdefghijklmnop"]}]}))
    proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]},
                              source=lambda: (load_config(path, {}), make_settings()))
    async with proxy.http.post(proxy.url("/admin/reload"), headers=proxy.auth) as resp:
        assert resp.status == 400
        assert "sk-live" not in await resp.text()
    out = capsys.readouterr()
    assert "sk-live" not in out.out + out.err


class TestClientConnections:
    """A real process, as slowloris and floods meet it."""

    @pytest.fixture
    async def proxy_process(self, tmp_path):
        import os
        import subprocess
        import sys

        import yaml

        from tests.test_cli import free_port, wait_ready

        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"models": [
            {"name": "m", "provider": "mock"},
            {"name": "slow", "provider": "mock",
             "options": {"chunk_delay": 0.2, "reply": " ".join(["word"] * 60)}}]}))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
        env.update(AUTH_TOKEN=TOKEN, LOG_FORMAT="json", CLIENT_HEADER_TIMEOUT="0.5",
                   CLIENT_BODY_TIMEOUT="0.5", CLIENT_MAX_CONNECTIONS="8", SHUTDOWN_GRACE="1")
        proc = subprocess.Popen([sys.executable, "-m", "aiproxy", "--config", str(config),
                                 "--addr", f"127.0.0.1:{port}"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        await wait_ready(f"http://127.0.0.1:{port}", proc)
        yield proc, port
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    async def test_slow_and_missing_headers_are_cut(self, proxy_process):
        proc, port = proxy_process
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        started = asyncio.get_running_loop().time()
        for byte in b"GET /ping HTTP/1.1\r\nHost: x\r\n":  # never the blank line
            slow_w.write(bytes([byte]))
            await slow_w.drain()
            if await _closed(slow_r, 0.02):
                break
        assert await _closed(idle_r, 2.0)
        assert await _closed(slow_r, 2.0)
        assert asyncio.get_running_loop().time() - started < 3.0
        idle_w.close()
        slow_w.close()

    async def test_a_slow_body_gets_408(self, proxy_process):
        proc, port = proxy_process
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"model\"")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408")
        assert b'"request_timeout"' in answer

    async def test_a_flood_of_connections_is_capped_and_passes(self, proxy_process):
        proc, port = proxy_process
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
        await asyncio.sleep(0.2)
        closed = [await _closed(r, 0.05) for r, _ in held]
        assert sum(closed) >= 40 - 8  # past the cap, closed at once
        await asyncio.sleep(1.5)  # the rest time out without headers
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/ping") as resp:
                assert resp.status == 200
        for _, writer in held:
            writer.close()
        assert proc.poll() is None

    async def test_shutdown_ends_open_streams_with_an_error_event_within_the_grace(
            self, proxy_process):
        import signal

        proc, port = proxy_process
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                    headers={"Authorization": f"Bearer {TOKEN}"},
                                    json={"model": "slow", "stream": True,
                                          "messages": MSG}) as resp:
                await resp.content.readline()
                started = asyncio.get_running_loop().time()
                proc.send_signal(signal.SIGTERM)
                body = await resp.read()
        took = asyncio.get_running_loop().time() - started
        assert proc.wait(timeout=10) == 0
        assert b"[DONE]" not in body
        last = orjson.loads(body.strip().split(b"\n\n")[-1][len(b"data: "):])
        assert last["error"]["code"] == "proxy_shutdown"
        assert "shutting down" in last["error"]["message"]
        assert took < 1 + 2.0  # the grace, not twice it
        logs = [orjson.loads(line) for line in proc.stdout.read().splitlines()
                if line.startswith(b"{")]
        [line] = [entry for entry in logs if entry.get("event") == "request"
                  and entry.get("path") == "/v1/chat/completions"]
        assert line["status"] == 200 and line["stream_error"] == "overloaded"
        assert any(entry.get("event") == "grace_over" for entry in logs)


async def _closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(1024), within)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b""


class TestProtocolLevel:
    async def _exchange(self, host: str, port: int, head: bytes,
                        body: bytes | None = None) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(head)
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if body is not None and first.startswith(b"HTTP/1.1 100"):
            writer.write(body)
            await writer.drain()
            first += await asyncio.wait_for(reader.read(65536), 5)
        else:
            with contextlib.suppress(TimeoutError):
                first += await asyncio.wait_for(reader.read(65536), 1)
        writer.close()
        return first

    async def test_100_continue_only_after_auth_and_size_checks(self, start_proxy,
                                                                make_settings_):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]},
                                  settings=make_settings_(max_body_size=64 * 1024))
        host, port = proxy.server.host, proxy.server.port
        body = orjson.dumps({"model": "m", "messages": MSG})

        def head(auth: bytes, length: int) -> bytes:
            return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + auth
                    + b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                    b"Content-Length: " + str(length).encode() + b"\r\n\r\n")

        refused = await self._exchange(host, port, head(b"", len(body)), body)
        assert refused.startswith(b"HTTP/1.1 401")
        assert b'"missing_api_key"' in refused
        auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        too_big = await self._exchange(host, port, head(auth, 10 * 1024 * 1024), b"x")
        assert too_big.startswith(b"HTTP/1.1 413")
        granted = await self._exchange(host, port, head(auth, len(body)), body)
        assert granted.startswith(b"HTTP/1.1 100 Continue")
        assert b"HTTP/1.1 200" in granted

    async def test_protocol_errors_in_the_envelope(self, tmp_path):
        import os
        import subprocess
        import sys

        from tests.test_cli import ROOT, free_port, wait_ready

        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
        env.update(AUTH_TOKEN=TOKEN, LOG_FORMAT="json")
        proc = subprocess.Popen([sys.executable, "-m", "aiproxy", "--config",
                                 str(ROOT / "config" / "demo.yaml"), "--addr",
                                 f"127.0.0.1:{port}"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            await wait_ready(f"http://127.0.0.1:{port}", proc)
            bad_line = await self._exchange("127.0.0.1", port, b"NOT HTTP AT ALL\r\n\r\n")
            huge = await self._exchange("127.0.0.1", port, b"GET /ping HTTP/1.1\r\nHost: x\r\n"
                                        b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        finally:
            proc.terminate()
            proc.wait(30)
        for answer in (bad_line, huge):
            status = int(answer.split(b" ", 2)[1])
            assert 400 <= status < 500, answer[:200]
            assert b"application/json" in answer.split(b"\r\n\r\n")[0]
            body = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert body["error"]["code"] == "bad_http_request"
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
