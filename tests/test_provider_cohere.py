"""The Cohere provider against a fake Cohere v2 API on 127.0.0.1.

Fixtures follow the shapes of Cohere's API reference (https://docs.cohere.com/reference/chat,
/reference/chat-stream, /docs/tool-use-streaming, /reference/embed, /reference/errors).
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from aiproxy.config import ConfigError, ModelConfig
from aiproxy.provider import (
    ChatRequest,
    EmbeddingsRequest,
    ErrorKind,
    UpstreamError,
)
from aiproxy_providers.cohere import CohereProvider

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeCohere:
    """Records every request; answers with whatever ``respond`` is set to."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.respond: Handler = json_reply({})
        self.server: Any = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append({"path": request.path, "headers": request.headers,
                              "json": orjson.loads(raw)})
        return await self.respond(request)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/"))


def json_reply(body: Any, status: int = 200, headers: dict[str, str] | None = None,
               raw: bytes | None = None) -> Handler:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(body=raw if raw is not None else orjson.dumps(body), status=status,
                            headers=headers, content_type="application/json")
    return respond


def sse_frame(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def sse_reply(frames: list[bytes]) -> Handler:
    async def respond(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for frame in frames:
            await resp.write(frame)
        await resp.write_eof()
        return resp
    return respond


@pytest.fixture
async def upstream(aiohttp_server: Any) -> FakeCohere:
    fake = FakeCohere()
    app = web.Application()
    app.router.add_post("/v2/chat", fake.handle)
    app.router.add_post("/v2/embed", fake.handle)
    fake.server = await aiohttp_server(app)
    return fake


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


def provider(upstream: FakeCohere, session: aiohttp.ClientSession, *, url: str | None = None,
             token: str = "k", **options: Any) -> CohereProvider:  # noqa: S107 - a fake
    model = ModelConfig(name="command-r-plus", provider="cohere", url=url or upstream.url,
                        token=token, options=options)
    return CohereProvider(model, session)


def chat_request(body: dict[str, Any], stream: bool = False) -> ChatRequest:
    body = {"model": "command-r-plus", **body}
    return ChatRequest(body=body, raw=orjson.dumps(body), stream=stream)


USER = [{"role": "user", "content": "Hello world!"}]

# https://docs.cohere.com/reference/chat: the documented non-streamed answer.
TEXT_ANSWER = {
    "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
    "finish_reason": "COMPLETE",
    "message": {
        "role": "assistant",
        "content": [{"type": "text", "text": "LLMs stand for Large Language Models, "},
                    {"type": "text", "text": "which are a type of neural network model."}],
    },
    "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 418},
              "tokens": {"input_tokens": 71, "output_tokens": 418}},
}

# https://docs.cohere.com/docs/tool-use: an answer in the tool calling step.
TOOL_ANSWER = {
    "id": "0d2bd8a1-0a5a-4a1b-9a6e-1e3ce3e9d2a1",
    "finish_reason": "TOOL_CALL",
    "message": {
        "role": "assistant",
        "tool_plan": "I will search for the weather in Toronto.",
        "tool_calls": [{"id": "get_weather_1byjy32y4hvq", "type": "function",
                        "function": {"name": "get_weather",
                                     "arguments": "{\"location\":\"Toronto\"}"}}],
    },
    "usage": {"billed_units": {"input_tokens": 37, "output_tokens": 28},
              "tokens": {"input_tokens": 913, "output_tokens": 83}},
}

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Gets the weather of a given location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"]}}}


# ------------------------------------------------------------------------------ chat request


async def test_chat_request_and_text_answer(upstream: FakeCohere, session: Any) -> None:
    upstream.respond = json_reply(TEXT_ANSWER)
    answer = await provider(upstream, session).chat(chat_request({
        "messages": [
            {"role": "system", "content": "You respond in concise sentences."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi, how can I help you today?"},
            {"role": "user", "content": [{"type": "text", "text": "What is an LLM?"}]},
        ],
        "temperature": 0.3, "top_p": 0.5, "max_completion_tokens": 100, "stop": "END",
        "seed": 42, "frequency_penalty": 0.1, "presence_penalty": 0.2,
        # Harmless OpenAI-only parameters: ignored.
        "user": "u-1", "metadata": {"a": "b"}, "store": False, "parallel_tool_calls": True,
        "n": 1, "logprobs": False,
    }))

    sent = upstream.requests[0]
    assert sent["path"] == "/v2/chat"
    assert sent["headers"]["Authorization"] == "Bearer k"
    assert sent["headers"]["Content-Type"] == "application/json"
    assert sent["headers"]["Accept"] == "application/json"
    assert sent["json"] == {
        "model": "command-r-plus",
        "messages": [
            {"role": "system", "content": "You respond in concise sentences."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi, how can I help you today?"},
            {"role": "user", "content": [{"type": "text", "text": "What is an LLM?"}]},
        ],
        "stream": False,
        "temperature": 0.3, "p": 0.5, "max_tokens": 100, "stop_sequences": ["END"],
        "seed": 42, "frequency_penalty": 0.1, "presence_penalty": 0.2,
    }
    created = answer.data.pop("created")
    assert isinstance(created, int)
    assert answer.data == {
        "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
        "object": "chat.completion",
        "model": "command-r-plus",
        "choices": [{"index": 0, "message": {
            "role": "assistant",
            "content": "LLMs stand for Large Language Models, which are a type of neural "
                       "network model."},
            "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 71, "completion_tokens": 418, "total_tokens": 489},
    }


async def test_tools_and_tool_results(upstream: FakeCohere, session: Any) -> None:
    upstream.respond = json_reply(TOOL_ANSWER)
    strict_tool = {"type": "function", "function": {**WEATHER_TOOL["function"], "strict": True}}
    answer = await provider(upstream, session).chat(chat_request({
        "messages": [
            {"role": "developer", "content": "Today is April 30th"},
            {"role": "user", "content": "What's the weather in Toronto?"},
            {"role": "assistant", "content": None, "tool_plan": "I will look it up.",
             "tool_calls": [{"id": "get_weather_0", "type": "function", "function": {
                 "name": "get_weather", "arguments": "{\"location\":\"Toronto\"}"}}]},
            {"role": "tool", "tool_call_id": "get_weather_0", "name": "get_weather",
             "content": "[{\"temperature\": 20}]"},
            {"role": "tool", "tool_call_id": "get_weather_0",
             "content": [{"type": "text", "text": "sunny"}]},
        ],
        "tools": [strict_tool],
        "tool_choice": "required",
        "stop": ["a", "b"],
        "max_tokens": 50,
        "top_p": 1.0,
    }))

    assert upstream.requests[0]["json"] == {
        "model": "command-r-plus",
        "messages": [
            {"role": "system", "content": "Today is April 30th"},
            {"role": "user", "content": "What's the weather in Toronto?"},
            {"role": "assistant", "tool_plan": "I will look it up.",
             "tool_calls": [{"id": "get_weather_0", "type": "function", "function": {
                 "name": "get_weather", "arguments": "{\"location\":\"Toronto\"}"}}]},
            {"role": "tool", "tool_call_id": "get_weather_0",
             "content": "[{\"temperature\": 20}]"},
            {"role": "tool", "tool_call_id": "get_weather_0",
             "content": [{"type": "text", "text": "sunny"}]},
        ],
        "stream": False,
        "tools": [WEATHER_TOOL],
        "strict_tools": True,
        "tool_choice": "REQUIRED",
        "stop_sequences": ["a", "b"],
        "max_tokens": 50,
        "p": 0.99,  # Cohere's p stops at 0.99
    }
    choice = answer.data["choices"][0]
    assert choice == {"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "get_weather_1byjy32y4hvq", "type": "function",
                        "function": {"name": "get_weather",
                                     "arguments": "{\"location\":\"Toronto\"}"}}]}}
    assert answer.data["usage"] == {"prompt_tokens": 913, "completion_tokens": 83,
                                    "total_tokens": 996}


@pytest.mark.parametrize(("assistant", "expected"), [
    # An OpenAI-style model's text beside its tool calls: Cohere's tool_plan.
    ({"content": "Checking the weather."}, {"tool_plan": "Checking the weather."}),
    ({"content": [{"type": "text", "text": "Checking "}, {"type": "text", "text": "now."}]},
     {"tool_plan": "Checking now."}),
    # A plan the client kept from a Cohere answer is Cohere's own: it wins.
    ({"content": "Checking.", "tool_plan": "I will call get_weather."},
     {"tool_plan": "I will call get_weather."}),
    ({"content": ""}, {}),
    ({"content": None}, {}),
])
async def test_assistant_text_beside_tool_calls_is_the_tool_plan(
        upstream: FakeCohere, session: Any, assistant: dict[str, Any],
        expected: dict[str, Any]) -> None:
    # https://docs.cohere.com/docs/tool-use-overview (defect 3): never content and tool_calls.
    upstream.respond = json_reply(TEXT_ANSWER)
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"}}
    await provider(upstream, session).chat(chat_request({"messages": [
        *USER, {"role": "assistant", "tool_calls": [call], **assistant},
        {"role": "tool", "tool_call_id": "call_1", "content": "20"}]}))
    sent = upstream.requests[0]["json"]["messages"][1]
    assert sent == {"role": "assistant", "tool_calls": [call], **expected}


async def test_tool_choice_none_and_safety_mode(upstream: FakeCohere, session: Any) -> None:
    upstream.respond = json_reply(TEXT_ANSWER)
    await provider(upstream, session, safety_mode="STRICT").chat(chat_request(
        {"messages": USER, "tools": [WEATHER_TOOL], "tool_choice": "none"}))
    sent = upstream.requests[0]["json"]
    assert sent["tool_choice"] == "NONE"
    assert sent["safety_mode"] == "STRICT"
    assert "strict_tools" not in sent


@pytest.mark.parametrize(("response_format", "expected"), [
    ({"type": "text"}, None),
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "json_schema", "json_schema": {
        "name": "book", "strict": True,
        "schema": {"type": "object", "properties": {"title": {"type": "string"}},
                   "required": ["title"]}}},
     {"type": "json_object", "json_schema": {
         "type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}}),
])
async def test_response_format(upstream: FakeCohere, session: Any, response_format: Any,
                               expected: Any) -> None:
    upstream.respond = json_reply(TEXT_ANSWER)
    await provider(upstream, session).chat(
        chat_request({"messages": USER, "response_format": response_format}))
    assert upstream.requests[0]["json"].get("response_format") == expected


async def test_image_parts(upstream: FakeCohere, session: Any) -> None:
    # https://docs.cohere.com/docs/image-inputs: the same image_url part as OpenAI's.
    upstream.respond = json_reply(TEXT_ANSWER)
    content = [{"type": "text", "text": "What is in this image?"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=",
                                                   "detail": "low"}},
               {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]
    await provider(upstream, session).chat(
        chat_request({"messages": [{"role": "user", "content": content}]}))
    assert upstream.requests[0]["json"]["messages"] == [{"role": "user", "content": content}]


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 2}, "n"),
    ({"logprobs": True, "top_logprobs": 3}, "top_logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"response_format": {"type": "grammar"}}, "response_format"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
])
async def test_unsupported_parameters_are_refused(upstream: FakeCohere, session: Any,
                                                  body: dict[str, Any], param: str) -> None:
    with pytest.raises(UpstreamError) as info:
        await provider(upstream, session).chat(chat_request({"messages": USER, **body}))
    assert info.value.kind is ErrorKind.BAD_REQUEST
    assert info.value.status == 400
    assert info.value.param == param
    assert param.split("[")[0] in info.value.message
    assert upstream.requests == []


