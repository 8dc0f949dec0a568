"""The OpenAI-compatible family beyond passthrough: OpenRouter errors, rate-limit headers,
HuggingFace text-to-image, the contract's header parsing, image response_format per model,
Azure deployment URLs, and the provider names the old proxy accepted."""

from __future__ import annotations

import base64
import socket
import time
from email.utils import formatdate
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from aiproxy.config import ModelConfig
from aiproxy.plugins import ProviderRegistry
from aiproxy.provider import (
    Capability,
    ChatRequest,
    ErrorKind,
    RateLimitHint,
    UpstreamError,
    parse_rate_limit_headers,
    parse_retry_after,
)
from aiproxy_providers.gemini import GeminiProvider
from aiproxy_providers.mock import mock_png
from aiproxy_providers.openai import (
    HuggingFaceProvider,
    OpenAIProvider,
    OpenRouterProvider,
    UpstreamURL,
    sends_image_response_format,
)


class TestHeaders:
    def test_retry_after_seconds_and_http_date(self):
        assert parse_retry_after("7") == 7.0
        assert parse_retry_after(None) is None
        assert parse_retry_after("soon") is None
        now = time.time()
        assert 58 <= parse_retry_after(formatdate(now + 60, usegmt=True), now=now) <= 60

    def test_openai_and_groq_durations(self):
        hint = parse_rate_limit_headers({"x-ratelimit-remaining-requests": "0",
                                         "x-ratelimit-reset-requests": "6m0s",
                                         "x-ratelimit-remaining-tokens": "100",
                                         "x-ratelimit-reset-tokens": "20ms"})
        assert hint == RateLimitHint(remaining=0, reset_after=360.0)
        hint = parse_rate_limit_headers({"x-ratelimit-remaining-tokens": "0",
                                         "x-ratelimit-reset-tokens": "2m59.56s"})
        assert hint is not None and round(hint.reset_after or 0, 2) == 179.56

    def test_openrouter_epoch_milliseconds(self):
        reset_ms = int((time.time() + 30) * 1000)
        hint = parse_rate_limit_headers({"x-ratelimit-remaining": "0",
                                         "x-ratelimit-reset": str(reset_ms)})
        assert hint is not None and 28 <= (hint.reset_after or 0) <= 30

    def test_budget_left_is_no_park(self):
        assert parse_rate_limit_headers({"x-ratelimit-remaining-requests": "5",
                                         "x-ratelimit-reset-requests": "1s"}) == \
            RateLimitHint(remaining=5, reset_after=None)
        assert parse_rate_limit_headers({}) is None


async def test_openrouter_error_names_the_failing_provider(aiohttp_server):
    async def fail(request: web.Request) -> web.Response:
        # https://openrouter.ai/docs/api-reference/errors: error.metadata.provider_name
        return web.json_response({"error": {
            "code": 502, "message": "Provider returned error",
            "metadata": {"provider_name": "DeepInfra", "raw": "upstream said no"}}}, status=502)

    app = web.Application()
    app.router.add_post("/api/v1/chat/completions", fail)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        provider = OpenRouterProvider(ModelConfig(
            name="deepseek/deepseek-r1:free", provider="openrouter",
            url=str(server.make_url("/api/v1/chat/completions")), token="sk-or-123456789"),
            session)
        body = b'{"model":"deepseek/deepseek-r1:free","messages":[{"role":"user","content":"x"}]}'
        with pytest.raises(UpstreamError) as info:
            await provider.chat(ChatRequest(body=orjson.loads(body), raw=body))
    err = info.value
    assert err.kind is ErrorKind.OVERLOADED
    assert err.provider_name == "DeepInfra"


async def test_openrouter_error_reaches_the_client_with_provider(start_proxy, aiohttp_server):
    async def limited(request: web.Request) -> web.Response:
        return web.json_response({"error": {
            "code": 429, "message": "Rate limit exceeded",
            "metadata": {"provider_name": "Chutes"}}}, status=429,
            headers={"Retry-After": "120"})

    app = web.Application()
    app.router.add_post("/api/v1/chat/completions", limited)
    server = await aiohttp_server(app)
    proxy = await start_proxy({"models": [{
        "name": "or", "provider": "openrouter", "token": "sk-or-123456789",
        "url": str(server.make_url("/api/v1/chat/completions"))}]})
    with pytest.raises(openai.RateLimitError) as info:
        await proxy.client.chat.completions.create(
            model="or", messages=[{"role": "user", "content": "x"}])
    assert "Chutes" in info.value.message
    assert info.value.response.headers["Retry-After"] == "120"


