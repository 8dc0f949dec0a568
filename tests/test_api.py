"""End-to-end: the official openai SDK against a real aiproxy in front of a fake upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from aiproxy.config import parse_config
from aiproxy.http import make_app
from tests.conftest import TOKEN, make_settings, openai_model


def demo_config(url: str) -> dict[str, Any]:
    return {"models": [
        openai_model("openai/gpt-test", url),
        {"name": "echo", "provider": "mock"},
    ]}


class TestChat:
    async def test_plain_completion_through_openai_provider(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy(demo_config(url))
        answer = await proxy.client.chat.completions.create(
            model="openai/gpt-test", messages=[{"role": "user", "content": "hi there"}],
            temperature=0.2)
        assert answer.choices[0].message.content == "reply from gpt-test: hi there"
        assert answer.model == "openai/gpt-test"
        assert answer.usage is not None and answer.usage.total_tokens == 12
        seen = fake.seen[-1]
        # The upstream gets its own model id and our upstream token, never the client's.
        assert seen.body["model"] == "gpt-test"
        assert seen.body["temperature"] == 0.2
        assert seen.headers["Authorization"] == "Bearer upstream-secret"

    async def test_body_passes_through_unchanged_when_model_ids_match(
            self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy({"models": [openai_model("same-id", url)]})
        raw = b'{"model":"same-id","messages":[{"role":"user","content":"x"}],"seed":7}'
        async with proxy.http.post(proxy.url("/chat/completions"), data=raw,
                                   headers=proxy.auth) as resp:
            assert resp.status == 200
        assert fake.seen[-1].raw == raw

    async def test_mock_provider_plain_and_stream(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]})
        answer = await proxy.client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "ping pong"}])
        assert answer.choices[0].message.content == "You said: ping pong"
        stream = await proxy.client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "ping pong"}], stream=True,
            stream_options={"include_usage": True})
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        assert text == "You said: ping pong"
        assert usage is not None and usage.completion_tokens == 4

    async def test_streaming_relays_every_chunk_and_done(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy(demo_config(url))
        stream = await proxy.client.chat.completions.create(
            model="openai/gpt-test", messages=[{"role": "user", "content": "a b c d e f"}],
            stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(pieces) == "reply from gpt-test: a b c d e f"
        # Raw check: the stream ends with [DONE], the model is the configured name.
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth, json={
                "model": "openai/gpt-test", "stream": True,
                "messages": [{"role": "user", "content": "x"}]}) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            body = await resp.read()
        events = [e for e in body.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        assert all(orjson.loads(e[6:])["model"] == "openai/gpt-test" for e in events[:-1])

    async def test_long_sse_lines_pass_intact(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.script("gpt-test", "long_line")
        proxy = await start_proxy(demo_config(url))
        stream = await proxy.client.chat.completions.create(
            model="openai/gpt-test", messages=[{"role": "user", "content": "q"}], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text.count("x") >= 300_000

    async def test_stream_without_done_is_finalised(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.script("gpt-test", "no_done")
        proxy = await start_proxy(demo_config(url))
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth, json={
                "model": "openai/gpt-test", "stream": True,
                "messages": [{"role": "user", "content": "x"}]}) as resp:
            body = await resp.read()
        assert body.endswith(b"data: [DONE]\n\n")


class TestStreamFailures:
    async def test_mid_stream_cut_surfaces_as_error_to_the_sdk(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.script("gpt-test", "cut")
        proxy = await start_proxy(demo_config(url))
        stream = await proxy.client.chat.completions.create(
            model="openai/gpt-test", messages=[{"role": "user", "content": "1 2 3 4 5 6 7 8"}],
            stream=True)
        got = []
        with pytest.raises(openai.APIError, match="interrupted"):
            async for chunk in stream:
                got.append(chunk)
        assert got  # some text had gone out before the failure
        # Exactly one upstream call: no retry after the first byte (no duplicated text).
        assert len(fake.requests_for("gpt-test")) == 1

    async def test_malformed_event_is_never_forwarded(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.script("gpt-test", "malformed")
        proxy = await start_proxy(demo_config(url))
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth, json={
                "model": "openai/gpt-test", "stream": True,
                "messages": [{"role": "user", "content": "1 2 3 4 5 6"}]}) as resp:
            body = await resp.read()
        assert b"broken" not in body  # never forwarded...
        # ...but one malformed event does not break an otherwise good stream: it is dropped
        # (and counted), and the answer goes on to its end.
        assert b'"error"' not in body
        assert body.endswith(b"data: [DONE]\n\n")
        async with proxy.http.get(proxy.url("/metrics"), headers=proxy.auth) as resp:
            assert 'aiproxy_malformed_events_total{model="openai/gpt-test"} 1.0' in (
                await resp.text())

    async def test_client_disconnect_closes_the_upstream_stream(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.chunk_delay = 0.2
        fake.chunks = 50
        proxy = await start_proxy(demo_config(url))
        words = " ".join(str(i) for i in range(100))
        resp = await proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                     json={"model": "openai/gpt-test", "stream": True,
                                           "messages": [{"role": "user", "content": words}]})
        await resp.content.readline()
        assert fake.open_streams == 1
        resp.close()  # the client goes away mid-stream
        for _ in range(50):
            if fake.open_streams == 0:
                break
            await asyncio.sleep(0.05)
        assert fake.open_streams == 0
        assert fake.disconnects == 1


class TestErrors:
    async def test_bad_token_raises_authentication_error(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]})
        bad = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="echo",
                                              messages=[{"role": "user", "content": "x"}])
        await bad.close()
        async with proxy.http.get(proxy.url("/v1/models")) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            body = await resp.json()
        assert body["error"]["type"] == "authentication_error"

    async def test_unknown_model_raises_not_found(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]})
        with pytest.raises(openai.NotFoundError) as info:
            await proxy.client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}])
        assert info.value.code == "model_not_found"

    @pytest.mark.parametrize(("payload", "needle"), [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "'model'"),
        (b'{"model": "echo"}', "'messages'"),
        (b'{"model": "echo", "messages": []}', "'messages'"),
        (b'{"model": "echo", "messages": ["hi"]}', "messages[0]"),
        (b'{"model": "echo", "messages": [{"role": "robot", "content": "x"}]}', "role"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
         "'stream'"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], '
         b'"temperature": "hot"}', "'temperature'"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], '
         b'"max_tokens": true}', "'max_tokens'"),
    ])
    async def test_malformed_requests_get_400_naming_the_field(self, start_proxy, payload,
                                                               needle):
        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]})
        async with proxy.http.post(proxy.url("/v1/chat/completions"), data=payload,
                                   headers=proxy.auth) as resp:
            assert resp.status == 400
            body = await resp.json()
        assert needle in body["error"]["message"]
        assert body["error"]["type"] == "invalid_request_error"

    async def test_sdk_raises_bad_request(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]})
        with pytest.raises(openai.BadRequestError):
            await proxy.client.chat.completions.create(model="echo", messages=[])

    async def test_body_too_large_is_413(self, start_proxy):
        from tests.conftest import make_settings

        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]},
                                  settings=make_settings(max_body_size=2048))
        big = {"model": "echo", "messages": [{"role": "user", "content": "x" * 4096}]}
        async with proxy.http.post(proxy.url("/v1/chat/completions"), json=big,
                                   headers=proxy.auth) as resp:
            assert resp.status == 413
            body = await resp.json()
        assert body["error"]["code"] == "request_too_large"

    async def test_unknown_path_404_and_wrong_method_405(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]})
        async with proxy.http.get(proxy.url("/v1/nothing"), headers=proxy.auth) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"
        async with proxy.http.get(proxy.url("/v1/chat/completions"),
                                  headers=proxy.auth) as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "POST"
            assert "error" in await resp.json()
            assert resp.headers["X-Request-ID"]
        # The methods of every route on the path, a dynamic one included.
        async with proxy.http.post(proxy.url("/v1/responses/resp_1"), headers=proxy.auth,
                                   json={}) as resp:
            assert resp.status == 405
            assert set(resp.headers["Allow"].split(",")) == {"GET", "HEAD", "DELETE"}
            assert (await resp.json())["error"]["message"] == (
                "method POST is not allowed on /v1/responses/resp_1")
        for method, path in (("PATCH", "/deep/er/path"), ("GET", "/"),
                             ("POST", "/v1/chat/completions/x")):
            async with proxy.http.request(method, proxy.url(path), headers=proxy.auth) as resp:
                assert resp.status == 404, (method, path)
                assert (await resp.json())["error"]["code"] == "not_found"
                assert resp.headers["X-Request-ID"]

    async def test_a_route_added_after_make_app_is_behind_the_gateway(self, aiohttp_server):
        # The gateway is bound to the routes at startup, not to those of make_app alone.
        app = make_app(parse_config({"models": [{"name": "echo", "provider": "mock"}]}, {}),
                       make_settings())

        async def extra(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        app.router.add_get("/extra", extra)
        server = await aiohttp_server(app)
        async with aiohttp.ClientSession() as http:
            async with http.get(server.make_url("/extra")) as resp:  # no token
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "missing_api_key"
                assert resp.headers["X-Request-ID"]
            async with http.get(server.make_url("/extra"),
                                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200
                assert await resp.json() == {"ok": True}
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
            async with http.post(server.make_url("/extra"),
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 405
                assert set(resp.headers["Allow"].split(",")) == {"GET", "HEAD"}

    @pytest.mark.parametrize(("fault", "status", "exc"), [
        ("400", 400, openai.BadRequestError),
        ("401", 502, openai.APIStatusError),
        ("500", 502, openai.APIStatusError),
    ])
    async def test_upstream_errors_reach_the_client_in_the_envelope(
            self, start_proxy, fake_upstream, fault, status, exc):
        fake, url = fake_upstream
        fake.defaults["gpt-test"] = fault
        proxy = await start_proxy(demo_config(url))
        with pytest.raises(exc) as info:
            await proxy.client.chat.completions.create(
                model="openai/gpt-test", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == status
        text = str(info.value.body)
        assert "upstream-secret" not in text and "sk-abc" not in text
        assert "127.0.0.1" not in text


class TestEndpoints:
    async def test_ping_is_public(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]})
        async with proxy.http.get(proxy.url("/ping")) as resp:
            assert resp.status == 200
            assert await resp.text() == "OK"

    async def test_models_lists_configured_models_and_groups(self, start_proxy):
        proxy = await start_proxy({"models": [
            {"name": "a", "provider": "mock", "model_size": "BIG"},
            {"name": "b", "provider": "mock", "model_size": "SMALL"}]})
        listed = await proxy.client.models.list()
        ids = [m.id for m in listed.data]
        assert ids == ["a", "b", "BIG", "SMALL"]
        assert listed.data[0].owned_by == "mock"
        async with proxy.http.get(proxy.url("/models"), headers=proxy.auth) as resp:
            body = await resp.json()
        assert body["object"] == "list"
        assert set(body["data"][0]) == {"id", "object", "created", "owned_by"}

    async def test_request_id_echoed_and_security_headers(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]})
        async with proxy.http.get(proxy.url("/v1/models"),
                                  headers={**proxy.auth, "X-Request-ID": "abc-123"}) as resp:
            assert resp.headers["X-Request-ID"] == "abc-123"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Cache-Control"] == "no-store"
        async with proxy.http.get(proxy.url("/ping")) as resp:
            assert len(resp.headers["X-Request-ID"]) == 32

    async def test_every_kind_of_answer_carries_the_request_id_and_nosniff(self, start_proxy):
        """Streams (whose headers leave inside the handler), errors, unknown paths and the
        100-continue refusal are stamped like plain answers."""
        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]})
        chat = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        cases = [
            ("POST", "/v1/chat/completions", {**chat, "stream": True}, proxy.auth, 200),
            ("POST", "/v1/messages", {"model": "echo", "max_tokens": 5, "stream": True,
                                      "messages": [{"role": "user", "content": "hi"}]},
             proxy.auth, 200),
            ("POST", "/v1/chat/completions", chat, {}, 401),
            ("GET", "/no/such/path", None, proxy.auth, 404),
        ]
        for method, path, body, auth, status in cases:
            async with proxy.http.request(method, proxy.url(path), json=body,
                                          headers={**auth, "X-Request-ID": "rid-7"}) as resp:
                await resp.read()
                assert resp.status == status, path
                assert resp.headers["X-Request-ID"] == "rid-7", path
                assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        async with proxy.http.post(proxy.url("/v1/chat/completions"), data=b"{}",
                                   headers={"Expect": "100-continue"}) as resp:
            assert resp.status == 401
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert len(resp.headers["X-Request-ID"]) == 32



async def test_upstream_quoting_the_key_never_leaks_it(start_proxy, aiohttp_server):
    from aiohttp import web

    secret = "sk-upstream-secret-1234567890"

    async def quote_key(request: web.Request) -> web.Response:
        return web.json_response({"error": {
            "message": f"bad request for key {request.headers['Authorization'][7:]}",
            "type": "invalid_request_error", "code": None}}, status=400)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", quote_key)
    server = await aiohttp_server(app)
    proxy = await start_proxy({"models": [{"name": "m", "provider": "openai", "token": secret,
                                           "url": str(server.make_url("/v1"))}]})
    with pytest.raises(openai.BadRequestError) as info:
        await proxy.client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}])
    assert secret not in str(info.value.body)
    assert "[redacted]" in info.value.message