@pytest.mark.parametrize("url", ["{base}", "{base}/", "{base}/v2/chat", "{base}/v2"])
async def test_url_is_a_base_or_the_old_chat_endpoint(upstream: FakeCohere, session: Any,
                                                      url: str) -> None:
    upstream.respond = json_reply(TEXT_ANSWER)
    base = upstream.url.rstrip("/")
    await provider(upstream, session, url=url.format(base=base)).chat(
        chat_request({"messages": USER}))
    assert upstream.requests[0]["path"] == "/v2/chat"


def test_default_url_and_options(session: Any) -> None:
    model = ModelConfig(name="cohere/command-a-03-2025", provider="cohere", token="k")
    p = CohereProvider(model, session)
    assert p.base_url == "https://api.cohere.com"
    assert p.upstream_model == "command-a-03-2025"
    assert p.options.input_type == "search_document"
    assert p.options.safety_mode is None
    with pytest.raises(ConfigError, match=r"options: input_type must be one of"):
        CohereProvider(ModelConfig(name="e", provider="cohere",
                                   options={"input_type": "poem"}), session)
    with pytest.raises(ConfigError, match=r"options: safety_mode must be one of"):
        CohereProvider(ModelConfig(name="e", provider="cohere",
                                   options={"safety_mode": "SOMETIMES"}), session)
    with pytest.raises(ConfigError, match="unknown key"):
        CohereProvider(ModelConfig(name="e", provider="cohere", options={"k": 1}), session)


