"""GigaChat provider against a fake Sber upstream (OAuth + chat + embeddings) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
import string
import struct
import subprocess
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import pytest
from aiohttp import web

from aiproxy.provider import (
    ChatRequest,
    ConfigError,
    EmbeddingsRequest,
    ErrorKind,
    ModelConfig,
    UpstreamError,
)
from aiproxy_providers.gigachat import GREEDY_TEMPERATURE, GigaChatProvider
from aiproxy_providers.gigachat.translate import call_id, state_of

CLIENT_ID = "client-id-123"
SECRET = "s3cr3t-value"
BASIC = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
NOW = 1_700_000_000.0

Handler = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class FakeGigaChat:
    """Sber's OAuth and API endpoints: records every call, answers what a test sets."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.oauth_calls: list[dict[str, Any]] = []
        self.api_calls: list[dict[str, Any]] = []
        self.oauth_status = 200
        self.oauth_delay = 0.0
        self.lifetime = 1800.0
        self.valid_tokens: set[str] = set()
        self.issued = 0
        self.reply: dict[str, Any] | Handler = completion("Hello!")
        self.base = self.oauth_url = ""

    async def oauth(self, request: web.Request) -> web.Response:
        self.oauth_calls.append({"headers": dict(request.headers), "body": await request.text()})
        if self.oauth_delay:
            await asyncio.sleep(self.oauth_delay)
        if self.oauth_status != 200:
            # Echo the credentials back, to show the provider scrubs them from messages.
            return web.json_response({"code": 6, "message": "credentials doesn't match: "
                                      + request.headers.get("Authorization", "")},
                                     status=self.oauth_status)
        self.issued += 1
        token = f"tok-{self.issued}"
        self.valid_tokens.add(token)
        return web.json_response({"access_token": token,
                                  "expires_at": int((self.clock() + self.lifetime) * 1000)})

    async def api(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.api_calls.append({"path": request.path, "headers": dict(request.headers),
                               "body": body})
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.valid_tokens:
            return web.json_response({"status": 401, "message": "Unauthorized"}, status=401)
        if callable(self.reply):
            return await self.reply(request, body)
        return web.json_response(self.reply)


def completion(content: str, *, finish: str = "stop", function_call: Any = None,
               usage: dict[str, int] | None = None) -> dict[str, Any]:
    """A GigaChat chat answer as post-chat documents it."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if function_call is not None:
        message["function_call"] = function_call
        message["functions_state_id"] = "77d3fb14-457a-46ba-937e-8d856156d003"
    return {"choices": [{"message": message, "index": 0, "finish_reason": finish}],
            "created": 1678878333, "model": "GigaChat:1.0.26.20", "object": "chat.completion",
            "usage": usage or {"prompt_tokens": 18, "completion_tokens": 68, "total_tokens": 86,
                               "precached_prompt_tokens": 4}}


def sse(events: list[Any], *, done: bool = True, raw: list[bytes] | None = None) -> Handler:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
        for line in raw or []:
            await resp.write(line)
        if done:
            await resp.write(b"data: [DONE]\n\n")
        return resp
    return handler


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"status": status, "message": message}, status=status,
                                 headers=headers)
    return handler


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _app(fake: FakeGigaChat) -> web.Application:
    app = web.Application()
    app.router.add_post("/api/v2/oauth", fake.oauth)
    app.router.add_post("/api/v1/chat/completions", fake.api)
    app.router.add_post("/api/v1/embeddings", fake.api)
    return app


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeGigaChat:
    upstream = FakeGigaChat()
    server = await aiohttp_server(_app(upstream))
    upstream.base = str(server.make_url("/api/v1"))
    upstream.oauth_url = str(server.make_url("/api/v2/oauth"))
    return upstream


def provider(fake: FakeGigaChat, session: aiohttp.ClientSession, *, name: str = "GigaChat",
             token: str | None = f"{CLIENT_ID}:{SECRET}", url: str | None = None,
             **options: Any) -> GigaChatProvider:
    p = GigaChatProvider(ModelConfig(name=name, provider="gigachat", url=url or fake.base,
                                     token=token,
                                     options={"oauth_url": fake.oauth_url, **options}), session)
    p.clock = fake.clock
    return p


def chat_request(stream: bool = False, **body: Any) -> ChatRequest:
    body.setdefault("model", "GigaChat")
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    if stream:
        body["stream"] = True
    return ChatRequest(body=body, raw=orjson.dumps(body), stream=stream)


def without_id(data: dict[str, Any]) -> dict[str, Any]:
    assert data["id"].startswith("chatcmpl-")
    return {k: v for k, v in data.items() if k != "id"}


# --- OAuth and the token cache ------------------------------------------------------------


async def test_oauth_request_and_plain_chat(fake: FakeGigaChat,
                                            session: aiohttp.ClientSession) -> None:
    p = provider(fake, session)
    resp = await p.chat(chat_request(temperature=0.5, max_tokens=100, seed=7, user="u1",
                                     presence_penalty=0, stream_options=None))

    [oauth] = fake.oauth_calls
    assert oauth["headers"]["Authorization"] == f"Basic {BASIC}"
    assert uuid.UUID(oauth["headers"]["RqUID"]).version == 4
    assert oauth["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert oauth["body"] == "scope=GIGACHAT_API_CORP"

    [call] = fake.api_calls
    assert call["path"] == "/api/v1/chat/completions"
    assert call["headers"]["Authorization"] == "Bearer tok-1"
    assert call["headers"]["Content-Type"] == "application/json"
    # seed, user, presence_penalty 0 are harmless and dropped.
    assert call["body"] == {"model": "GigaChat", "messages": [{"role": "user", "content": "Hi"}],
                            "temperature": 0.5, "max_tokens": 100}
    assert without_id(resp.data) == {
        "object": "chat.completion", "created": 1678878333, "model": "GigaChat",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 18, "completion_tokens": 68, "total_tokens": 86,
                  "prompt_tokens_details": {"cached_tokens": 4}},
    }


async def test_token_is_cached_across_requests(fake: FakeGigaChat,
                                               session: aiohttp.ClientSession) -> None:
    p = provider(fake, session)
    for _ in range(5):
        await p.chat(chat_request())
    assert len(fake.oauth_calls) == 1
    assert {c["headers"]["Authorization"] for c in fake.api_calls} == {"Bearer tok-1"}


async def test_token_is_refreshed_ahead_of_expiry(fake: FakeGigaChat,
                                                  session: aiohttp.ClientSession) -> None:
    p = provider(fake, session)
    await p.chat(chat_request())
    fake.clock.now = NOW + fake.lifetime - 61  # more than the 60 s margin left: reused
    await p.chat(chat_request())
    assert len(fake.oauth_calls) == 1
    fake.clock.now = NOW + fake.lifetime - 59  # inside the margin: refreshed before use
    await p.chat(chat_request())
    assert len(fake.oauth_calls) == 2
    assert fake.api_calls[-1]["headers"]["Authorization"] == "Bearer tok-2"


async def test_one_oauth_call_for_fifty_concurrent_requests(
        fake: FakeGigaChat, session: aiohttp.ClientSession) -> None:
    fake.oauth_delay = 0.05  # every request arrives while the token is being fetched
    p = provider(fake, session)
    answers = await asyncio.gather(*(p.chat(chat_request()) for _ in range(50)))
    assert len(fake.oauth_calls) == 1
    assert len(answers) == 50 and len(fake.api_calls) == 50


async def test_401_refreshes_the_token_once_and_retries(
        fake: FakeGigaChat, session: aiohttp.ClientSession) -> None:
    p = provider(fake, session)
    await p.chat(chat_request())
    fake.valid_tokens.clear()  # revoked early, though not expired
    resp = await p.chat(chat_request())
    assert resp.data["choices"][0]["message"]["content"] == "Hello!"
    assert len(fake.oauth_calls) == 2
    assert [c["headers"]["Authorization"] for c in fake.api_calls] == [
        "Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]


async def test_401_after_refresh_is_an_auth_error(fake: FakeGigaChat,
                                                  session: aiohttp.ClientSession) -> None:
    p = provider(fake, session)
    fake.reply = error(401, "Unauthorized")
    with pytest.raises(UpstreamError) as exc:
        await p.chat(chat_request())
    assert exc.value.kind is ErrorKind.AUTH
    assert len(fake.oauth_calls) == 2 and len(fake.api_calls) == 2


async def test_oauth_failure_is_auth_without_secrets(fake: FakeGigaChat,
                                                     session: aiohttp.ClientSession) -> None:
    fake.oauth_status = 401
    p = provider(fake, session)
    with pytest.raises(UpstreamError) as exc:
        await p.chat(chat_request())
    err = exc.value
    assert err.kind is ErrorKind.AUTH and err.status == 502 and err.upstream_status == 401
    assert "OAuth" in err.message and "credentials doesn't match" in err.message
    for secret in (SECRET, BASIC):
        assert secret not in str(err) and secret not in repr(err)
    assert fake.api_calls == []


async def test_scope_and_client_options(fake: FakeGigaChat,
                                        session: aiohttp.ClientSession) -> None:
    p = provider(fake, session, token=None, client_id=CLIENT_ID, client_secret=SECRET,
                 scope="GIGACHAT_API_PERS")
    await p.chat(chat_request())
    assert fake.oauth_calls[0]["headers"]["Authorization"] == f"Basic {BASIC}"
    assert fake.oauth_calls[0]["body"] == "scope=GIGACHAT_API_PERS"


async def test_authorization_key_and_full_chat_url(fake: FakeGigaChat,
                                                   session: aiohttp.ClientSession) -> None:
    # Sber's personal area gives the base64 key ready-made; an old url names the endpoint.
    p = provider(fake, session, token=BASIC, url=f"{fake.base}/chat/completions")
    await p.chat(chat_request())
    assert fake.oauth_calls[0]["headers"]["Authorization"] == f"Basic {BASIC}"
    assert fake.api_calls[0]["path"] == "/api/v1/chat/completions"


@pytest.mark.parametrize(("token", "options", "fragment"), [
    (None, {}, "token: required"),
    ("not base64!", {}, "authorization key"),
    ("id:secret", {"client_id": "a", "client_secret": "b"}, "not both"),
    (None, {"client_id": "a"}, "go together"),
    ("id:secret", {"scope": "GIGACHAT_API_PERSONAL"}, "scope: must be one of"),
    ("id:secret", {"insecure_skip_verify": "sometimes"}, "expected true or false"),
    ("id:secret", {"ca_bundle": "/nonexistent/ca.pem"}, "cannot load"),
])
async def test_config_errors(session: aiohttp.ClientSession, token: str | None,
                             options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        GigaChatProvider(ModelConfig(name="GigaChat", provider="gigachat", token=token,
                                     options=options), session)
    assert fragment in "\n".join(exc.value.errors)
    assert "secret" not in "\n".join(exc.value.errors).replace("client_secret", "")


# --- chat translation ---------------------------------------------------------------------

WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "weather_forecast", "description": "Weather forecast",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"]}}}


async def test_tools_both_directions(fake: FakeGigaChat, session: aiohttp.ClientSession) -> None:
    fake.reply = completion("", finish="function_call",
                            function_call={"name": "weather_forecast",
                                           "arguments": {"location": "Москва"}})
    p = provider(fake, session)
    resp = await p.chat(chat_request(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather"},
                                         {"type": "text", "text": "in Tver?"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "weather_forecast", "arguments": '{"location": "Tver"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 20°C"},
            {"role": "user", "content": "And Moscow?"},
        ],
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "weather_forecast"}},
        parallel_tool_calls=False))

    assert fake.api_calls[0]["body"] == {
        "model": "GigaChat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather\nin Tver?"},
            {"role": "assistant", "content": "",
             "function_call": {"name": "weather_forecast", "arguments": {"location": "Tver"}}},
            # GigaChat wants a JSON object as a function result: plain text is wrapped.
            {"role": "function", "name": "weather_forecast",
             "content": '{"result":"sunny, 20°C"}'},
            {"role": "user", "content": "And Moscow?"},
        ],
        "functions": [{"name": "weather_forecast", "description": "Weather forecast",
                       "parameters": WEATHER["function"]["parameters"]}],
        "function_call": {"name": "weather_forecast"},
    }
    choice = resp.data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"].pop("tool_calls")
    assert call.pop("id").startswith("call_")
    assert call == {"type": "function", "function": {"name": "weather_forecast",
                                                     "arguments": '{"location":"Москва"}'}}
    assert choice["message"] == {"role": "assistant", "content": None}
    assert resp.data["usage"]["total_tokens"] == 86


@pytest.mark.parametrize(("body", "sent"), [
    # post-chat: temperature > 0; "from 0 to 0.001" is the deterministic mode (defect 2).
    ({"temperature": 0}, {"temperature": GREEDY_TEMPERATURE}),
    ({"temperature": 0.0, "top_p": 0.5}, {"temperature": GREEDY_TEMPERATURE, "top_p": 0.5}),
    ({"temperature": 1.2}, {"temperature": 1.2}),
    # {type, schema, strict}, not OpenAI's nested {name, schema, strict} (defect 12).
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"type": "object"}, "strict": False}}},
     {"response_format": {"type": "json_schema", "schema": {"type": "object"},
                          "strict": False}}),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"type": "object"}}}},
     {"response_format": {"type": "json_schema", "schema": {"type": "object"}}}),
    ({"response_format": {"type": "json_object"}},
     {"response_format": {"type": "json_object"}}),
    ({"response_format": {"type": "text"}}, {}),
    # The v1 request's reasoning_effort: low, medium, high (defect 19).
    ({"reasoning_effort": "medium"}, {"reasoning_effort": "medium"}),
    ({"reasoning_effort": "minimal"}, {"reasoning_effort": "low"}),
    ({"reasoning_effort": "max"}, {"reasoning_effort": "high"}),
])
async def test_sampling_format_and_reasoning(fake: FakeGigaChat,
                                             session: aiohttp.ClientSession,
                                             body: dict[str, Any], sent: dict[str, Any]) -> None:
    await provider(fake, session).chat(chat_request(**body))
    assert fake.api_calls[0]["body"] == {
        "model": "GigaChat", "messages": [{"role": "user", "content": "Hi"}], **sent}


STATE = "77d3fb14-457a-46ba-937e-8d856156d003"


@pytest.mark.parametrize("state", [STATE, STATE.upper(), "not-a-uuid/+=", "ё" * 30])
def test_functions_state_id_round_trips_through_the_call_id(state: str) -> None:
    # post-chat: functions_state_id goes back on the assistant message (defect 20).
    made = call_id(state)
    assert made.startswith("call_gs")
    assert set(made) <= set(string.ascii_letters + string.digits + "_-")
    assert state_of(made) == state
    if state == STATE:
        assert len(made) == 40  # OpenAI's longest tool call id


@pytest.mark.parametrize("call_id", ["call_Xk3yJ2mB9qLw0sVt8nRa4Zc1", "get_weather_1byjy32y4hvq",
                                     "call_gsuNOTHEX", "call_gsb%%%", "call_gsb_-4", None])
def test_foreign_call_ids_carry_no_state(call_id: Any) -> None:
    assert state_of(call_id) is None


async def test_functions_state_id_both_directions(fake: FakeGigaChat,
                                                  session: aiohttp.ClientSession) -> None:
    fake.reply = completion("", finish="function_call",
                            function_call={"name": "weather_forecast", "arguments": {}})
    p = provider(fake, session)
    resp = await p.chat(chat_request(tools=[WEATHER]))
    [call] = resp.data["choices"][0]["message"]["tool_calls"]
    assert call["id"] == "call_gsu" + STATE.replace("-", "")
    await p.chat(chat_request(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "{}"}]))
    assert fake.api_calls[1]["body"]["messages"][1] == {
        "role": "assistant", "content": "", "functions_state_id": STATE,
        "function_call": {"name": "weather_forecast", "arguments": {}}}


@pytest.mark.parametrize(("choice", "tools", "expected"), [
    (None, [WEATHER], "auto"),
    ("auto", [WEATHER], "auto"),
    ("none", [WEATHER], "none"),
    ("required", [WEATHER], {"name": "weather_forecast"}),
])
async def test_tool_choice(fake: FakeGigaChat, session: aiohttp.ClientSession, choice: Any,
                           tools: list[Any], expected: Any) -> None:
    body: dict[str, Any] = {"tools": tools}
    if choice is not None:
        body["tool_choice"] = choice
    await provider(fake, session).chat(chat_request(**body))
    assert fake.api_calls[0]["body"]["function_call"] == expected


async def test_parallel_tool_calls_become_call_result_pairs(
        fake: FakeGigaChat, session: aiohttp.ClientSession) -> None:
    await provider(fake, session).chat(chat_request(messages=[
        {"role": "user", "content": "Tver and Moscow?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "a", "type": "function",
             "function": {"name": "weather_forecast", "arguments": '{"location": "Tver"}'}},
            {"id": "b", "type": "function",
             "function": {"name": "weather_forecast", "arguments": '{"location": "Moscow"}'}}]},
        {"role": "tool", "tool_call_id": "b", "content": '{"t": 18}'},
        {"role": "tool", "tool_call_id": "a", "content": "[1, 2]"},
    ], tools=[WEATHER]))
    assert fake.api_calls[0]["body"]["messages"][1:] == [
        {"role": "assistant", "content": "Checking.",
         "function_call": {"name": "weather_forecast", "arguments": {"location": "Tver"}}},
        {"role": "function", "name": "weather_forecast", "content": '{"result":[1,2]}'},
        {"role": "assistant", "content": "",
         "function_call": {"name": "weather_forecast", "arguments": {"location": "Moscow"}}},
        {"role": "function", "name": "weather_forecast", "content": '{"t": 18}'},
    ]


@pytest.mark.parametrize(("upstream", "expected"), [
    ("stop", "stop"), ("length", "length"), ("blacklist", "content_filter"),
])
async def test_finish_reasons(fake: FakeGigaChat, session: aiohttp.ClientSession,
                              upstream: str, expected: str) -> None:
    fake.reply = completion("…", finish=upstream)
    resp = await provider(fake, session).chat(chat_request())
    assert resp.data["choices"][0]["finish_reason"] == expected


async def test_finish_reason_error_is_retryable(fake: FakeGigaChat,
                                                session: aiohttp.ClientSession) -> None:
    fake.reply = completion("half an ans", finish="error")
    with pytest.raises(UpstreamError) as exc:
        await provider(fake, session).chat(chat_request())
    assert exc.value.kind is ErrorKind.OVERLOADED


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 2}, "n"),
    ({"stop": ["\n"]}, "stop"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
    ({"reasoning_effort": "none"}, "reasoning_effort"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema.schema"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "other"}}],
      "tool_choice": "required"}, "tool_choice"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
])
async def test_unsupported_parameters_are_400(fake: FakeGigaChat,
                                              session: aiohttp.ClientSession,
                                              body: dict[str, Any], param: str) -> None:
    with pytest.raises(UpstreamError) as exc:
        await provider(fake, session).chat(chat_request(**body))
    assert exc.value.kind is ErrorKind.BAD_REQUEST
    assert exc.value.status == 400 and exc.value.param == param
    assert fake.api_calls == []  # refused before any upstream call


@pytest.mark.parametrize(("status", "headers", "kind", "client_status"), [
    (429, {"Retry-After": "7"}, ErrorKind.RATE_LIMITED, 429),
    (402, {}, ErrorKind.RATE_LIMITED, 429),
    (413, {}, ErrorKind.CONTEXT_LENGTH, 400),
    (422, {}, ErrorKind.BAD_REQUEST, 422),
    (404, {}, ErrorKind.BAD_REQUEST, 404),
    (500, {}, ErrorKind.OVERLOADED, 502),
    (503, {}, ErrorKind.OVERLOADED, 502),
])
async def test_error_statuses(fake: FakeGigaChat, session: aiohttp.ClientSession, status: int,
                              headers: dict[str, str], kind: ErrorKind,
                              client_status: int) -> None:
    fake.reply = error(status, "Invalid params: something", headers)
    with pytest.raises(UpstreamError) as exc:
        await provider(fake, session).chat(chat_request())
    assert exc.value.kind is kind and exc.value.status == client_status
    assert exc.value.upstream_status == status
    assert "Invalid params: something" in exc.value.message
    if headers:
        assert exc.value.retry_after == 7


# --- streaming ----------------------------------------------------------------------------

def delta_event(delta: dict[str, Any], finish: str | None = None,
                usage: dict[str, int] | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"delta": delta, "index": 0}
    if finish:
        choice["finish_reason"] = finish
    event: dict[str, Any] = {"choices": [choice], "created": 1683034756,
                             "model": "GigaChat:latest", "object": "chat.completion"}
    if usage:
        event["usage"] = usage
    return event


async def collect(p: GigaChatProvider, request: ChatRequest) -> list[dict[str, Any]]:
    return [chunk async for chunk in p.stream(request)]


async def test_stream_text(fake: FakeGigaChat, session: aiohttp.ClientSession) -> None:
    # The event stream of Sber's streaming page, with the final usage GigaChat adds.
    fake.reply = sse([
        delta_event({"content": "GigaChat", "role": "assistant"}),
        delta_event({"content": " спешит"}),
        delta_event({"content": " на помощь"}, finish="stop",
                    usage={"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}),
    ])
    chunks = await collect(provider(fake, session),
                           chat_request(stream=True, stream_options={"include_usage": True}))
    assert fake.api_calls[0]["body"]["stream"] is True
    assert fake.api_calls[0]["headers"]["Accept"] == "text/event-stream"
    assert len({(c["id"], c["created"], c["model"], c["object"]) for c in chunks}) == 1
    assert chunks[0]["model"] == "GigaChat" and chunks[0]["object"] == "chat.completion.chunk"
    # The kit's framing, as OpenAI streams: the role in a chunk of its own, then the text.
    assert [c["choices"] for c in chunks] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "GigaChat"}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " спешит"}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " на помощь"}, "finish_reason": None}],
        [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        [],
    ]
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4,
                                   "total_tokens": 9}


async def test_stream_without_include_usage_has_no_usage_chunk(
        fake: FakeGigaChat, session: aiohttp.ClientSession) -> None:
    fake.reply = sse([delta_event({"content": "Hi", "role": "assistant"}, finish="length",
                                  usage={"prompt_tokens": 1, "completion_tokens": 1,
                                         "total_tokens": 2})])
    chunks = await collect(provider(fake, session), chat_request(stream=True))
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert all("usage" not in c for c in chunks)


async def test_stream_function_call(fake: FakeGigaChat, session: aiohttp.ClientSession) -> None:
    fake.reply = sse([delta_event({"role": "assistant", "content": "",
                                   "function_call": {"name": "weather_forecast",
                                                     "arguments": {"location": "Tver"}}},
                                  finish="function_call")])
    chunks = await collect(provider(fake, session), chat_request(stream=True, tools=[WEATHER]))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    [call] = chunks[1]["choices"][0]["delta"].pop("tool_calls")
    assert call.pop("id").startswith("call_")
    assert call == {"index": 0, "type": "function",
                    "function": {"name": "weather_forecast", "arguments": '{"location":"Tver"}'}}
    assert chunks[1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]


@pytest.mark.parametrize("reply", [
    sse([delta_event({"content": "Hi", "role": "assistant"})], done=False),
    sse([delta_event({"content": "Hi", "role": "assistant"})], raw=[b"data: {oops\n\n"]),
])
async def test_stream_cut_or_malformed_is_protocol(fake: FakeGigaChat,
                                                   session: aiohttp.ClientSession,
                                                   reply: Handler) -> None:
    fake.reply = reply
    chunks: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError) as exc:
        async for chunk in provider(fake, session).stream(chat_request(stream=True)):
            chunks.append(chunk)
    assert exc.value.kind is ErrorKind.PROTOCOL
    # What arrived before the fault was passed on: the opening chunk and "Hi".
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "Hi"}]


async def test_stream_refreshes_token_on_401(fake: FakeGigaChat,
                                             session: aiohttp.ClientSession) -> None:
    p = provider(fake, session)
    await p.chat(chat_request())
    fake.valid_tokens.clear()
    fake.reply = sse([delta_event({"content": "ok", "role": "assistant"}, finish="stop")])
    chunks = await collect(p, chat_request(stream=True))
    assert chunks[1]["choices"][0]["delta"] == {"content": "ok"}
    assert len(fake.oauth_calls) == 2


async def test_stream_early_aclose_closes_the_connection(fake: FakeGigaChat) -> None:
    disconnected = asyncio.Event()

    async def endless(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:  # ten seconds of tokens, unless the client goes away first
            for _ in range(1000):
                await resp.write(b"data: " + orjson.dumps(delta_event({"content": "la"}))
                                 + b"\n\n")
                await asyncio.sleep(0.01)
        finally:
            disconnected.set()  # the test server cancels a handler whose client left
        return resp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        p = provider(fake, session)
        fake.reply = endless
        stream = cast(AsyncGenerator[dict[str, Any], None], p.stream(chat_request(stream=True)))
        assert (await anext(stream))["choices"][0]["delta"]["role"] == "assistant"
        assert (await anext(stream))["choices"][0]["delta"]["content"] == "la"
        await stream.aclose()
        await asyncio.wait_for(disconnected.wait(), 5)
        fake.reply = completion("next")
        resp = await asyncio.wait_for(p.chat(chat_request()), 5)  # the one connection is free
        assert resp.data["choices"][0]["message"]["content"] == "next"


# --- embeddings ---------------------------------------------------------------------------

async def test_embeddings(fake: FakeGigaChat, session: aiohttp.ClientSession) -> None:
    fake.reply = {"object": "list", "model": "Embeddings", "data": [
        {"object": "embedding", "embedding": [0.5, -1.0], "index": 0,
         "usage": {"prompt_tokens": 3}},
        {"object": "embedding", "embedding": [0.25, 2.0], "index": 1,
         "usage": {"prompt_tokens": 4}}]}
    p = provider(fake, session, name="gigachat/Embeddings")
    body: dict[str, Any] = {"model": "gigachat/Embeddings", "input": ["one", "two"]}
    resp = await p.embeddings(EmbeddingsRequest(body=body, raw=orjson.dumps(body)))
    assert fake.api_calls[0]["path"] == "/api/v1/embeddings"
    assert fake.api_calls[0]["body"] == {"model": "Embeddings", "input": ["one", "two"]}
    assert resp.data == {"object": "list", "model": "gigachat/Embeddings",
                         "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]},
                                  {"object": "embedding", "index": 1,
                                   "embedding": [0.25, 2.0]}],
                         "usage": {"prompt_tokens": 7, "total_tokens": 7}}

    fake.reply = {**fake.reply, "data": fake.reply["data"][:1]}  # one input, one vector
    body = {"model": "gigachat/Embeddings", "input": "one", "encoding_format": "base64"}
    resp = await p.embeddings(EmbeddingsRequest(body=body, raw=orjson.dumps(body)))
    assert fake.api_calls[1]["body"]["input"] == ["one"]
    encoded = resp.data["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(encoded)) == (0.5, -1.0)

    body = {"model": "gigachat/Embeddings", "input": [[1, 2, 3]]}
    with pytest.raises(UpstreamError) as exc:
        await p.embeddings(EmbeddingsRequest(body=body, raw=orjson.dumps(body)))
    assert exc.value.kind is ErrorKind.BAD_REQUEST and exc.value.param == "input"


# --- TLS: ca_bundle -----------------------------------------------------------------------

def _make_certs(tmp: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a 127.0.0.1 server certificate it signed (openssl CLI)."""
    # trustme and cryptography are not dependencies; the openssl CLI makes the pair (.ci/run
    # installs it). Missing, the test fails: CI must run every test, never skip it.
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl CLI is not installed (apt-get install openssl); this test "
                    "must run, not skip")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=tmp)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=aiproxy test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (tmp / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"


async def test_ca_bundle_makes_the_self_signed_upstream_trusted(
        aiohttp_server: Any, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    ca, cert, key = _make_certs(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    fake = FakeGigaChat()
    server = await aiohttp_server(_app(fake), ssl=server_ctx)
    fake.base = str(server.make_url("/api/v1"))
    fake.oauth_url = str(server.make_url("/api/v2/oauth"))
    assert fake.base.startswith("https://127.0.0.1:")

    with pytest.raises(UpstreamError) as exc:
        await provider(fake, session).chat(chat_request())
    assert exc.value.kind is ErrorKind.CONNECTION
    assert "ca_bundle" in exc.value.message  # the hint for the fix
    assert fake.oauth_calls == []

    resp = await provider(fake, session, ca_bundle=str(ca)).chat(chat_request())
    assert resp.data["choices"][0]["message"]["content"] == "Hello!"
    # Both the OAuth call and the chat call went over the verified TLS connection.
    assert len(fake.oauth_calls) == 1 and len(fake.api_calls) == 1

    # Development only, and never the default: no verification at all.
    resp = await provider(fake, session, insecure_skip_verify=True).chat(chat_request())
    assert resp.data["choices"][0]["message"]["content"] == "Hello!"

    # The context is per provider: the shared session still trusts only the system CAs.
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await session.get(fake.base)
