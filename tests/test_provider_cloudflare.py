"""Cloudflare Workers AI provider against a fake ``/ai/run`` upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
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
    ImageRequest,
    ModelConfig,
    UpstreamError,
)
from aiproxy_providers.cloudflare import CloudflareProvider

ACCOUNT = "acc123"
TOKEN = "cf-api-token"
LLAMA = "@cf/meta/llama-3.1-8b-instruct"
FLUX = "@cf/black-forest-labs/flux-1-schnell"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(32))
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(32))
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(range(32))

Handler = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]


def envelope(result: Any) -> dict[str, Any]:
    """Cloudflare's API v4 envelope around a successful result."""
    return {"result": result, "success": True, "errors": [], "messages": []}


def failure(code: int, message: str) -> dict[str, Any]:
    return {"result": None, "success": False, "errors": [{"code": code, "message": message}],
            "messages": []}


class FakeWorkersAI:
    """``POST /client/v4/accounts/{account}/ai/run/{model}``: records calls, answers ``reply``."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.reply: dict[str, Any] | Handler = envelope({"response": "Hello!"})
        self.status = 200
        self.base = ""
        self.disconnected = asyncio.Event()

    async def run(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append({"path": request.path, "headers": dict(request.headers),
                           "body": body})
        if callable(self.reply):
            return await self.reply(request, body)
        return web.json_response(self.reply, status=self.status)


def sse(events: list[Any], *, done: bool = True, raw: list[bytes] | None = None) -> Handler:
    async def handler(request: web.Request, body: Any) -> web.StreamResponse:
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


def raw_reply(body: bytes, content_type: str, status: int = 200,
              headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request, _: Any) -> web.StreamResponse:
        return web.Response(body=body, status=status, content_type=content_type,
                            headers=headers)
    return handler


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeWorkersAI:
    upstream = FakeWorkersAI()
    app = web.Application()
    app.router.add_post("/client/v4/accounts/{account}/ai/run/{model:.+}", upstream.run)
    server = await aiohttp_server(app)
    upstream.base = str(server.make_url("/client/v4"))
    return upstream


def provider(fake: FakeWorkersAI, session: aiohttp.ClientSession, *,
             name: str = f"cloudflare/{LLAMA}", url: str | None = None,
             options: dict[str, Any] | None = None) -> CloudflareProvider:
    return CloudflareProvider(ModelConfig(
        name=name, provider="cloudflare", url=url or fake.base, token=TOKEN,
        options={"account_id": ACCOUNT} if options is None else options), session)


def chat_request(stream: bool = False, **body: Any) -> ChatRequest:
    body.setdefault("model", f"cloudflare/{LLAMA}")
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    if stream:
        body["stream"] = True
    return ChatRequest(body=body, raw=orjson.dumps(body), stream=stream)


def image_request(**body: Any) -> ImageRequest:
    body.setdefault("model", f"cloudflare/{FLUX}")
    body.setdefault("prompt", "a cyberpunk lizard")
    return ImageRequest(body=body, raw=orjson.dumps(body))


def without_id(data: dict[str, Any]) -> dict[str, Any]:
    assert data["id"].startswith("chatcmpl-")
    return {k: v for k, v in data.items() if k not in ("id", "created")}


# --- configuration ------------------------------------------------------------------------

async def test_plain_chat_both_directions(fake: FakeWorkersAI,
                                          session: aiohttp.ClientSession) -> None:
    fake.reply = envelope({"response": "Hello!", "usage": {
        "prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}})
    resp = await provider(fake, session).chat(chat_request(
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                               {"type": "text", "text": "there"}]}],
        max_completion_tokens=64, temperature=0.2, top_p=0.9, top_k=40, seed=7,
        repetition_penalty=1.1, presence_penalty=0.5, user="u1", parallel_tool_calls=True))

    [call] = fake.calls
    assert call["path"] == f"/client/v4/accounts/{ACCOUNT}/ai/run/{LLAMA}"
    assert call["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert call["headers"]["Content-Type"] == "application/json"
    assert call["body"] == {
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi\nthere"}],
        "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "top_k": 40, "seed": 7,
        "repetition_penalty": 1.1, "presence_penalty": 0.5}
    assert without_id(resp.data) == {
        "object": "chat.completion", "model": f"cloudflare/{LLAMA}",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}


@pytest.mark.parametrize(("name", "url_tail", "options", "path_model"), [
    # An old config: the url holds the account and the run base; "@cf/..." names stay whole.
    (LLAMA, f"/accounts/{ACCOUNT}/ai/run/", {}, LLAMA),
    (LLAMA, f"/accounts/{ACCOUNT}/ai/run", {"account_id": ACCOUNT}, LLAMA),
    # An old config may name the model in the url itself.
    ("llama-fast", f"/accounts/{ACCOUNT}/ai/run/{LLAMA}-fast", {}, f"{LLAMA}-fast"),
])
async def test_url_forms(fake: FakeWorkersAI, session: aiohttp.ClientSession, name: str,
                         url_tail: str, options: dict[str, Any], path_model: str) -> None:
    p = provider(fake, session, name=name, url=fake.base + url_tail, options=options)
    await p.chat(chat_request())
    assert fake.calls[0]["path"] == f"/client/v4/accounts/{ACCOUNT}/ai/run/{path_model}"


@pytest.mark.parametrize(("url", "token", "options", "fragment"), [
    (None, TOKEN, {}, "options.account_id: required"),
    (f"https://api.cloudflare.com/client/v4/accounts/{ACCOUNT}/ai/v1", TOKEN,
     {"account_id": "other"}, "does not match"),
    (None, TOKEN, {"account_id": ACCOUNT, "family": "gpt"}, "options.family: expected one of"),
    (None, None, {"account_id": ACCOUNT}, "token: required"),
    (f"https://api.cloudflare.com/client/v4/accounts/{ACCOUNT}/ai/run/", TOKEN,
     {"account_id": "other"}, "does not match"),
    (None, TOKEN, {"account": ACCOUNT}, "unknown key account"),
])
async def test_config_errors(session: aiohttp.ClientSession, url: str | None, token: str | None,
                             options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        CloudflareProvider(ModelConfig(name=LLAMA, provider="cloudflare", url=url, token=token,
                                       options=options), session)
    assert fragment in "\n".join(exc.value.errors)


async def test_ai_gateway_url(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    fake = FakeWorkersAI()
    app = web.Application()
    app.router.add_post("/v1/{account}/{gateway}/workers-ai/{model:.+}", fake.run)
    server = await aiohttp_server(app)
    url = str(server.make_url(f"/v1/{ACCOUNT}/gw/workers-ai"))
    await provider(fake, session, url=url, options={}).chat(chat_request())
    assert fake.calls[0]["path"] == f"/v1/{ACCOUNT}/gw/workers-ai/{LLAMA}"


# --- chat translation ---------------------------------------------------------------------

WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"]}}}


async def test_tool_calls(fake: FakeWorkersAI, session: aiohttp.ClientSession) -> None:
    fake.reply = envelope({"response": None, "tool_calls": [
        {"name": "get_weather", "arguments": {"location": "Tver"}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}})
    history = [
        {"role": "user", "content": "Weather in Tver?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location": "Moscow"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    resp = await provider(fake, session).chat(chat_request(
        messages=history, tools=[WEATHER], tool_choice="auto"))
    sent = [dict(m) for m in history]
    sent[1]["content"] = ""  # Workers AI wants a string where OpenAI allows null
    assert fake.calls[0]["body"] == {"messages": sent, "tools": [WEATHER]}
    choice = resp.data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"].pop("tool_calls")
    assert call.pop("id").startswith("call_")
    assert call == {"type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Tver"}'}}
    assert choice["message"] == {"role": "assistant", "content": None}
    assert resp.data["usage"]["total_tokens"] == 49


async def test_tool_choice_none_sends_no_tools(fake: FakeWorkersAI,
                                              session: aiohttp.ClientSession) -> None:
    await provider(fake, session).chat(chat_request(tools=[WEATHER], tool_choice="none"))
    assert "tools" not in fake.calls[0]["body"]


async def test_openai_shaped_result(fake: FakeWorkersAI, session: aiohttp.ClientSession) -> None:
    # Newer models answer /ai/run in the OpenAI shape inside the envelope.
    fake.reply = envelope({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "length",
         "message": {"role": "assistant", "content": "Hel"}}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})
    resp = await provider(fake, session).chat(chat_request())
    assert resp.data["choices"] == [{"index": 0, "finish_reason": "length",
                                     "message": {"role": "assistant", "content": "Hel"}}]


async def test_json_mode_object_becomes_content(fake: FakeWorkersAI,
                                                session: aiohttp.ClientSession) -> None:
    fmt = {"type": "json_schema", "json_schema": {"type": "object"}}
    fake.reply = envelope({"response": {"city": "Tver"}})
    resp = await provider(fake, session).chat(chat_request(response_format=fmt))
    assert fake.calls[0]["body"]["response_format"] == fmt
    assert resp.data["choices"][0]["message"]["content"] == '{"city":"Tver"}'


async def test_answer_using_the_whole_budget_is_length(fake: FakeWorkersAI,
                                                       session: aiohttp.ClientSession) -> None:
    fake.reply = envelope({"response": "one two three", "usage": {
        "prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}})
    resp = await provider(fake, session).chat(chat_request(max_tokens=3))
    assert resp.data["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 3}, "n"),
    ({"stop": "END"}, "stop"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"1": 2}}, "logit_bias"),
    ({"tools": [WEATHER], "tool_choice": "required"}, "tool_choice"),
    ({"messages": []}, "messages"),
])
async def test_unsupported_parameters_are_400(fake: FakeWorkersAI,
                                              session: aiohttp.ClientSession,
                                              body: dict[str, Any], param: str) -> None:
    with pytest.raises(UpstreamError) as exc:
        await provider(fake, session).chat(chat_request(**body))
    assert exc.value.kind is ErrorKind.BAD_REQUEST and exc.value.param == param
    assert fake.calls == []


# --- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "body", "headers", "kind", "client_status"), [
    (429, failure(3036, "You have used up your daily free allocation of 10,000 neurons."),
     {"Retry-After": "30"}, ErrorKind.RATE_LIMITED, 429),
    (429, failure(3040, "No more data centers to forward the request to"), {},
     ErrorKind.RATE_LIMITED, 429),
    (400, failure(5021, "AiError: The estimated number of input and maximum output tokens "
                  "exceeded this model context window limit."), {},
     ErrorKind.CONTEXT_LENGTH, 400),
    (400, failure(5007, "No such model @cf/meta/nope or task"), {}, ErrorKind.BAD_REQUEST, 400),
    (400, failure(8000, "Type mismatch of '/messages/0/content'"), {},
     ErrorKind.BAD_REQUEST, 400),
    (401, failure(10000, "Authentication error"), {}, ErrorKind.AUTH, 502),
    (403, failure(5016, "User has not agreed to Llama3.2 model terms"), {},
     ErrorKind.AUTH, 502),
    (500, failure(3043, "Internal server error"), {}, ErrorKind.OVERLOADED, 502),
    (503, {"errors": []}, {}, ErrorKind.OVERLOADED, 502),
    (408, failure(3007, "Request timeout"), {}, ErrorKind.TIMEOUT, 504),
])
async def test_error_envelopes(fake: FakeWorkersAI, session: aiohttp.ClientSession, status: int,
                               body: dict[str, Any], headers: dict[str, str], kind: ErrorKind,
                               client_status: int) -> None:
    fake.reply = raw_reply(orjson.dumps(body), "application/json", status, headers)
    with pytest.raises(UpstreamError) as exc:
        await provider(fake, session).chat(chat_request())
    err = exc.value
    assert err.kind is kind and err.status == client_status and err.upstream_status == status
    assert TOKEN not in err.message
    if body["errors"]:
        assert body["errors"][0]["message"] in err.message
    if headers:
        assert err.retry_after == 30


@pytest.mark.parametrize(("body", "kind"), [
    (failure(3036, "daily free allocation used up"), ErrorKind.RATE_LIMITED),
    (failure(7777, "something odd"), ErrorKind.OVERLOADED),
    ({"success": False, "errors": [], "result": None}, ErrorKind.OVERLOADED),
])
async def test_success_false_on_200_is_an_error(fake: FakeWorkersAI,
                                                session: aiohttp.ClientSession,
                                                body: dict[str, Any], kind: ErrorKind) -> None:
    fake.reply = body
    p = provider(fake, session)
    with pytest.raises(UpstreamError) as exc:
        await p.chat(chat_request())
    assert exc.value.kind is kind and exc.value.upstream_status == 200
    with pytest.raises(UpstreamError):  # a stream answered whole gets the same treatment
        [c async for c in p.stream(chat_request(stream=True))]


@pytest.mark.parametrize("reply", [
    raw_reply(b"<html>oops</html>", "application/json"),
    raw_reply(orjson.dumps(envelope({})), "application/json"),  # success, but no response
    raw_reply(orjson.dumps(envelope(None)), "application/json"),
])
async def test_answer_without_a_response_is_protocol(fake: FakeWorkersAI,
                                                     session: aiohttp.ClientSession,
                                                     reply: Handler) -> None:
    fake.reply = reply
    with pytest.raises(UpstreamError) as exc:
        await provider(fake, session).chat(chat_request())
    assert exc.value.kind is ErrorKind.PROTOCOL


# --- streaming ----------------------------------------------------------------------------

async def collect(p: CloudflareProvider, request: ChatRequest) -> list[dict[str, Any]]:
    return [chunk async for chunk in p.stream(request)]


async def test_stream_text(fake: FakeWorkersAI, session: aiohttp.ClientSession) -> None:
    fake.reply = sse([{"response": "New", "p": "abc"}, {"response": " York"},
                      {"response": "", "usage": {"prompt_tokens": 8, "completion_tokens": 2,
                                                 "total_tokens": 10}}])
    chunks = await collect(provider(fake, session),
                           chat_request(stream=True, stream_options={"include_usage": True}))
    assert fake.calls[0]["body"] == {"messages": [{"role": "user", "content": "Hi"}],
                                     "stream": True}
    assert fake.calls[0]["headers"]["Accept"] == "text/event-stream"
    assert len({(c["id"], c["created"], c["model"], c["object"]) for c in chunks}) == 1
    assert chunks[0]["model"] == f"cloudflare/{LLAMA}"
    assert chunks[0]["object"] == "chat.completion.chunk"
    # The kit's framing, as OpenAI streams: the role in a chunk of its own, then the text.
    assert [c["choices"] for c in chunks] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "New"}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " York"}, "finish_reason": None}],
        [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        [],
    ]
    assert chunks[-1]["usage"] == {"prompt_tokens": 8, "completion_tokens": 2,
                                   "total_tokens": 10}


async def test_stream_without_include_usage(fake: FakeWorkersAI,
                                            session: aiohttp.ClientSession) -> None:
    fake.reply = sse([{"response": "Hi"}, {"response": "", "usage": {
        "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}])
    chunks = await collect(provider(fake, session), chat_request(stream=True))
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert all("usage" not in c for c in chunks)


async def test_stream_tool_calls(fake: FakeWorkersAI, session: aiohttp.ClientSession) -> None:
    fake.reply = sse([{"response": "", "tool_calls": [
        {"name": "get_weather", "arguments": {"location": "Tver"}}]}])
    chunks = await collect(provider(fake, session), chat_request(stream=True, tools=[WEATHER]))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    delta = chunks[1]["choices"][0]["delta"]
    [call] = delta.pop("tool_calls")
    assert call.pop("id").startswith("call_")
    assert call == {"index": 0, "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Tver"}'}}
    assert delta == {}
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]


async def test_stream_answered_whole(fake: FakeWorkersAI, session: aiohttp.ClientSession) -> None:
    fake.reply = envelope({"response": "Whole.", "usage": {
        "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
    chunks = await collect(provider(fake, session),
                           chat_request(stream=True, stream_options={"include_usage": True}))
    assert [c["choices"] for c in chunks] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "Whole."}, "finish_reason": None}],
        [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        [],
    ]


@pytest.mark.parametrize("reply", [
    sse([{"response": "Hel"}], done=False),
    sse([{"response": "Hel"}], raw=[b"data: {not json\n\n"]),
    sse([{"response": "Hel"}, {"success": False, "errors": [{"code": 3040,
                                                            "message": "out of capacity"}]}]),
])
async def test_stream_cut_or_malformed(fake: FakeWorkersAI, session: aiohttp.ClientSession,
                                       reply: Handler) -> None:
    fake.reply = reply
    chunks: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError) as exc:
        async for chunk in provider(fake, session).stream(chat_request(stream=True)):
            chunks.append(chunk)
    assert exc.value.kind in (ErrorKind.PROTOCOL, ErrorKind.RATE_LIMITED)
    # What arrived before the fault was passed on: the opening chunk and "Hel".
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "Hel"}]


async def test_stream_early_aclose_releases_the_connection(
        fake: FakeWorkersAI, aiohttp_server: Any) -> None:
    async def endless(request: web.Request, body: Any) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:  # ten seconds of tokens, unless the client goes away first
            for _ in range(1000):
                await resp.write(b'data: {"response": "la"}\n\n')
                await asyncio.sleep(0.01)
        finally:
            # The test server cancels a handler whose client left; a write may fail first.
            fake.disconnected.set()
        return resp

    fake.reply = endless
    # One connection only: a leaked one would make the next request wait forever.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        p = provider(fake, session)
        stream = cast(AsyncGenerator[dict[str, Any], None], p.stream(chat_request(stream=True)))
        assert (await anext(stream))["choices"][0]["delta"] == {"role": "assistant",
                                                                "content": ""}
        assert (await anext(stream))["choices"][0]["delta"] == {"content": "la"}
        await stream.aclose()
        await asyncio.wait_for(fake.disconnected.wait(), 5)
        fake.reply = envelope({"response": "next"})
        resp = await asyncio.wait_for(p.chat(chat_request()), 5)
        assert resp.data["choices"][0]["message"]["content"] == "next"


# --- images -------------------------------------------------------------------------------

async def test_image_from_base64_json(fake: FakeWorkersAI,
                                      session: aiohttp.ClientSession) -> None:
    fake.reply = envelope({"image": base64.b64encode(JPEG).decode()})
    p = provider(fake, session, name=f"cloudflare/{FLUX}")
    resp = await p.images(image_request(steps=4, response_format="b64_json"))
    assert fake.calls[0]["path"] == f"/client/v4/accounts/{ACCOUNT}/ai/run/{FLUX}"
    assert fake.calls[0]["body"] == {"prompt": "a cyberpunk lizard", "steps": 4}
    assert resp.images == ((JPEG, "image/jpeg"),)


@pytest.mark.parametrize(("data", "media_type"), [(PNG, "image/png"), (WEBP, "image/webp")])
async def test_image_media_type_is_sniffed(fake: FakeWorkersAI,
                                           session: aiohttp.ClientSession, data: bytes,
                                           media_type: str) -> None:
    fake.reply = envelope({"image": base64.b64encode(data).decode()})
    resp = await provider(fake, session, name=f"cloudflare/{FLUX}").images(image_request())
    assert resp.images == ((data, media_type),)


async def test_image_as_raw_png(fake: FakeWorkersAI, session: aiohttp.ClientSession) -> None:
    # Stable diffusion models answer the bytes themselves.
    fake.reply = raw_reply(PNG, "image/png")
    p = provider(fake, session, name="@cf/stabilityai/stable-diffusion-xl-base-1.0")
    resp = await p.images(image_request(size="512x768", num_steps=20, seed=1))
    assert fake.calls[0]["path"].endswith("/ai/run/@cf/stabilityai/stable-diffusion-xl-base-1.0")
    assert fake.calls[0]["body"] == {"prompt": "a cyberpunk lizard", "width": 512,
                                     "height": 768, "num_steps": 20, "seed": 1}
    assert resp.images == ((PNG, "image/png"),)


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 2}, "n"), ({"size": "big"}, "size"), ({"prompt": ""}, "prompt"),
])
async def test_image_bad_requests(fake: FakeWorkersAI, session: aiohttp.ClientSession,
                                  body: dict[str, Any], param: str) -> None:
    with pytest.raises(UpstreamError) as exc:
        await provider(fake, session).images(image_request(**body))
    assert exc.value.kind is ErrorKind.BAD_REQUEST and exc.value.param == param
    assert fake.calls == []


@pytest.mark.parametrize(("reply", "kind"), [
    (failure(3036, "daily free allocation used up"), ErrorKind.RATE_LIMITED),
    (envelope({"image": "***not base64***"}), ErrorKind.PROTOCOL),
    (envelope({}), ErrorKind.PROTOCOL),
])
async def test_image_errors(fake: FakeWorkersAI, session: aiohttp.ClientSession,
                            reply: dict[str, Any], kind: ErrorKind) -> None:
    fake.reply = reply
    with pytest.raises(UpstreamError) as exc:
        await provider(fake, session).images(image_request())
    assert exc.value.kind is kind


# --- model families, streams, the OpenAI-compatible endpoint ----------------------------------

GLM = "@cf/zai-org/glm-4.7-flash"


def openai_chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """An OpenAI-shaped chunk, as the OpenAI-schema models stream (models/glm-4.7-flash/)."""
    return {"id": "up", "object": "chat.completion.chunk", "created": 1, "model": GLM,
            "choices": choices, **extra}


async def test_stream_with_n_keeps_choices_apart(fake: FakeWorkersAI,
                                                 session: aiohttp.ClientSession) -> None:
    # models/glm-4.7-flash/ takes n (1-128): its chunks carry each choice's index.
    fake.reply = sse([
        openai_chunk([{"index": 0, "delta": {"role": "assistant", "content": "A"}},
                      {"index": 1, "delta": {"role": "assistant", "content": "B"}}]),
        openai_chunk([{"index": 1, "delta": {}, "finish_reason": "length"},
                      {"index": 0, "delta": {}, "finish_reason": "stop"}])])
    p = provider(fake, session, name=GLM)
    chunks = await collect(p, chat_request(stream=True, n=2))
    assert fake.calls[0]["body"]["n"] == 2
    assert [c["choices"] for c in chunks] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "A"}, "finish_reason": None}],
        [{"index": 1, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        [{"index": 1, "delta": {"content": "B"}, "finish_reason": None}],
        [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        [{"index": 1, "delta": {}, "finish_reason": "length"}],
    ]


async def test_unindexed_fragments_continue_the_last_call(
        fake: FakeWorkersAI, session: aiohttp.ClientSession) -> None:
    fake.reply = sse([
        openai_chunk([{"index": 0, "delta": {"tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location"'}}]}}]),
        openai_chunk([{"index": 0, "delta": {"tool_calls": [
            {"function": {"arguments": ': "Tver"}'}}]}}]),
        openai_chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])])
    chunks = await collect(provider(fake, session, name=GLM),
                           chat_request(stream=True, tools=[WEATHER]))
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls == [
        {"index": 0, "id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"location"'}},
        {"index": 0, "function": {"arguments": ': "Tver"}'}}]


@pytest.mark.parametrize(("fmt", "sent"), [
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
     {"type": "json_schema", "json_schema": {"type": "object"}}),
    ({"type": "text"}, None),
])
async def test_json_mode_native(fake: FakeWorkersAI, session: aiohttp.ClientSession,
                                fmt: dict[str, Any], sent: Any) -> None:
    # https://developers.cloudflare.com/workers-ai/features/json-mode/
    await provider(fake, session).chat(chat_request(response_format=fmt))
    assert fake.calls[0]["body"].get("response_format") == sent


async def test_vision_text_only_and_limits(fake: FakeWorkersAI,
                                           session: aiohttp.ClientSession) -> None:
    # models/llama-3.2-11b-vision-instruct/: string contents; no image is no "image" key.
    p = provider(fake, session, name="@cf/meta/llama-3.2-11b-vision-instruct")
    await p.chat(chat_request(messages=[{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]))
    assert fake.calls[0]["body"] == {"messages": [{"role": "user", "content": "a\nb"}]}
    with pytest.raises(UpstreamError) as exc:
        await p.chat(chat_request(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]))
    assert exc.value.param == "messages[0].content[0]" and "base64" in exc.value.message


async def test_an_unknown_image_model_gets_what_was_sent(fake: FakeWorkersAI,
                                                         session: aiohttp.ClientSession) -> None:
    fake.reply = envelope({"image": base64.b64encode(PNG).decode()})
    p = provider(fake, session, name="@cf/acme/painter")
    await p.images(image_request(size="640x480", steps=3, seed=2))
    assert fake.calls[0]["body"] == {"prompt": "a cyberpunk lizard", "width": 640,
                                     "height": 480, "steps": 3, "seed": 2}


async def test_gateway_url_has_no_embeddings(session: aiohttp.ClientSession) -> None:
    p = CloudflareProvider(ModelConfig(
        name="bge", provider="cloudflare", token=TOKEN, upstream_model="@cf/baai/bge-m3",
        url="https://gateway.ai.cloudflare.com/v1/acc/gw/workers-ai"), session)
    with pytest.raises(UpstreamError) as exc:
        await p.embeddings(EmbeddingsRequest(body={"model": "bge", "input": "x"}, raw=b"{}"))
    assert exc.value.kind is ErrorKind.BAD_REQUEST and "ai/v1" in exc.value.message


async def test_compat_url_forms(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    # .../ai/v1, with or without /chat/completions: chat there, images on .../ai/run.
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path.endswith("/chat/completions"):
            return web.json_response({"id": "c", "object": "chat.completion", "created": 1,
                                      "model": LLAMA, "choices": [{
                                          "index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": "ok"}}]})
        return web.json_response(envelope({"image": base64.b64encode(PNG).decode()}))

    app = web.Application()
    app.router.add_post("/{tail:.+}", answer)
    server = await aiohttp_server(app)
    for tail in ("/ai/v1", "/ai/v1/chat/completions/"):
        url = str(server.make_url(f"/client/v4/accounts/{ACCOUNT}{tail}"))
        p = CloudflareProvider(ModelConfig(name=LLAMA, provider="cloudflare", url=url,
                                           token=TOKEN), session)
        resp = await p.chat(chat_request())
        assert resp.data["choices"][0]["message"]["content"] == "ok"
        await p.images(image_request())
    assert seen == [f"/client/v4/accounts/{ACCOUNT}/ai/v1/chat/completions",
                    f"/client/v4/accounts/{ACCOUNT}/ai/run/{LLAMA}"] * 2


async def test_streamed_logprobs(fake: FakeWorkersAI, session: aiohttp.ClientSession) -> None:
    # models/glm-4.7-flash/ takes logprobs and top_logprobs; its chunks carry them per choice.
    lp = {"content": [{"token": "Hi", "logprob": -0.2, "bytes": [72, 105], "top_logprobs": []}]}
    fake.reply = sse([openai_chunk([{"index": 0, "delta": {"content": "Hi"}, "logprobs": lp}]),
                      openai_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])])
    chunks = await collect(provider(fake, session, name=GLM),
                           chat_request(stream=True, logprobs=True, top_logprobs=1))
    assert fake.calls[0]["body"]["top_logprobs"] == 1
    assert [c["choices"][0]["logprobs"] for c in chunks] == [None, lp, None]