# ------------------------------------------------------------------------------ chat answer


@pytest.mark.parametrize(("cohere", "openai"), [
    ("COMPLETE", "stop"),
    ("STOP_SEQUENCE", "stop"),
    ("MAX_TOKENS", "length"),
    ("TOOL_CALL", "tool_calls"),
    ("ERROR_TOXIC", "content_filter"),
])
async def test_finish_reasons(upstream: FakeCohere, session: Any, cohere: str,
                              openai: str) -> None:
    upstream.respond = json_reply({**TEXT_ANSWER, "finish_reason": cohere})
    answer = await provider(upstream, session).chat(chat_request({"messages": USER}))
    assert answer.data["choices"][0]["finish_reason"] == openai


@pytest.mark.parametrize(("cohere", "kind"), [
    ("ERROR", ErrorKind.OVERLOADED),
    ("TIMEOUT", ErrorKind.TIMEOUT),
])
async def test_failed_generation_raises(upstream: FakeCohere, session: Any, cohere: str,
                                        kind: ErrorKind) -> None:
    upstream.respond = json_reply({**TEXT_ANSWER, "finish_reason": cohere})
    with pytest.raises(UpstreamError) as info:
        await provider(upstream, session).chat(chat_request({"messages": USER}))
    assert info.value.kind is kind
    assert info.value.kind.retryable


