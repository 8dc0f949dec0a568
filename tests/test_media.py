"""Embeddings and images end to end: the openai SDK and the old /image endpoint."""

from __future__ import annotations

import base64

import openai
import pytest

from aiproxy_providers.mock import mock_png
from tests.conftest import openai_model


class TestEmbeddings:
    async def test_sdk_embeddings_through_openai_provider(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy({"models": [openai_model("openai/emb", url)]})
        # The SDK asks for base64 by default and decodes it.
        answer = await proxy.client.embeddings.create(model="openai/emb", input=["a", "b"])
        assert [round(x, 5) for x in answer.data[1].embedding] == [0.2, 0.2, 0.3]
        assert answer.model == "openai/emb"
        assert fake.seen[-1].path == "/v1/embeddings"
        assert fake.seen[-1].body["model"] == "emb"

    async def test_float_format_and_mock(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]})
        async with proxy.http.post(proxy.url("/v1/embeddings"), headers=proxy.auth, json={
                "model": "m", "input": "hello", "encoding_format": "float",
                "dimensions": 4}) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert len(body["data"][0]["embedding"]) == 4
        async with proxy.http.post(proxy.url("/embeddings"), headers=proxy.auth, json={
                "model": "m", "input": "hello", "encoding_format": "base64"}) as resp:
            encoded = (await resp.json())["data"][0]["embedding"]
        assert len(base64.b64decode(encoded)) == 8 * 4  # 8 float32 values

    @pytest.mark.parametrize(("payload", "param"), [
        ({"model": "m"}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": [1.5]}, "input"),
        ({"input": "x"}, "model"),
        ({"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
    ])
    async def test_bad_input_400(self, start_proxy, payload, param):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]})
        async with proxy.http.post(proxy.url("/v1/embeddings"), headers=proxy.auth,
                                   json=payload) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == param

    async def test_model_that_does_not_serve_embeddings(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "chatty", "provider": "groq",
                                               "token": "x"}]})
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.embeddings.create(model="chatty", input="x")
        assert "chatty" in info.value.message
        assert "embeddings" in info.value.message


class TestImages:
    async def test_sdk_images_generate(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy({"models": [openai_model("openai/img", url,
                                                           serves=["images"])]})
        answer = await proxy.client.images.generate(model="openai/img", prompt="a cat", n=2,
                                                    size="256x256",
                                                    response_format="b64_json")
        assert len(answer.data) == 2
        assert base64.b64decode(answer.data[0].b64_json) == mock_png(seed=bytes([0]))
        assert fake.seen[-1].body == {"model": "img", "prompt": "a cat", "n": 2,
                                      "size": "256x256", "response_format": "b64_json"}

    async def test_url_format_is_a_data_url(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "pic", "provider": "mock"}]})
        answer = await proxy.client.images.generate(model="pic", prompt="x",
                                                    response_format="url")
        assert answer.data[0].url.startswith("data:image/png;base64,")

    async def test_old_image_endpoint_returns_the_bytes(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy({"models": [
            openai_model("chat", url, max_request_length=1000),
            openai_model("img-a", url, max_request_length=0, priority=1),
            {"name": "img-b", "provider": "mock", "serves": ["images"], "priority": 2}]})
        fake.defaults["img-a"] = "503"
        async with proxy.http.post(proxy.url("/image"), headers=proxy.auth,
                                   json={"model": "all", "inputs": "a red square"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "image/png"
            assert resp.headers["x-aiproxy-model"] == "img-b"  # img-a failed: fell over
            assert await resp.read() == mock_png(seed=b"a red square:0")
        assert fake.requests_for("chat") == []  # not an image model
        # A named model's bytes come back as the upstream made them.
        fake.defaults["img-a"] = "ok"
        async with proxy.http.post(proxy.url("/image"), headers=proxy.auth,
                                   json={"model": "img-a", "prompt": "x"}) as resp:
            assert resp.status == 200
            assert await resp.read() == mock_png(seed=bytes([0]))

    async def test_image_errors(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy({"models": [openai_model("chat", url, max_request_length=10)]})
        async with proxy.http.post(proxy.url("/image"), headers=proxy.auth,
                                   json={"model": "", "prompt": "x"}) as resp:
            assert resp.status == 404  # no image model configured
        async with proxy.http.post(proxy.url("/image"), headers=proxy.auth,
                                   json={"model": "all"}) as resp:
            assert resp.status == 400
        proxy2 = await start_proxy({"models": [openai_model("img", url, serves=["images"])]},)
        fake.defaults["img"] = "500"
        async with proxy2.http.post(proxy2.url("/image"), headers=proxy2.auth,
                                    json={"prompt": "x"}) as resp:
            assert resp.status == 502
            assert resp.headers["Content-Type"].startswith("application/json")
            assert (await resp.read()) != b""
