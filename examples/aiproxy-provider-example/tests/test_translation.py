"""What the conformance suite cannot know: Ollama's own fields and this plugin's choices."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiproxy_ollama_example import OllamaProvider

from aiproxy.config import ConfigError, ModelConfig
from aiproxy.provider import ErrorKind, UpstreamError
from aiproxy.testing import (
    FakeUpstream,
    chat_request,
    collect_stream,
    json_response,
    stream_response,
)


def provider(url: str = "http://ollama:11434", **options: Any) -> OllamaProvider:
    # build_request and error mapping never touch the session.
    model = ModelConfig(name="local/llama", provider="ollama-example", url=url,
                        upstream_model="llama3.2", options=options)
    return OllamaProvider(model, None)  # type: ignore[arg-type]


class TestRequest:
    def test_sampling_fields_become_options(self) -> None:
        body = provider(num_ctx=8192).build_request(chat_request(
            temperature=0.1, top_p=0.9, seed=42, max_completion_tokens=64, stop="END",
            presence_penalty=0.5), stream=False)
        assert body["model"] == "llama3.2"
        assert body["stream"] is False
        assert body["options"] == {"temperature": 0.1, "top_p": 0.9, "seed": 42,
                                   "num_predict": 64, "stop": ["END"], "presence_penalty": 0.5,
                                   "num_ctx": 8192}

    def test_no_options_object_when_nothing_is_set(self) -> None:
        assert "options" not in provider().build_request(chat_request(), stream=True)

    @pytest.mark.parametrize(("given", "sent"), [("10m", "10m"), ("300", 300), ("-1", -1)])
    def test_keep_alive(self, given: str, sent: str | int) -> None:
        assert provider(keep_alive=given).build_request(chat_request(),
                                                        stream=False)["keep_alive"] == sent

    def test_response_format(self) -> None:
        p = provider()
        assert p.build_request(chat_request(response_format={"type": "json_object"}),
                               stream=False)["format"] == "json"
        schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
        request = chat_request(response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": schema}})
        assert p.build_request(request, stream=False)["format"] == schema

    def test_images_travel_as_base64(self) -> None:
        request = chat_request(messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
        assert provider().build_request(request, stream=False)["messages"] == [
            {"role": "user", "content": "What is this?", "images": ["iVBORw0KGgo="]}]

    @pytest.mark.parametrize(("fields", "param", "code"), [
        # OpenAI parameters Ollama lacks: the kit's one 400 for them.
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools",
         "unsupported_parameter"),
        ({"n": 2}, "n", "unsupported_parameter"),
        # What the request mapping cannot take: the path of the field at fault.
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
         "messages[0].role", None),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
         "messages[0].content[0]", None),
        ({"response_format": {"type": "xml"}}, "response_format", None),
    ])
    def test_refuses_what_it_cannot_honour(self, fields: dict[str, Any], param: str,
                                           code: str | None) -> None:
        with pytest.raises(UpstreamError) as info:
            provider().build_request(chat_request(**fields), stream=False)
        assert info.value.kind is ErrorKind.BAD_REQUEST
        assert (info.value.param, info.value.code) == (param, code)

    def test_harmless_fields_are_dropped(self) -> None:
        body = provider().build_request(chat_request(user="u1", store=True, n=1), stream=False)
        assert set(body) == {"model", "messages", "stream"}

    @pytest.mark.parametrize("url", ["http://h:1", "http://h:1/", "http://h:1/api",
                                     "http://h:1/api/chat"])
    def test_url_forms(self, url: str) -> None:
        assert provider(url).chat_url == "http://h:1/api/chat"


class TestConfig:
    def test_unknown_option_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="keepalive"):
            provider(keepalive="5m")

    def test_num_ctx_must_be_positive(self) -> None:
        with pytest.raises(ConfigError, match="num_ctx"):
            provider(num_ctx=0)


class TestAnswers:
    def test_model_not_pulled_is_a_404_the_router_moves_past(self) -> None:
        err = provider().error_from_response(404, b'{"error": "model \'llama3.2\' not found"}',
                                             {})
        assert (err.kind, err.upstream_status) == (ErrorKind.BAD_REQUEST, 404)
        assert err.message == "model 'llama3.2' not found"

    def test_final_line_may_carry_text_and_length(self) -> None:
        # The last NDJSON object can hold the last piece of text as well as done_reason.
        lines = [{"message": {"role": "assistant", "content": "Hel"}, "done": False},
                 {"message": {"role": "assistant", "content": "lo"}, "done": True,
                  "done_reason": "length", "prompt_eval_count": 3, "eval_count": 2}]

        async def chat(request: web.Request) -> web.StreamResponse:
            return await stream_response(request, lines, format="ndjson")

        async def run() -> list[dict[str, Any]]:
            async with FakeUpstream() as fake, aiohttp.ClientSession() as session:
                fake.route("POST", "/api/chat", chat)
                model = ModelConfig(name="m", provider="ollama-example", url=fake.url)
                return await collect_stream(OllamaProvider(model, session).stream(
                    chat_request(stream=True)))

        chunks = asyncio.run(run())
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello"
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    def test_plain_answer_length(self) -> None:
        async def chat(request: web.Request) -> web.StreamResponse:
            return json_response({"message": {"role": "assistant", "content": "Hel"},
                                  "done": True, "done_reason": "length"})

        async def run() -> dict[str, Any]:
            async with FakeUpstream() as fake, aiohttp.ClientSession() as session:
                fake.route("POST", "/api/chat", chat)
                model = ModelConfig(name="m", provider="ollama-example", url=fake.url)
                return (await OllamaProvider(model, session).chat(chat_request())).data

        data = asyncio.run(run())
        assert data["choices"][0]["finish_reason"] == "length"
        assert data["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