@pytest.mark.parametrize(("usage", "expected"), [
    ({"billed_units": {"input_tokens": 5, "output_tokens": 7}}, (5, 7)),
    ({"tokens": {"input_tokens": 71.0, "output_tokens": 9.0}}, (71, 9)),
    ({"billed_units": {"input_tokens": 5}, "tokens": {"output_tokens": 9}}, (5, 9)),
    (None, (0, 0)),
])
async def test_usage_from_tokens_or_billed_units(upstream: FakeCohere, session: Any, usage: Any,
                                                 expected: tuple[int, int]) -> None:
    upstream.respond = json_reply({**TEXT_ANSWER, "usage": usage})
    answer = await provider(upstream, session).chat(chat_request({"messages": USER}))
    assert answer.data["usage"] == {"prompt_tokens": expected[0],
                                    "completion_tokens": expected[1],
                                    "total_tokens": sum(expected)}


async def test_text_and_tool_calls_together_and_generated_id(upstream: FakeCohere,
                                                             session: Any) -> None:
    message = {**TOOL_ANSWER["message"], "content": [{"type": "text", "text": "Checking."}]}
    upstream.respond = json_reply({"finish_reason": "TOOL_CALL", "message": message})
    answer = await provider(upstream, session).chat(chat_request({"messages": USER}))
    assert answer.data["id"].startswith("chatcmpl-")
    assert answer.data["choices"][0]["message"]["content"] == "Checking."
    assert len(answer.data["choices"][0]["message"]["tool_calls"]) == 1


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"id": "x", "finish_reason": "COMPLETE"}',
                                 b'{"id": "x", "message": {"content": []}}',
                                 b'{"finish_reason": "COMPLETE", "message": {"content": []}, '
                                 b'"logprobs": {"text": "x"}}'])