async def test_huggingface_text_to_image(start_proxy, aiohttp_server):
    seen = []

    async def text_to_image(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization"), await request.json()))
        return web.Response(body=mock_png(seed=b"hf"), content_type="image/png")

    app = web.Application()
    app.router.add_post("/hf-inference/models/{owner}/{name}", text_to_image)
    server = await aiohttp_server(app)
    model = "black-forest-labs/FLUX.1-schnell"
    proxy = await start_proxy({"models": [{
        "name": f"huggingface/{model}", "provider": "huggingface", "token": "hf_123456789",
        "serves": ["images"],
        "options": {"image_url": str(server.make_url(f"/hf-inference/models/{model}"))}}]})
    answer = await proxy.client.images.generate(model=f"huggingface/{model}", prompt="a fox",
                                                size="512x256", n=2,
                                                response_format="b64_json")
    assert [base64.b64decode(d.b64_json) for d in answer.data] == [mock_png(seed=b"hf")] * 2
    assert seen == [(f"/hf-inference/models/{model}", "Bearer hf_123456789",
                     {"inputs": "a fox", "parameters": {"width": 512, "height": 256}})] * 2


async def test_huggingface_provider_declares_images():
    assert Capability.IMAGES in HuggingFaceProvider.capabilities


# --- Images: response_format only where the model takes it -----------------------------------

PNG = mock_png(seed=b"openai-images")


def _image_upstream(seen: list[dict[str, Any]], answer: dict[str, Any] | None = None
                    ) -> web.Application:
    async def generate(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response(answer or {
            "created": 1700000000, "data": [{"b64_json": base64.b64encode(PNG).decode()}]})

    app = web.Application()
    app.router.add_post("/v1/images/generations", generate)
    return app


class TestImageResponseFormat:
    # https://platform.openai.com/docs/api-reference/images/create#images-create-response_format:
    # "response_format ... Unsupported for GPT image models, which always return base64";
    # dall-e-2 / dall-e-3 default to url and answer b64_json only when asked.

    async def test_gpt_image_model_is_sent_no_response_format(self, start_proxy,
                                                               aiohttp_server):
        seen: list[dict[str, Any]] = []
        server = await aiohttp_server(_image_upstream(seen))
        proxy = await start_proxy({"models": [{
            "name": "openai/gpt-image-1", "provider": "openai", "token": "sk-upstream-123",
            "url": str(server.make_url("/v1")), "serves": ["images"]}]})
        answer = await proxy.client.images.generate(model="openai/gpt-image-1", prompt="a fox",
                                                    size="1024x1024",
                                                    response_format="b64_json")
        assert base64.b64decode(answer.data[0].b64_json or "") == PNG
        assert seen == [{"model": "gpt-image-1", "prompt": "a fox", "n": 1,
                         "size": "1024x1024"}]

    async def test_dall_e_3_is_asked_for_b64_json(self, start_proxy, aiohttp_server):
        seen: list[dict[str, Any]] = []
        server = await aiohttp_server(_image_upstream(seen))
        proxy = await start_proxy({"models": [{
            "name": "openai/dall-e-3", "provider": "openai", "token": "sk-upstream-123",
            "url": str(server.make_url("/v1")), "serves": ["images"]}]})
        answer = await proxy.client.images.generate(model="openai/dall-e-3", prompt="a fox",
                                                    response_format="url")
        # The client's "url" is served as a data URL by the core; upstream is asked for base64.
        assert answer.data[0].url == "data:image/png;base64," + base64.b64encode(PNG).decode()
        assert seen == [{"model": "dall-e-3", "prompt": "a fox", "n": 1,
                         "response_format": "b64_json"}]

    async def test_url_only_answer_is_a_clear_error(self, start_proxy, aiohttp_server):
        seen: list[dict[str, Any]] = []
        server = await aiohttp_server(_image_upstream(seen, {
            "created": 1, "data": [{"url": "https://files.example/img.png"}]}))
        proxy = await start_proxy({"models": [{
            "name": "local/sd", "provider": "openai", "url": str(server.make_url("/v1")),
            "serves": ["images"], "options": {"image_response_format": "omit"}}]})
        with pytest.raises(openai.APIStatusError) as info:
            await proxy.client.images.generate(model="local/sd", prompt="a fox")
        assert info.value.status_code == 502
        assert "image_response_format" in info.value.message
        assert "response_format" not in seen[0]

    def test_model_families(self):
        assert not sends_image_response_format("auto", "gpt-image-1")
        assert not sends_image_response_format("auto", "openai/gpt-image-1.5")
        assert not sends_image_response_format("auto", "chatgpt-image-latest")
        assert not sends_image_response_format("auto", "images", "gpt-image-1-mini")
        assert sends_image_response_format("auto", "dall-e-2")
        assert sends_image_response_format("auto", "black-forest-labs/FLUX.1-schnell")
        assert sends_image_response_format("b64_json", "gpt-image-1")
        assert not sends_image_response_format("omit", "dall-e-3")


# --- Azure OpenAI classic deployment URLs ----------------------------------------------------
# https://learn.microsoft.com/en-us/azure/ai-services/openai/reference: POST
# {endpoint}/openai/deployments/{deployment-id}/chat/completions?api-version=2024-10-21 (and
# /embeddings, /images/generations), the key in the ``api-key`` header.

AZURE_KEY = "azure-key-0123456789"
API_VERSION = "api-version=2024-10-21"


def _azure_upstream(seen: list[tuple[str, str, dict[str, str]]]) -> web.Application:
    async def record(request: web.Request) -> dict[str, Any]:
        seen.append((request.path, request.query_string, dict(request.headers)))
        return await request.json()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await record(request)
        message = {"role": "assistant", "content": "hello from azure"}
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-az", "object": "chat.completion", "created": 1700000000,
                "model": "gpt-4o", "choices": [{"index": 0, "message": message,
                                                "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": "chatcmpl-az", "object": "chat.completion.chunk", "created": 1,
                "model": "gpt-4o"}
        for delta, finish in (({"role": "assistant", "content": "hello"}, None),
                              ({"content": " from azure"}, None), ({}, "stop")):
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    async def embeddings(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"object": "list", "model": "text-embedding-3-small",
                                  "data": [{"object": "embedding", "index": 0,
                                            "embedding": [0.5, 0.25]}],
                                  "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    async def images(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"created": 1, "data": [
            {"b64_json": base64.b64encode(PNG).decode()}]})

    app = web.Application()
    app.router.add_post("/openai/deployments/{d}/chat/completions", chat)
    app.router.add_post("/openai/deployments/{d}/embeddings", embeddings)
    app.router.add_post("/openai/deployments/{d}/images/generations", images)
    return app


class TestAzure:
    async def test_chat_endpoint_url_keeps_query_and_sends_api_key(self, start_proxy,
                                                                  aiohttp_server):
        seen: list[tuple[str, str, dict[str, str]]] = []
        server = await aiohttp_server(_azure_upstream(seen))
        url = str(server.make_url("/openai/deployments/gpt4o/chat/completions")) + \
            "?" + API_VERSION
        proxy = await start_proxy({"models": [{
            "name": "azure/gpt-4o", "provider": "openai", "url": url, "token": AZURE_KEY,
            "serves": ["chat"], "options": {"auth_header": "api-key"}}]})
        answer = await proxy.client.chat.completions.create(
            model="azure/gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "hello from azure"
        stream = await proxy.client.chat.completions.create(
            model="azure/gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "hello from azure"
        assert [(path, query) for path, query, _ in seen] == [
            ("/openai/deployments/gpt4o/chat/completions", API_VERSION)] * 2
        for _, _, headers in seen:
            assert headers["api-key"] == AZURE_KEY
            assert "Authorization" not in headers

    async def test_deployment_url_without_tail_serves_embeddings_and_images(
            self, start_proxy, aiohttp_server):
        seen: list[tuple[str, str, dict[str, str]]] = []
        server = await aiohttp_server(_azure_upstream(seen))
        embed_url = str(server.make_url("/openai/deployments/embed")) + "?" + API_VERSION
        image_url = str(server.make_url("/openai/deployments/gpt-image-1/")) + "?" + API_VERSION
        proxy = await start_proxy({"models": [
            {"name": "azure/embed", "provider": "openai", "url": embed_url, "token": AZURE_KEY,
             "serves": ["embeddings"], "options": {"auth_header": "api-key"}},
            {"name": "azure/images", "provider": "openai", "url": image_url,
             "token": AZURE_KEY, "serves": ["images"], "options": {"auth_header": "api-key"}},
        ]})
        vectors = await proxy.client.embeddings.create(model="azure/embed", input="x")
        assert vectors.data[0].embedding == [0.5, 0.25]
        image = await proxy.client.images.generate(model="azure/images", prompt="a fox")
        assert base64.b64decode(image.data[0].b64_json or "") == PNG
        assert [(path, query) for path, query, _ in seen] == [
            ("/openai/deployments/embed/embeddings", API_VERSION),
            ("/openai/deployments/gpt-image-1/images/generations", API_VERSION)]
        assert all(h["api-key"] == AZURE_KEY and "Authorization" not in h for *_, h in seen)

    async def test_azure_host_gets_api_key_without_an_option(self, aiohttp_server):
        # A *.openai.azure.com host is recognised: resolve it to the fake on 127.0.0.1.
        seen: list[tuple[str, str, dict[str, str]]] = []
        server = await aiohttp_server(_azure_upstream(seen))

        class ToLoopback(AbstractResolver):
            async def resolve(self, host: str, port: int = 0,
                              family: socket.AddressFamily = socket.AF_INET
                              ) -> list[ResolveResult]:
                return [{"hostname": host, "host": "127.0.0.1", "port": port,
                         "family": socket.AF_INET, "proto": 0,
                         "flags": socket.AI_NUMERICHOST}]

            async def close(self) -> None:
                pass

        url = (f"http://myres.openai.azure.com:{server.port}/openai/deployments/gpt4o"
               f"?{API_VERSION}")
        connector = aiohttp.TCPConnector(resolver=ToLoopback())
        async with aiohttp.ClientSession(connector=connector) as session:
            provider = OpenAIProvider(ModelConfig(name="azure/gpt-4o", provider="openai",
                                                  url=url, token=AZURE_KEY), session)
            body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'
            answer = await provider.chat(ChatRequest(body=orjson.loads(body), raw=body))
        assert answer.data["choices"][0]["message"]["content"] == "hello from azure"
        path, query, headers = seen[0]
        assert (path, query) == ("/openai/deployments/gpt4o/chat/completions", API_VERSION)
        assert headers["api-key"] == AZURE_KEY and "Authorization" not in headers

    def test_url_forms(self):
        base = "https://res.openai.azure.com/openai/deployments/d"
        for url in (f"{base}/chat/completions?{API_VERSION}", f"{base}?{API_VERSION}",
                    f"{base}/?{API_VERSION}", f"{base}/embeddings?{API_VERSION}"):
            parsed = UpstreamURL.parse(url)
            assert parsed.endpoint("/chat/completions") == \
                f"{base}/chat/completions?{API_VERSION}"
            assert parsed.endpoint("/images/generations") == \
                f"{base}/images/generations?{API_VERSION}"
            assert parsed.is_azure and parsed.azure_deployment == "d"
        plain = UpstreamURL.parse("https://api.openai.com/v1/")
        assert plain.endpoint("/embeddings") == "https://api.openai.com/v1/embeddings"
        assert not plain.is_azure and plain.azure_deployment is None

    async def test_other_hosts_keep_bearer(self):
        async with aiohttp.ClientSession() as session:
            provider = OpenAIProvider(ModelConfig(name="m", provider="openai",
                                                  url="https://api.example.com/v1",
                                                  token="sk-123456789"), session)
        assert provider.headers["Authorization"] == "Bearer sk-123456789"
        assert "api-key" not in provider.headers


# --- Provider names the old proxy accepted ---------------------------------------------------
# evgensoft/ai-proxy internal/proxy_handler.go (sendRequestToLLM): "google" went to its Gemini
# client; "groq", "arliai", "github" and the default branch (its configs: "glama",
# "together", "aimlapi", "airforce", ...) to its OpenAI-compatible client.

OLD_NAMES = {
    "glama": "https://gateway.glama.ai/v1",  # https://glama.ai/ai/gateway/docs/api
    "arliai": "https://api.arliai.com/v1",  # https://www.arliai.com/docs
    "github": "https://models.github.ai/inference",  # docs.github.com/en/rest/models/inference
    "together": "https://api.together.ai/v1",  # docs.together.ai/docs/inference/openai-...
    "aimlapi": "https://api.aimlapi.com/v1",  # docs.aimlapi.com/quickstart/supported-sdks
    "airforce": "https://api.airforce/v1",  # https://api.airforce/docs/api/chat/
    "groq": "https://api.groq.com/openai/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "huggingface": "https://router.huggingface.co/v1",
}


class TestOldProviderNames:
    @pytest.mark.parametrize(("name", "default_url"), sorted(OLD_NAMES.items()))
    def test_name_loads_an_openai_compatible_class(self, name, default_url):
        cls = ProviderRegistry().get(name)
        assert issubclass(cls, OpenAIProvider)
        assert cls.default_url == default_url
        assert Capability.CHAT in cls.capabilities

    def test_google_is_gemini(self):
        assert ProviderRegistry().get("google") is GeminiProvider

    @pytest.mark.parametrize("name", ["glama", "arliai", "github", "together", "aimlapi",
                                      "airforce"])
    async def test_old_config_serves_a_chat(self, name, start_proxy, fake_upstream):
        fake, base = fake_upstream
        # The old proxy's form: url is the whole endpoint, the name carries the provider.
        proxy = await start_proxy({"models": [{
            "name": f"{name}/some-model", "provider": name, "token": "old-token-123456",
            "url": f"{base}/chat/completions"}]})
        answer = await proxy.client.chat.completions.create(
            model=f"{name}/some-model", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "reply from some-model: hi"
        seen = fake.requests_for("some-model")
        assert [s.path for s in seen] == ["/v1/chat/completions"]
        assert seen[0].headers["Authorization"] == "Bearer old-token-123456"
