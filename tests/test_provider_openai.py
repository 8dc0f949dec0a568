"""The OpenAI-compatible family beyond passthrough: OpenRouter errors, rate-limit headers,
HuggingFace text-to-image, and the contract's header parsing."""

from __future__ import annotations

import base64
import time
from email.utils import formatdate

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from aiproxy.config import ModelConfig
from aiproxy.provider import (
    Capability,
    ChatRequest,
    ErrorKind,
    RateLimitHint,
    UpstreamError,
    parse_rate_limit_headers,
    parse_retry_after,
)
from aiproxy_providers.mock import mock_png
from aiproxy_providers.openai import HuggingFaceProvider, OpenRouterProvider


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