async def test_malformed_answer_is_protocol(upstream: FakeCohere, session: Any,
                                            raw: bytes) -> None:
    upstream.respond = json_reply(None, raw=raw)
    with pytest.raises(UpstreamError) as info:
        await provider(upstream, session).chat(chat_request({"messages": USER}))
    assert info.value.kind is ErrorKind.PROTOCOL


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("status", "body", "headers", "kind", "client_status"), [
    (429, {"message": "You are using a Trial key, which is limited to 10 API calls / minute."},
     {"Retry-After": "7"}, ErrorKind.RATE_LIMITED, 429),
    (429, {"message": "too many tokens per minute"}, {}, ErrorKind.RATE_LIMITED, 429),
    (400, {"message": "too many tokens: total number of tokens in the prompt cannot exceed "
                      "4081 - received 4292."}, {}, ErrorKind.CONTEXT_LENGTH, 400),
    (400, {"id": "d3f6", "message": "invalid request: message must not be empty in a turn"},
     {}, ErrorKind.BAD_REQUEST, 400),
    (422, {"message": "unprocessable"}, {}, ErrorKind.BAD_REQUEST, 422),
    (404, {"message": "model 'nope' not found"}, {}, ErrorKind.BAD_REQUEST, 404),
    (401, {"message": "invalid api token"}, {}, ErrorKind.AUTH, 502),
    (403, {"message": "forbidden"}, {}, ErrorKind.AUTH, 502),
    (498, {"message": "invalid token"}, {}, ErrorKind.AUTH, 502),
    (402, {"message": "Please add or update your payment method"}, {}, ErrorKind.RATE_LIMITED,
     429),
    (499, {"message": "request cancelled"}, {}, ErrorKind.OVERLOADED, 502),
    (500, {"message": "internal server error"}, {}, ErrorKind.OVERLOADED, 502),
    (501, {"message": "not implemented"}, {}, ErrorKind.BAD_REQUEST, 400),
    (503, {"message": "service unavailable"}, {}, ErrorKind.OVERLOADED, 502),
    (504, {"message": "gateway timeout"}, {}, ErrorKind.TIMEOUT, 504),
])
async def test_error_answers(upstream: FakeCohere, session: Any, status: int, body: Any,
                             headers: dict[str, str], kind: ErrorKind,
                             client_status: int) -> None:
    upstream.respond = json_reply(body, status=status, headers=headers)
    with pytest.raises(UpstreamError) as info:
        await provider(upstream, session).chat(chat_request({"messages": USER}))
    err = info.value
    assert (err.kind, err.status, err.upstream_status) == (kind, client_status, status)
    assert err.message == body["message"]
    assert err.retry_after == (7.0 if headers else None)


async def test_error_without_json_body(upstream: FakeCohere, session: Any) -> None:
    upstream.respond = json_reply(None, status=502, raw=b"<html>Bad gateway</html>")
    with pytest.raises(UpstreamError) as info:
        await provider(upstream, session).chat(chat_request({"messages": USER}))
    assert info.value.kind is ErrorKind.OVERLOADED
    assert info.value.message == "upstream answered HTTP 502"


async def test_token_never_in_error_message(upstream: FakeCohere, session: Any) -> None:
    token = "co-secret-0123456789"
    upstream.respond = json_reply({"message": f"invalid api token {token}"}, status=401)
    with pytest.raises(UpstreamError) as info:
        await provider(upstream, session, token=token).chat(chat_request({"messages": USER}))
    assert token not in info.value.message
    assert token not in repr(info.value)
    assert info.value.message == "invalid api token [redacted]"


async def test_connection_refused(session: Any, unused_tcp_port: int) -> None:
    model = ModelConfig(name="m", provider="cohere", url=f"http://127.0.0.1:{unused_tcp_port}",
                        token="k")
    with pytest.raises(UpstreamError) as info:
        await CohereProvider(model, session).chat(chat_request({"messages": USER}))
    assert info.value.kind is ErrorKind.CONNECTION


# ------------------------------------------------------------------------------ streaming

STREAM_ID = "a8fc192e-4bb8-4e15-ae1f-a174e8b02ae8"

# Event shapes as documented in https://docs.cohere.com/docs/streaming and the chat-stream
# reference.
TEXT_EVENTS = [
    {"id": STREAM_ID, "type": "message-start", "delta": {"message": {
        "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [],
        "citations": []}}},
    {"type": "content-start", "index": 0,
     "delta": {"message": {"content": {"type": "text", "text": ""}}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Coca"}}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "-Cola"}}}},
    {"type": "citation-start", "index": 0, "delta": {"message": {"citations": {
        "start": 0, "end": 9, "text": "Coca-Cola", "sources": []}}}},
    {"type": "citation-end", "index": 0},
    {"type": "content-end", "index": 0},
    {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": {
        "billed_units": {"input_tokens": 21, "output_tokens": 105},
        "tokens": {"input_tokens": 186, "output_tokens": 105}}}},
]

