"""Cloudflare Workers AI end to end: the openai SDK → aiproxy → a fake Workers AI on 127.0.0.1.

The fake answers in the shapes the model pages document
(https://developers.cloudflare.com/workers-ai/models/<model>/): the native ``/ai/run`` envelope
and stream, the OpenAI-shaped answers of the newer models, and the account's OpenAI-compatible
``/ai/v1`` endpoints. Each test checks what the client sees and what the fake received.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

ACCOUNT = "acc-e2e"
TOKEN = "cf-e2e-token-0123456789"
LLAMA = "@cf/meta/llama-3.1-8b-instruct"
VISION = "@cf/meta/llama-3.2-11b-vision-instruct"
GLM = "@cf/zai-org/glm-4.7-flash"
FLUX = "@cf/black-forest-labs/flux-1-schnell"
SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
BGE = "@cf/baai/bge-large-en-v1.5"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(32))
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(16))

Reply = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def envelope(result: Any) -> dict[str, Any]:
    """Cloudflare's API v4 envelope (https://developers.cloudflare.com/workers-ai/get-started/
    rest-api/)."""
    return {"result": result, "success": True, "errors": [], "messages": []}


def json_reply(data: Any, status: int = 200) -> Reply:
    async def reply(request: web.Request, body: Any) -> web.StreamResponse:
        return web.json_response(data, status=status)
    return reply


def sse(events: list[Any]) -> Reply:
    """``data: {...}`` events, then ``data: [DONE]``, as ``"stream": true`` answers."""
    async def reply(request: web.Request, body: Any) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp
    return reply


def openai_chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0,
                 **extra: Any) -> dict[str, Any]:
    """A chunk of the OpenAI-shaped stream the OpenAI-schema models send (models/glm-4.7-flash/)."""
    return {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": GLM,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish,
                         "logprobs": None}], **extra}


class FakeWorkersAI:
    """``/accounts/{id}/ai/run/{model}`` and ``/accounts/{id}/ai/v1/{chat/completions,
    embeddings}``, each answering the next queued reply (or a default)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.replies: list[Reply] = []
        self.base = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/client/v4/accounts/{account}/ai/run/{model:.+}", self.handle)
        app.router.add_post("/client/v4/accounts/{account}/ai/v1/{what:.+}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append((request.path, body))
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        if self.replies:
            return await self.replies.pop(0)(request, body)
        return web.json_response(envelope({"response": "Hello", "usage": {
            "prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}))

    def model(self, name: str, *, url: str | None = None, **extra: Any) -> dict[str, Any]:
        entry = {"name": name, "provider": "cloudflare", "token": TOKEN,
                 "url": url or self.base, **extra}
        if url is None:
            entry["options"] = {"account_id": ACCOUNT, **entry.get("options", {})}
        return entry

    def path(self, tail: str) -> str:
        return f"/client/v4/accounts/{ACCOUNT}{tail}"


@pytest.fixture
async def cf(aiohttp_server: Any) -> FakeWorkersAI:
    fake = FakeWorkersAI()
    server = await aiohttp_server(fake.app())
    fake.base = str(server.make_url("/client/v4"))
    return fake


async def proxy_for(start_proxy: Any, cf: FakeWorkersAI, *models: dict[str, Any]) -> Any:
    return await start_proxy({"models": list(models)})


def user(text: str = "Hi") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --- 7. images: what each model's schema takes -------------------------------------------

class TestImages:
    async def test_flux_gets_only_prompt_and_steps(self, start_proxy: Any,
                                                   cf: FakeWorkersAI) -> None:
        # models/flux-1-schnell/: input {prompt, steps (max 8)}, additionalProperties false;
        # answers {"image": base64}.
        cf.replies.append(json_reply(envelope({"image": base64.b64encode(JPEG).decode()})))
        proxy = await proxy_for(start_proxy, cf, cf.model(FLUX))
        answer = await proxy.client.images.generate(
            model=FLUX, prompt="a lizard", size="1024x1024", quality="hd",
            response_format="b64_json", extra_body={"steps": 6})
        assert base64.b64decode(answer.data[0].b64_json or "") == JPEG
        assert cf.seen == [(cf.path(f"/ai/run/{FLUX}"), {"prompt": "a lizard", "steps": 6})]

    @pytest.mark.parametrize(("extra", "param"), [
        ({"steps": 9}, "steps"),  # flux-1-schnell: steps maximum 8
        ({"seed": 7}, "seed"),  # not in flux-1-schnell's schema
        ({"num_steps": 4}, "num_steps"),
    ])
    async def test_flux_refuses_what_its_schema_lacks(self, start_proxy: Any,
                                                      cf: FakeWorkersAI, extra: dict[str, Any],
                                                      param: str) -> None:
        proxy = await proxy_for(start_proxy, cf, cf.model(FLUX))
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.images.generate(model=FLUX, prompt="a lizard", extra_body=extra)
        assert info.value.body["param"] == param
        assert "flux-1-schnell" in info.value.body["message"]
        assert cf.seen == []

    async def test_sdxl_gets_width_height_and_its_own_inputs(self, start_proxy: Any,
                                                             cf: FakeWorkersAI) -> None:
        # models/stable-diffusion-xl-base-1.0/: prompt, negative_prompt, width/height
        # (256-2048), num_steps (max 20), guidance, seed; answers the PNG bytes.
        async def png(request: web.Request, body: Any) -> web.StreamResponse:
            return web.Response(body=PNG, content_type="image/png")
        cf.replies.append(png)
        proxy = await proxy_for(start_proxy, cf, cf.model(SDXL))
        answer = await proxy.client.images.generate(
            model=SDXL, prompt="a lizard", size="512x768", response_format="b64_json",
            extra_body={"num_steps": 20, "guidance": 7.5, "negative_prompt": "blur", "seed": 3})
        assert base64.b64decode(answer.data[0].b64_json or "") == PNG
        assert cf.seen[0][1] == {"prompt": "a lizard", "width": 512, "height": 768,
                                 "num_steps": 20, "guidance": 7.5, "negative_prompt": "blur",
                                 "seed": 3}

    @pytest.mark.parametrize(("size", "extra", "param"), [
        ("4096x4096", {}, "size"),  # width/height maximum 2048
        ("1024x1024", {"num_steps": 30}, "num_steps"),  # num_steps maximum 20
        ("1024x1024", {"steps": 4}, "steps"),  # flux's name, not SDXL's
    ])
    async def test_sdxl_refusals(self, start_proxy: Any, cf: FakeWorkersAI, size: str,
                                 extra: dict[str, Any], param: str) -> None:
        proxy = await proxy_for(start_proxy, cf, cf.model(SDXL))
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.images.generate(model=SDXL, prompt="x", size=size,
                                               extra_body=extra)
        assert info.value.body["param"] == param
        assert cf.seen == []


# --- 8. llama-3.2-11b-vision: string content and one top-level image ----------------------

class TestVision:
    async def test_image_part_becomes_top_level_bytes(self, start_proxy: Any,
                                                      cf: FakeWorkersAI) -> None:
        # models/llama-3.2-11b-vision-instruct/: messages[].content is a string; "image" is an
        # array of integers (8-bit unsigned values) beside the messages.
        proxy = await proxy_for(start_proxy, cf, cf.model(VISION))
        data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
        answer = await proxy.client.chat.completions.create(model=VISION, messages=[
            {"role": "system", "content": "Describe images."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": data_url}}]},
        ])
        assert answer.choices[0].message.content == "Hello"
        [(path, body)] = cf.seen
        assert path == cf.path(f"/ai/run/{VISION}")
        assert body == {"messages": [{"role": "system", "content": "Describe images."},
                                     {"role": "user", "content": "What is this?"}],
                        "image": list(PNG)}

    @pytest.mark.parametrize("urls", [
        ["https://example.com/cat.png"],  # the schema takes the bytes, not a link
        ["data:image/png;base64," + base64.b64encode(PNG).decode()] * 2,  # one image a request
    ])
    async def test_what_it_cannot_take_is_400(self, start_proxy: Any, cf: FakeWorkersAI,
                                              urls: list[str]) -> None:
        proxy = await proxy_for(start_proxy, cf, cf.model(VISION))
        parts: list[Any] = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.chat.completions.create(model=VISION, messages=[
                {"role": "user", "content": [{"type": "text", "text": "?"}, *parts]}])
        # The part at fault (messages[0].content[1]), or the messages for a second image.
        assert info.value.body["param"].startswith("messages")
        assert cf.seen == []


# --- 9. stop, n, logprobs, tool_choice by model family ------------------------------------

class TestFamilies:
    async def test_openai_schema_models_take_them(self, start_proxy: Any,
                                                  cf: FakeWorkersAI) -> None:
        # models/glm-4.7-flash/: the OpenAI Chat Completions schema (stop, n, logprobs,
        # top_logprobs, tool_choice required or named) and an OpenAI-shaped answer.
        logprobs = {"content": [{"token": "A", "logprob": -0.1, "bytes": [65],
                                 "top_logprobs": []}], "refusal": None}
        cf.replies.append(json_reply(envelope({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": GLM,
            "choices": [
                {"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                 "message": {"role": "assistant", "content": "A"}},
                {"index": 1, "finish_reason": "stop", "logprobs": logprobs,
                 "message": {"role": "assistant", "content": "B"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})))
        proxy = await proxy_for(start_proxy, cf, cf.model(GLM))
        choice = {"type": "function", "function": {"name": "get_weather"}}
        answer = await proxy.client.chat.completions.create(
            model=GLM, messages=user(), stop=["END"], n=2, logprobs=True, top_logprobs=2,
            tools=[WEATHER], tool_choice=choice)
        assert [c.message.content for c in answer.choices] == ["A", "B"]
        assert answer.choices[1].index == 1
        assert answer.choices[0].logprobs is not None
        assert answer.choices[0].logprobs.content[0].token == "A"
        [(_, body)] = cf.seen
        assert body == {"messages": user(), "stop": ["END"], "n": 2, "logprobs": True,
                        "top_logprobs": 2, "tool_choice": choice, "tools": [WEATHER]}

    @pytest.mark.parametrize(("kwargs", "param"), [
        ({"stop": "END"}, "stop"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [WEATHER], "tool_choice": "required"}, "tool_choice"),
    ])
    async def test_native_models_refuse_them(self, start_proxy: Any, cf: FakeWorkersAI,
                                             kwargs: dict[str, Any], param: str) -> None:
        # models/llama-3.1-8b-instruct/: none of these is in its input schema.
        proxy = await proxy_for(start_proxy, cf, cf.model(LLAMA))
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.chat.completions.create(model=LLAMA, messages=user(), **kwargs)
        assert info.value.body["param"] == param
        assert "developers.cloudflare.com/workers-ai/models/" in str(info.value)
        assert cf.seen == []

    async def test_family_option_for_a_model_the_table_lacks(self, start_proxy: Any,
                                                             cf: FakeWorkersAI) -> None:
        proxy = await proxy_for(start_proxy, cf, cf.model(
            "@cf/acme/new-model", options={"family": "chat-completions"}))
        await proxy.client.chat.completions.create(model="@cf/acme/new-model",
                                                   messages=user(), stop="END")
        assert cf.seen[0][1]["stop"] == "END"


# --- 10. OpenAI-shaped streams: tool-call fragments are one call --------------------------

class TestStreamedToolCalls:
    async def test_fragments_assemble_into_one_call_per_index(self, start_proxy: Any,
                                                              cf: FakeWorkersAI) -> None:
        # The OpenAI-schema models stream OpenAI chunks: a call's first fragment carries id and
        # name, later ones only argument pieces under the same index.
        def call(index: int, **fields: Any) -> dict[str, Any]:
            return {"tool_calls": [{"index": index, **fields}]}
        cf.replies.append(sse([
            openai_chunk({"role": "assistant", "content": None}),
            openai_chunk(call(0, id="call_a", type="function",
                              function={"name": "get_weather", "arguments": ""})),
            openai_chunk(call(0, function={"arguments": '{"city": '})),
            openai_chunk(call(1, id="call_b", type="function",
                              function={"name": "get_weather", "arguments": '{"city": "Oslo"}'})),
            openai_chunk(call(0, function={"arguments": '"Paris"}'})),
            openai_chunk({}, "tool_calls"),
            {"id": "chatcmpl-up", "object": "chat.completion.chunk", "choices": [],
             "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}},
        ]))
        proxy = await proxy_for(start_proxy, cf, cf.model(GLM))
        stream = await proxy.client.chat.completions.create(
            model=GLM, messages=user("Weather?"), tools=[WEATHER], stream=True)
        calls: dict[int, dict[str, Any]] = {}
        finish = None
        async for chunk in stream:
            for c in chunk.choices:
                finish = c.finish_reason or finish
                for frag in c.delta.tool_calls or []:
                    if frag.index not in calls:
                        assert frag.id and frag.function and frag.function.name
                        calls[frag.index] = {"id": frag.id, "name": frag.function.name,
                                             "arguments": frag.function.arguments or ""}
                    else:
                        assert frag.id is None
                        assert frag.function is not None and not frag.function.name
                        calls[frag.index]["arguments"] += frag.function.arguments or ""
        assert calls == {
            0: {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            1: {"id": "call_b", "name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        assert finish == "tool_calls"


# --- 11. JSON mode ------------------------------------------------------------------------

class TestJsonMode:
    SCHEMA: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}},
                              "required": ["city"]}

    async def test_native_models_get_the_schema_itself(self, start_proxy: Any,
                                                       cf: FakeWorkersAI) -> None:
        # features/json-mode/: {"type": "json_schema", "json_schema": <the JSON schema>};
        # the answer's response is the object.
        cf.replies.append(json_reply(envelope({"response": {"city": "Tver"}})))
        proxy = await proxy_for(start_proxy, cf, cf.model(LLAMA))
        answer = await proxy.client.chat.completions.create(
            model=LLAMA, messages=user(), response_format={
                "type": "json_schema",
                "json_schema": {"name": "place", "schema": self.SCHEMA, "strict": True}})
        assert json.loads(answer.choices[0].message.content or "") == {"city": "Tver"}
        assert cf.seen[0][1]["response_format"] == {"type": "json_schema",
                                                    "json_schema": self.SCHEMA}

    async def test_openai_schema_models_get_openai_shape(self, start_proxy: Any,
                                                         cf: FakeWorkersAI) -> None:
        # models/glm-4.7-flash/: response_format.json_schema is {name, schema, strict}.
        fmt = {"type": "json_schema",
               "json_schema": {"name": "place", "schema": self.SCHEMA, "strict": True}}
        proxy = await proxy_for(start_proxy, cf, cf.model(GLM))
        await proxy.client.chat.completions.create(model=GLM, messages=user(),
                                                   response_format=fmt)
        assert cf.seen[0][1]["response_format"] == fmt


# --- 14. the default 256-token cut is "length" --------------------------------------------

class TestLength:
    @pytest.mark.parametrize(("completion", "finish"), [(256, "length"), (80, "stop")])
    async def test_plain(self, start_proxy: Any, cf: FakeWorkersAI, completion: int,
                         finish: str) -> None:
        # models/llama-3.1-8b-instruct/: max_tokens defaults to 256; the answer has no finish
        # reason, only the usage.
        cf.replies.append(json_reply(envelope({"response": "words " * 10, "usage": {
            "prompt_tokens": 5, "completion_tokens": completion,
            "total_tokens": 5 + completion}})))
        proxy = await proxy_for(start_proxy, cf, cf.model(LLAMA))
        answer = await proxy.client.chat.completions.create(model=LLAMA, messages=user())
        assert answer.choices[0].finish_reason == finish
        assert "max_tokens" not in cf.seen[0][1]

    async def test_streamed(self, start_proxy: Any, cf: FakeWorkersAI) -> None:
        cf.replies.append(sse([{"response": "words"}, {"response": "", "usage": {
            "prompt_tokens": 5, "completion_tokens": 256, "total_tokens": 261}}]))
        proxy = await proxy_for(start_proxy, cf, cf.model(LLAMA))
        stream = await proxy.client.chat.completions.create(model=LLAMA, messages=user(),
                                                            stream=True)
        finishes = [c.choices[0].finish_reason async for c in stream if c.choices]
        assert finishes[-1] == "length"


# --- 15. developer role -------------------------------------------------------------------

async def test_developer_role_is_system(start_proxy: Any, cf: FakeWorkersAI) -> None:
    # The model schemas know system, user, assistant and tool roles (models/llama-3.1-8b-instruct/).
    proxy = await proxy_for(start_proxy, cf, cf.model(LLAMA))
    await proxy.client.chat.completions.create(model=LLAMA, messages=[
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert cf.seen[0][1]["messages"] == [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hi"}]


# --- 24. cached and reasoning tokens ------------------------------------------------------

class TestUsageDetails:
    USAGE: dict[str, Any] = {"prompt_tokens": 40, "completion_tokens": 30, "total_tokens": 70,
                             "prompt_tokens_details": {"cached_tokens": 32},
                             "completion_tokens_details": {"reasoning_tokens": 21}}

    async def test_plain(self, start_proxy: Any, cf: FakeWorkersAI) -> None:
        # models/glm-4.7-flash/ output: usage.prompt_tokens_details.cached_tokens and
        # usage.completion_tokens_details.reasoning_tokens.
        cf.replies.append(json_reply(envelope({
            "id": "x", "object": "chat.completion", "created": 1, "model": GLM,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": self.USAGE})))
        proxy = await proxy_for(start_proxy, cf, cf.model(GLM))
        answer = await proxy.client.chat.completions.create(model=GLM, messages=user())
        assert answer.usage is not None
        assert answer.usage.prompt_tokens_details is not None
        assert answer.usage.prompt_tokens_details.cached_tokens == 32
        assert answer.usage.completion_tokens_details is not None
        assert answer.usage.completion_tokens_details.reasoning_tokens == 21

    async def test_streamed(self, start_proxy: Any, cf: FakeWorkersAI) -> None:
        cf.replies.append(sse([openai_chunk({"role": "assistant", "content": "ok"}),
                               openai_chunk({}, "stop"),
                               {"id": "x", "object": "chat.completion.chunk", "choices": [],
                                "usage": self.USAGE}]))
        proxy = await proxy_for(start_proxy, cf, cf.model(GLM))
        stream = await proxy.client.chat.completions.create(
            model=GLM, messages=user(), stream=True, stream_options={"include_usage": True})
        usage = [c.usage async for c in stream if c.usage is not None]
        assert usage[-1].prompt_tokens_details is not None
        assert usage[-1].prompt_tokens_details.cached_tokens == 32
        assert usage[-1].completion_tokens_details is not None
        assert usage[-1].completion_tokens_details.reasoning_tokens == 21
        assert cf.seen[0][1]["stream_options"] == {"include_usage": True}


# --- provider: cloudflare with the OpenAI-compatible /ai/v1 url ---------------------------

class TestOpenAICompatibleUrl:
    """https://developers.cloudflare.com/workers-ai/configuration/open-ai-compatibility/:
    ``.../accounts/{id}/ai/v1/chat/completions`` and ``.../ai/v1/embeddings``, OpenAI shapes."""

    def url(self, cf: FakeWorkersAI, tail: str = "") -> str:
        return f"{cf.base}/accounts/{ACCOUNT}/ai/v1{tail}"

    async def test_chat_is_forwarded_in_openai_shape(self, start_proxy: Any,
                                                     cf: FakeWorkersAI) -> None:
        cf.replies.append(json_reply({
            "id": "chatcmpl-cf", "object": "chat.completion", "created": 1, "model": LLAMA,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hi there"}}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}}))
        proxy = await proxy_for(start_proxy, cf, cf.model(
            f"cloudflare/{LLAMA}", url=self.url(cf, "/chat/completions")))
        answer = await proxy.client.chat.completions.create(
            model=f"cloudflare/{LLAMA}", messages=user(), stop="END")
        assert answer.choices[0].message.content == "Hi there"
        [(path, body)] = cf.seen
        assert path == cf.path("/ai/v1/chat/completions")
        assert body == {"model": LLAMA, "messages": user(), "stop": "END"}

    async def test_stream(self, start_proxy: Any, cf: FakeWorkersAI) -> None:
        cf.replies.append(sse([openai_chunk({"role": "assistant", "content": "Hi"}),
                               openai_chunk({"content": " there"}),
                               openai_chunk({}, "stop")]))
        proxy = await proxy_for(start_proxy, cf, cf.model(LLAMA, url=self.url(cf)))
        stream = await proxy.client.chat.completions.create(model=LLAMA, messages=user(),
                                                            stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Hi there"
        assert cf.seen[0][0] == cf.path("/ai/v1/chat/completions")
        assert cf.seen[0][1]["stream"] is True

    async def test_embeddings(self, start_proxy: Any, cf: FakeWorkersAI) -> None:
        cf.replies.append(json_reply({"object": "list", "model": BGE, "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
            "usage": {"prompt_tokens": 3, "total_tokens": 3}}))
        proxy = await proxy_for(start_proxy, cf, cf.model(BGE, url=self.url(cf)))
        answer = await proxy.client.embeddings.create(model=BGE, input="I love matcha")
        assert answer.data[0].embedding == [0.5, 0.25]  # the SDK asked base64: the core encodes
        assert cf.seen == [(cf.path("/ai/v1/embeddings"), {"model": BGE, "input": "I love matcha"})]

    async def test_native_url_embeds_at_the_account_endpoint(self, start_proxy: Any,
                                                             cf: FakeWorkersAI) -> None:
        cf.replies.append(json_reply({"object": "list", "model": BGE, "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5]}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1}}))
        proxy = await proxy_for(start_proxy, cf, cf.model(
            BGE, url=f"{cf.base}/accounts/{ACCOUNT}/ai/run/"))
        answer = await proxy.client.embeddings.create(model=BGE, input="x",
                                                      encoding_format="float")
        assert answer.data[0].embedding == [0.5]
        assert cf.seen[0][0] == cf.path("/ai/v1/embeddings")

    async def test_errors_in_cloudflare_envelope(self, start_proxy: Any,
                                                 cf: FakeWorkersAI) -> None:
        refusal = json_reply({"success": False, "result": None, "messages": [], "errors": [
            {"code": 3036, "message": "daily free allocation used up"}]}, status=429)
        cf.replies += [refusal] * 3  # the first try and the core's two retries
        proxy = await proxy_for(start_proxy, cf, cf.model(LLAMA, url=self.url(cf)))
        with pytest.raises(openai.RateLimitError) as info:
            await proxy.client.chat.completions.create(model=LLAMA, messages=user())
        assert "code 3036" in str(info.value)
        assert TOKEN not in str(info.value)

    async def test_images_still_run_natively(self, start_proxy: Any, cf: FakeWorkersAI) -> None:
        cf.replies.append(json_reply(envelope({"image": base64.b64encode(JPEG).decode()})))
        proxy = await proxy_for(start_proxy, cf, cf.model(FLUX, url=self.url(cf)))
        await proxy.client.images.generate(model=FLUX, prompt="a lizard")
        assert cf.seen == [(cf.path(f"/ai/run/{FLUX}"), {"prompt": "a lizard"})]