# https://docs.cohere.com/docs/tool-use-streaming: the tool calling step, two parallel calls.
TOOL_EVENTS = [
    {"id": "fba98ad3-e5a1-413c-a8de-84fbf9baabf7", "type": "message-start",
     "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "",
                           "tool_calls": [], "citations": []}}},
    {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will search"}}},
    {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
        "id": "get_weather_p1t92w7gfgq7", "type": "function",
        "function": {"name": "get_weather", "arguments": ""}}}}},
    {"type": "tool-call-delta", "index": 0,
     "delta": {"message": {"tool_calls": {"function": {"arguments": "{\n    \""}}}}},
    {"type": "tool-call-delta", "index": 0,
     "delta": {"message": {"tool_calls": {"function": {"arguments": "location\": \"Madrid\"}"}}}}},
    {"type": "tool-call-end", "index": 0},
    {"type": "tool-call-start", "index": 1, "delta": {"message": {"tool_calls": {
        "id": "get_weather_ay6nmvjgp9vn", "type": "function",
        "function": {"name": "get_weather", "arguments": ""}}}}},
    {"type": "tool-call-delta", "index": 1,
     "delta": {"message": {"tool_calls": {"function": {
         "arguments": "{\"location\": \"Brasilia\"}"}}}}},
    {"type": "tool-call-end", "index": 1},
    {"type": "message-end", "id": None, "delta": {"finish_reason": "TOOL_CALL", "usage": {
        "billed_units": {"input_tokens": 37.0, "output_tokens": 28.0},
        "tokens": {"input_tokens": 913.0, "output_tokens": 83.0}}}},
]


def chunk(chunk_id: str, created: int, delta: dict[str, Any],
          finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
            "model": "command-r-plus",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                         "logprobs": None}]}


async def collect(stream: Any, into: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The stream's chunks; ``into`` keeps those seen before an error."""
    seen = [] if into is None else into
    async for c in stream:
        seen.append(c)
    return seen


@pytest.mark.parametrize("include_usage", [False, True])
async def test_stream_text(upstream: FakeCohere, session: Any, include_usage: bool) -> None:
    upstream.respond = sse_reply([sse_frame(e) for e in TEXT_EVENTS])
    body: dict[str, Any] = {"messages": USER, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    chunks = await collect(provider(upstream, session).stream(chat_request(body, stream=True)))

    sent = upstream.requests[0]
    assert sent["path"] == "/v2/chat"
    assert sent["headers"]["Authorization"] == "Bearer k"
    assert sent["headers"]["Accept"] == "text/event-stream"
    assert sent["json"] == {"model": "command-r-plus", "messages": USER, "stream": True}
    created = chunks[0]["created"]
    expected = [
        chunk(STREAM_ID, created, {"role": "assistant", "content": ""}),
        chunk(STREAM_ID, created, {"content": "Coca"}),
        chunk(STREAM_ID, created, {"content": "-Cola"}),
        chunk(STREAM_ID, created, {}, "stop"),
    ]
    if include_usage:
        expected.append({"id": STREAM_ID, "object": "chat.completion.chunk", "created": created,
                         "model": "command-r-plus", "choices": [],
                         "usage": {"prompt_tokens": 186, "completion_tokens": 105,
                                   "total_tokens": 291}})
    assert chunks == expected


async def test_stream_tool_calls(upstream: FakeCohere, session: Any) -> None:
    upstream.respond = sse_reply([sse_frame(e) for e in TOOL_EVENTS])
    request = chat_request({"messages": USER, "tools": [WEATHER_TOOL], "stream": True,
                            "stream_options": {"include_usage": True}}, stream=True)
    chunks = await collect(provider(upstream, session).stream(request))
    cid, created = "fba98ad3-e5a1-413c-a8de-84fbf9baabf7", chunks[0]["created"]
    assert chunks == [
        chunk(cid, created, {"role": "assistant", "content": ""}),
        chunk(cid, created, {"tool_calls": [{
            "index": 0, "id": "get_weather_p1t92w7gfgq7", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk(cid, created, {"tool_calls": [{"index": 0, "function": {"arguments": "{\n    \""}}]}),
        chunk(cid, created, {"tool_calls": [{"index": 0, "function": {
            "arguments": "location\": \"Madrid\"}"}}]}),
        chunk(cid, created, {"tool_calls": [{
            "index": 1, "id": "get_weather_ay6nmvjgp9vn", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk(cid, created, {"tool_calls": [{"index": 1, "function": {
            "arguments": "{\"location\": \"Brasilia\"}"}}]}),
        chunk(cid, created, {}, "tool_calls"),
        {"id": cid, "object": "chat.completion.chunk", "created": created,
         "model": "command-r-plus", "choices": [],
         "usage": {"prompt_tokens": 913, "completion_tokens": 83, "total_tokens": 996}},
    ]


async def test_stream_data_only_events_and_billed_units(upstream: FakeCohere,
                                                        session: Any) -> None:
    # No "event:" lines, CRLF line ends, usage only in billed_units: still a complete answer.
    frames = [b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in TEXT_EVENTS[:3]]
    frames.append(b"data: " + orjson.dumps({"type": "message-end", "delta": {
        "finish_reason": "MAX_TOKENS",
        "usage": {"billed_units": {"input_tokens": 3, "output_tokens": 4}}}}) + b"\r\n\r\n")
    upstream.respond = sse_reply(frames)
    request = chat_request({"messages": USER, "stream_options": {"include_usage": True}}, True)
    chunks = await collect(provider(upstream, session).stream(request))
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""}, {"content": "Coca"}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4,
                                   "total_tokens": 7}


async def test_stream_malformed_event(upstream: FakeCohere, session: Any) -> None:
    frames = [sse_frame(e) for e in TEXT_EVENTS[:3]]
    frames.append(b"event: content-delta\ndata: {\"type\": \"content-delta\", \"delta\n\n")
    frames += [sse_frame(e) for e in TEXT_EVENTS[3:]]
    upstream.respond = sse_reply(frames)
    seen: list[dict[str, Any]] = []
    stream = provider(upstream, session).stream(chat_request({"messages": USER}, True))
    with pytest.raises(UpstreamError) as info:
        await collect(stream, seen)
    assert info.value.kind is ErrorKind.PROTOCOL
    assert [c["choices"][0]["delta"] for c in seen] == [
        {"role": "assistant", "content": ""}, {"content": "Coca"}]


@pytest.mark.parametrize("event", [
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": 5}}}},
    {"type": "tool-call-delta", "index": 3,
     "delta": {"message": {"tool_calls": {"function": {"arguments": "{}"}}}}},
    {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {"id": "x"}}}},
])
async def test_stream_event_of_wrong_shape(upstream: FakeCohere, session: Any,
                                           event: dict[str, Any]) -> None:
    upstream.respond = sse_reply([sse_frame(TEXT_EVENTS[0]), sse_frame(event),
                                  sse_frame(TEXT_EVENTS[-1])])
    stream = provider(upstream, session).stream(chat_request({"messages": USER}, True))
    assert (await anext(stream))["choices"][0]["delta"]["role"] == "assistant"
    with pytest.raises(UpstreamError) as info:
        await anext(stream)
    assert info.value.kind is ErrorKind.PROTOCOL


async def test_stream_cut_before_message_end(upstream: FakeCohere, session: Any) -> None:
    upstream.respond = sse_reply([sse_frame(e) for e in TEXT_EVENTS[:4]])
    seen: list[dict[str, Any]] = []
    stream = provider(upstream, session).stream(chat_request({"messages": USER}, True))
    with pytest.raises(UpstreamError) as info:
        await collect(stream, seen)
    assert info.value.kind is ErrorKind.PROTOCOL
    assert "message-end" in info.value.message
    assert all(c["choices"][0]["finish_reason"] is None for c in seen)


async def test_stream_error_finish(upstream: FakeCohere, session: Any) -> None:
    end = {"type": "message-end", "delta": {"error": "internal generation failure",
                                            "finish_reason": "ERROR"}}
    upstream.respond = sse_reply([sse_frame(e) for e in TEXT_EVENTS[:3]] + [sse_frame(end)])
    with pytest.raises(UpstreamError) as info:
        await collect(provider(upstream, session).stream(chat_request({"messages": USER}, True)))
    assert info.value.kind is ErrorKind.OVERLOADED
    assert "internal generation failure" in info.value.message


async def test_stream_http_error(upstream: FakeCohere, session: Any) -> None:
    upstream.respond = json_reply({"message": "slow down"}, status=429,
                                  headers={"Retry-After": "2"})
    with pytest.raises(UpstreamError) as info:
        await collect(provider(upstream, session).stream(chat_request({"messages": USER}, True)))
    assert (info.value.kind, info.value.retry_after) == (ErrorKind.RATE_LIMITED, 2.0)


async def test_stream_early_close_releases_the_connection(upstream: FakeCohere,
                                                          session: Any) -> None:
    disconnected = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in TEXT_EVENTS[:3]:
            await resp.write(sse_frame(event))
        try:
            while True:  # keep generating until the client goes away
                await resp.write(sse_frame(TEXT_EVENTS[3]))
                await asyncio.sleep(0.01)
        finally:
            # aiohttp cancels the handler (or the write fails) once the client hangs up.
            disconnected.set()

    upstream.respond = endless
    stream = provider(upstream, session).stream(chat_request({"messages": USER}, True))
    assert (await anext(stream))["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert (await anext(stream))["choices"][0]["delta"] == {"content": "Coca"}
    await stream.aclose()
    await asyncio.wait_for(disconnected.wait(), timeout=5)
    assert len(session.connector._acquired) == 0


# ------------------------------------------------------------------------------ embeddings

# https://docs.cohere.com/reference/embed: the documented answer, float embeddings only.
EMBED_ANSWER = {
    "id": "da6e531f-83b9-4a6b-9a1c-1b9c7a1a1f1e",
    "embeddings": {"float": [[0.016296387, -0.008354187, 0.5], [0.25, -1.5, 0.0]]},
    "texts": ["hello", "goodbye"],
    "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 2}},
    "response_type": "embeddings_by_type",
}


async def test_embeddings_float(upstream: FakeCohere, session: Any) -> None:
    upstream.respond = json_reply(EMBED_ANSWER)
    p = CohereProvider(ModelConfig(name="embed-v4.0", provider="cohere", url=upstream.url,
                                   token="k", options={"input_type": "search_query"}), session)
    body = {"model": "embed-v4.0", "input": ["hello", "goodbye"], "dimensions": 256,
            "user": "u"}
    answer = await p.embeddings(EmbeddingsRequest(body=body, raw=orjson.dumps(body)))
    sent = upstream.requests[0]
    assert sent["path"] == "/v2/embed"
    assert sent["headers"]["Authorization"] == "Bearer k"
    assert sent["json"] == {"model": "embed-v4.0", "texts": ["hello", "goodbye"],
                            "input_type": "search_query", "embedding_types": ["float"],
                            "output_dimension": 256}
    assert answer.data == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0,
                  "embedding": [0.016296387, -0.008354187, 0.5]},
                 {"object": "embedding", "index": 1, "embedding": [0.25, -1.5, 0.0]}],
        "model": "embed-v4.0",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }


async def test_embeddings_base64(upstream: FakeCohere, session: Any) -> None:
    upstream.respond = json_reply({**EMBED_ANSWER, "embeddings": {"float": [[0.25, -1.5, 0]]}})
    body = {"model": "command-r-plus", "input": "hello", "encoding_format": "base64"}
    answer = await provider(upstream, session).embeddings(
        EmbeddingsRequest(body=body, raw=orjson.dumps(body)))
    assert upstream.requests[0]["json"]["texts"] == ["hello"]
    assert upstream.requests[0]["json"]["input_type"] == "search_document"
    encoded = answer.data["data"][0]["embedding"]
    assert encoded == base64.b64encode(struct.pack("<3f", 0.25, -1.5, 0.0)).decode()
    assert struct.unpack("<3f", base64.b64decode(encoded)) == (0.25, -1.5, 0.0)


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [[1, 2, 3]]}, "input"),
    ({"input": []}, "input"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
])
async def test_embeddings_refused(upstream: FakeCohere, session: Any, body: dict[str, Any],
                                  param: str) -> None:
    with pytest.raises(UpstreamError) as info:
        await provider(upstream, session).embeddings(
            EmbeddingsRequest(body=body, raw=orjson.dumps(body)))
    assert (info.value.kind, info.value.param) == (ErrorKind.BAD_REQUEST, param)
    assert upstream.requests == []


async def test_embeddings_count_mismatch_is_protocol(upstream: FakeCohere, session: Any) -> None:
    upstream.respond = json_reply(EMBED_ANSWER)
    body = {"input": "only one"}
    with pytest.raises(UpstreamError) as info:
        await provider(upstream, session).embeddings(
            EmbeddingsRequest(body=body, raw=orjson.dumps(body)))
    assert info.value.kind is ErrorKind.PROTOCOL
