"""The Gemini provider against a fake Gemini API on 127.0.0.1.

Fixtures follow the documented shapes of the Gemini API (v1beta):
https://ai.google.dev/api/generate-content, https://ai.google.dev/api/embeddings and
https://ai.google.dev/gemini-api/docs/troubleshooting.
"""

from __future__ import annotations

import asyncio
import base64
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from aiproxy.config import ConfigError, ModelConfig
from aiproxy.provider import ChatRequest, EmbeddingsRequest, ErrorKind, UpstreamError
from aiproxy_providers.gemini import GeminiProvider

Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]
NAME = "gemini/gemini-2.0-flash"


class FakeGemini:
    """Records each request and answers with the next scripted reply."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: list[Reply] = []
        self.disconnected = asyncio.Event()
        self.server: Any = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append({"path": request.path, "query": dict(request.query),
                              "headers": dict(request.headers), "json": orjson.loads(raw)})
        return await self.replies.pop(0)(request)

    def reply(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        async def answer(request: web.Request) -> web.StreamResponse:
            body = data if isinstance(data, bytes) else orjson.dumps(data)
            return web.Response(body=body, status=status, headers=headers,
                                content_type="application/json")
        self.replies.append(answer)

    def sse(self, *events: Any, hang: bool = False) -> None:
        """Answer ``events`` as SSE (dicts JSON-encoded, bytes as they are); ``hang`` keeps
        the stream open, sending unfinished chunks, until the client goes away."""
        async def answer(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for event in events:
                data = event if isinstance(event, bytes) else orjson.dumps(event)
                await resp.write(b"data: " + data + b"\r\n\r\n")
            if hang:
                try:
                    for _ in range(500):
                        await asyncio.sleep(0.01)
                        await resp.write(b"data: " + orjson.dumps(text_event("more")) + b"\r\n\r\n")
                except (ConnectionResetError, asyncio.CancelledError):
                    self.disconnected.set()
                    raise
                return resp
            await resp.write_eof()
            return resp
        self.replies.append(answer)


@pytest.fixture
async def gemini(aiohttp_server: Any) -> FakeGemini:
    fake = FakeGemini()
    app = web.Application()
    app.router.add_post("/v1beta/models/{action}", fake.handle)
    fake.server = await aiohttp_server(app)
    return fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
def make_provider(gemini: FakeGemini, session: aiohttp.ClientSession
                  ) -> Callable[..., GeminiProvider]:
    def make(path: str = "/v1beta", **config: Any) -> GeminiProvider:
        config = {"name": NAME, "provider": "gemini", "token": "k", **config}
        return GeminiProvider(ModelConfig(url=str(gemini.server.make_url(path)), **config),
                              session)
    return make


@pytest.fixture
def provider(make_provider: Callable[..., GeminiProvider]) -> GeminiProvider:
    return make_provider()


def chat_request(body: dict[str, Any], stream: bool = False) -> ChatRequest:
    body = {"model": NAME, **body}
    return ChatRequest(body=body, raw=orjson.dumps(body), stream=stream)


def hello() -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "Hi"}]}


def acquired(session: aiohttp.ClientSession) -> int:
    return len(session.connector._acquired)  # type: ignore[union-attr]


def text_event(text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"},
                                 "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "modelVersion": "gemini-2.0-flash", **extra}


SAFETY_RATINGS = [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}]

TEXT_ANSWER = {
    "candidates": [{
        "content": {"parts": [{"text": "Hello"}, {"text": " world"}], "role": "model"},
        "finishReason": "STOP",
        "index": 0,
        "safetyRatings": SAFETY_RATINGS,
    }],
    "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
    "modelVersion": "gemini-2.0-flash",
    "responseId": "mJ5iaJ6jB4mEqtsP",
}


def strip_ids(data: dict[str, Any]) -> dict[str, Any]:
    """Check the generated id and created, and drop them so the rest compares exactly."""
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", data["id"])
    assert isinstance(data["created"], int)
    return {k: v for k, v in data.items() if k not in ("id", "created")}


# --- request translation ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1beta", "/v1beta/", "/v1beta/models", "/v1beta/models/"])
async def test_url_forms_and_key_header(gemini: FakeGemini,
                                        make_provider: Callable[..., GeminiProvider],
                                        path: str) -> None:
    gemini.reply(TEXT_ANSWER)
    await make_provider(path).chat(chat_request(hello()))
    seen = gemini.requests[0]
    assert seen["path"] == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert seen["query"] == {}
    assert seen["headers"]["x-goog-api-key"] == "k"
    assert seen["headers"]["Content-Type"] == "application/json"
    assert seen["json"] == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


async def test_upstream_model_with_models_prefix(gemini: FakeGemini,
                                                 make_provider: Callable[..., GeminiProvider]
                                                 ) -> None:
    gemini.reply(TEXT_ANSWER)
    await make_provider(upstream_model="models/gemini-2.0-flash").chat(chat_request(hello()))
    assert gemini.requests[0]["path"] == "/v1beta/models/gemini-2.0-flash:generateContent"


async def test_default_url(session: aiohttp.ClientSession) -> None:
    provider = GeminiProvider(ModelConfig(name=NAME, provider="gemini", token="k"), session)
    root = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash"
    assert provider.chat_url == f"{root}:generateContent"
    assert provider.stream_url == f"{root}:streamGenerateContent?alt=sse"
    assert provider.embed_url == f"{root}:embedContent"
    assert provider.batch_embed_url == f"{root}:batchEmbedContents"


async def test_full_request_translation(gemini: FakeGemini, provider: GeminiProvider) -> None:
    weather = {"type": "object", "properties": {"city": {"type": "string"}},
               "required": ["city"], "additionalProperties": False}
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=",
                                                    "detail": "low"}},
            ]},
            {"role": "assistant", "content": "A cat."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_time", "arguments": '{"city": "Rome"}'}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
            {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
            {"role": "user", "content": "Thanks"},
        ],
        "temperature": 0.2, "top_p": 0.9, "max_tokens": 100, "max_completion_tokens": 200,
        "stop": ["END", "STOP"], "n": 2, "presence_penalty": 0.5, "frequency_penalty": 0.25,
        "seed": 7,
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                              "parameters": weather, "strict": True}},
            {"type": "function", "function": {"name": "get_time"}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        # OpenAI-only fields that change nothing Gemini does: ignored.
        "user": "u1", "metadata": {"a": "b"}, "store": False, "parallel_tool_calls": True,
        "stream_options": {"include_usage": True},
    }
    gemini.reply(TEXT_ANSWER)
    await provider.chat(chat_request(body))
    assert gemini.requests[0]["json"] == {
        "systemInstruction": {"parts": [{"text": "Be brief.\n\nAnswer in French."}]},
        "contents": [
            {"role": "user", "parts": [
                {"text": "What is in this image?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            ]},
            {"role": "model", "parts": [{"text": "A cat."}]},
            {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
            # The client's tool call ids go back as FunctionCall/FunctionResponse ids.
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"},
                                  "id": "call_1"}},
                {"functionCall": {"name": "get_time", "args": {"city": "Rome"},
                                  "id": "call_2"}},
            ]},
            # The tool results and the next user message: one user turn.
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21},
                                      "id": "call_1"}},
                {"functionResponse": {"name": "get_time", "response": {"content": "noon"},
                                      "id": "call_2"}},
                {"text": "Thanks"},
            ]},
        ],
        "tools": [{"functionDeclarations": [
            {"name": "get_weather", "description": "Weather", "parametersJsonSchema": weather},
            {"name": "get_time"},
        ]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                                                 "allowedFunctionNames": ["get_weather"]}},
        "generationConfig": {
            "temperature": 0.2, "topP": 0.9, "maxOutputTokens": 200,
            "stopSequences": ["END", "STOP"], "candidateCount": 2, "presencePenalty": 0.5,
            "frequencyPenalty": 0.25, "seed": 7,
        },
    }


async def test_consecutive_turns_merged_and_other_inputs(gemini: FakeGemini,
                                                         provider: GeminiProvider) -> None:
    gemini.reply(TEXT_ANSWER)
    await provider.chat(chat_request({"messages": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=",
                                      "filename": "a.pdf"}},
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "three"},
    ], "max_tokens": 50, "stop": "END"}))
    assert gemini.requests[0]["json"] == {
        "contents": [
            {"role": "user", "parts": [
                {"text": "one"},
                {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
            ]},
            {"role": "model", "parts": [{"text": "two"}, {"text": "three"}]},
        ],
        "generationConfig": {"maxOutputTokens": 50, "stopSequences": ["END"]},
    }


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"functionCallingConfig": {"mode": "AUTO"}}),
    ("none", {"functionCallingConfig": {"mode": "NONE"}}),
    ("required", {"functionCallingConfig": {"mode": "ANY"}}),
    (None, None),
])
async def test_tool_choice(gemini: FakeGemini, provider: GeminiProvider, choice: Any,
                           expected: Any) -> None:
    gemini.reply(TEXT_ANSWER)
    body = {**hello(), "tools": [{"type": "function", "function": {"name": "f"}}]}
    if choice is not None:
        body["tool_choice"] = choice
    await provider.chat(chat_request(body))
    assert gemini.requests[0]["json"].get("toolConfig") == expected


@pytest.mark.parametrize(("response_format", "expected"), [
    ({"type": "json_object"}, {"responseMimeType": "application/json"}),
    ({"type": "json_schema", "json_schema": {
        "name": "city", "strict": True,
        "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}},
     {"responseMimeType": "application/json",
      "responseJsonSchema": {"type": "object", "properties": {"name": {"type": "string"}}}}),
    ({"type": "text"}, None),
])
async def test_response_format(gemini: FakeGemini, provider: GeminiProvider,
                               response_format: dict[str, Any], expected: Any) -> None:
    gemini.reply(TEXT_ANSWER)
    await provider.chat(chat_request({**hello(), "response_format": response_format}))
    assert gemini.requests[0]["json"].get("generationConfig") == expected


async def test_safety_settings_option(gemini: FakeGemini,
                                      make_provider: Callable[..., GeminiProvider]) -> None:
    settings = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]
    gemini.reply(TEXT_ANSWER)
    await make_provider(options={"safety_settings": settings}).chat(chat_request(hello()))
    assert gemini.requests[0]["json"]["safetySettings"] == settings


@pytest.mark.parametrize("options", [{"safety_settings": [{"category": "X"}]}, {"other": 1},
                                     {"task_type": "SUMMARY"}])
def test_bad_options(make_provider: Callable[..., GeminiProvider],
                     options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        make_provider(options=options)


# ``param`` is the path of the field at fault, as every provider on the kit names it.
@pytest.mark.parametrize(("body", "param", "words"), [
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/cat.png"}}]}]},
     "messages[0].content[0]", "https:// URLs or data: URLs"),
    ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}]},
     "messages[0].content[0]", "video_url"),
    ({"messages": [{"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
     "messages[0].tool_call_id", "call_x"),
    ({"messages": [{"role": "function", "name": "f", "content": "1"}]}, "messages[0].role",
     "role"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages",
     "at least one"),
    ({**hello(), "top_logprobs": 3}, "top_logprobs", "requires logprobs"),
    ({**hello(), "logprobs": True, "top_logprobs": 21}, "top_logprobs", "0 to 20"),
    ({**hello(), "reasoning_effort": "maximal"}, "reasoning_effort", "one of none"),
    ({**hello(), "logit_bias": {"42": 5}}, "logit_bias", "logit_bias"),
    ({**hello(), "functions": [{"name": "f"}]}, "functions", "tools"),
    ({**hello(), "modalities": ["text", "audio"]}, "modalities", "audio"),
    ({**hello(), "tools": [{"type": "code_interpreter"}]}, "tools[0]", "function tools"),
    ({**hello(), "tool_choice": "required"}, "tool_choice", "requires tools"),
    ({**hello(), "response_format": {"type": "xml"}}, "response_format", "xml"),
])
async def test_unsupported_requests(gemini: FakeGemini, provider: GeminiProvider,
                                    body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(UpstreamError) as info:
        await provider.chat(chat_request(body))
    assert info.value.kind is ErrorKind.BAD_REQUEST
    assert info.value.status == 400
    assert info.value.param == param
    assert words in info.value.message
    assert gemini.requests == []


# --- response translation ---------------------------------------------------------------------


async def test_text_answer(gemini: FakeGemini, provider: GeminiProvider,
                           session: aiohttp.ClientSession) -> None:
    gemini.reply(TEXT_ANSWER)
    answer = await provider.chat(chat_request(hello()))
    assert strip_ids(answer.data) == {
        "object": "chat.completion",
        "model": NAME,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    assert acquired(session) == 0


async def test_thoughts_left_out_and_counted(gemini: FakeGemini,
                                             provider: GeminiProvider) -> None:
    gemini.reply({
        "candidates": [{"content": {"parts": [
            {"text": "Let me think...", "thought": True},
            {"text": "42", "thoughtSignature": "c2ln"},
        ], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2,
                          "thoughtsTokenCount": 30, "cachedContentTokenCount": 4,
                          "totalTokenCount": 42},
    })
    answer = (await provider.chat(chat_request(hello()))).data
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "42"}
    assert answer["usage"] == {"prompt_tokens": 10, "completion_tokens": 32, "total_tokens": 42,
                               "prompt_tokens_details": {"cached_tokens": 4},
                               "completion_tokens_details": {"reasoning_tokens": 30}}


async def test_tool_call_answer(gemini: FakeGemini, provider: GeminiProvider) -> None:
    gemini.reply({
        "candidates": [{"content": {"parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"id": "fc-7", "name": "get_time", "args": {}}},
        ], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 8,
                          "totalTokenCount": 28},
    })
    answer = (await provider.chat(chat_request(hello()))).data
    choice = answer["choices"][0]
    calls = choice["message"]["tool_calls"]
    assert re.fullmatch(r"call_[0-9a-f]{24}", calls[0]["id"])
    assert choice == {"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": calls[0]["id"], "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "fc-7", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}},
        ]}}


async def test_text_and_tool_call(gemini: FakeGemini, provider: GeminiProvider) -> None:
    gemini.reply({"candidates": [{"content": {"parts": [
        {"text": "Checking."}, {"functionCall": {"id": "a", "name": "f", "args": {"x": 1}}},
    ], "role": "model"}, "finishReason": "STOP", "index": 0}]})
    choice = (await provider.chat(chat_request(hello()))).data["choices"][0]
    assert choice == {"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}]}}


async def test_thought_signature_round_trip(gemini: FakeGemini,
                                           make_provider: Callable[..., GeminiProvider]
                                           ) -> None:
    """Gemini 3 needs each functionCall's thoughtSignature back: it travels in extra_content
    (as on Google's OpenAI-compatible endpoint) and is remembered for clients that drop it."""
    provider = make_provider()
    gemini.reply({"candidates": [{"content": {"parts": [
        {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "c2lnLTE="},
    ], "role": "model"}, "finishReason": "STOP", "index": 0}]})
    call = (await provider.chat(chat_request(hello()))).data["choices"][0]["message"][
        "tool_calls"][0]
    assert call["extra_content"] == {"google": {"thought_signature": "c2lnLTE="}}

    def follow_up(tool_call: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": None, "tool_calls": [tool_call]},
            {"role": "tool", "tool_call_id": tool_call["id"], "content": "ok"},
        ]}

    replayed = {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "c2lnLTE="}]}
    stripped = {k: v for k, v in call.items() if k != "extra_content"}
    gemini.reply(TEXT_ANSWER)
    await provider.chat(chat_request(follow_up(stripped)))  # remembered by id
    assert gemini.requests[-1]["json"]["contents"][1] == replayed
    gemini.reply(TEXT_ANSWER)
    await make_provider().chat(chat_request(follow_up(call)))  # carried by the client
    assert gemini.requests[-1]["json"]["contents"][1] == replayed
    gemini.reply(TEXT_ANSWER)
    await make_provider().chat(chat_request(follow_up(stripped)))  # unknown: none sent
    assert gemini.requests[-1]["json"]["contents"][1] == {
        "role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}


@pytest.mark.parametrize(("reason", "expected"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
    ("RECITATION", "content_filter"), ("BLOCKLIST", "content_filter"),
    ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("IMAGE_SAFETY", "content_filter"), ("OTHER", "stop"), ("LANGUAGE", "stop"),
    ("MALFORMED_FUNCTION_CALL", "stop"), ("FINISH_REASON_UNSPECIFIED", "stop"),
])
async def test_finish_reasons(gemini: FakeGemini, provider: GeminiProvider, reason: str,
                              expected: str) -> None:
    gemini.reply(text_event("x", reason))
    answer = (await provider.chat(chat_request(hello()))).data
    assert answer["choices"][0]["finish_reason"] == expected


async def test_several_candidates(gemini: FakeGemini, provider: GeminiProvider) -> None:
    gemini.reply({"candidates": [
        {"content": {"parts": [{"text": "A"}], "role": "model"}, "finishReason": "STOP",
         "index": 0},
        {"content": {"parts": [{"text": "B"}], "role": "model"}, "finishReason": "MAX_TOKENS",
         "index": 1},
    ]})
    answer = (await provider.chat(chat_request({**hello(), "n": 2}))).data
    assert answer["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "B"},
         "finish_reason": "length"},
    ]


async def test_blocked_prompt(gemini: FakeGemini, provider: GeminiProvider) -> None:
    gemini.reply({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": SAFETY_RATINGS},
                  "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}})
    with pytest.raises(UpstreamError) as info:
        await provider.chat(chat_request(hello()))
    assert info.value.kind is ErrorKind.CONTENT_FILTER
    assert info.value.code == "content_filter"
    assert info.value.status == 400
    assert "SAFETY" in info.value.message


@pytest.mark.parametrize(("answer", "content", "finish"), [
    ({"usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3}}, "", "stop"),
    ({"candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": SAFETY_RATINGS}]},
     "", "content_filter"),
    ({"candidates": [{"content": {"parts": [], "role": "model"}, "finishReason": "MAX_TOKENS",
                      "index": 0}]}, "", "length"),
    ({"candidates": [{"content": {"role": "model"}, "finishReason": "STOP", "index": 0}]},
     "", "stop"),
])
async def test_empty_answers(gemini: FakeGemini, provider: GeminiProvider,
                             answer: dict[str, Any], content: str, finish: str) -> None:
    gemini.reply(answer)
    data = (await provider.chat(chat_request(hello()))).data
    assert data["choices"] == [{"index": 0, "message": {"role": "assistant", "content": content},
                                "finish_reason": finish}]
    assert data["usage"]["total_tokens"] == answer.get("usageMetadata", {}).get(
        "totalTokenCount", 0)


async def test_non_json_answer(gemini: FakeGemini, provider: GeminiProvider) -> None:
    gemini.reply(b"<html>oops</html>")
    with pytest.raises(UpstreamError) as info:
        await provider.chat(chat_request(hello()))
    assert info.value.kind is ErrorKind.PROTOCOL


# --- errors -----------------------------------------------------------------------------------


def google_error(code: int, status: str, message: str, *details: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
QUOTA = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
    {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
     "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "quotaValue": "15"}]}
KEY_INVALID = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
               "domain": "googleapis.com"}


@pytest.mark.parametrize(("status", "body", "headers", "kind", "out", "code", "retry"), [
    (429, google_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.", QUOTA,
                       RETRY_INFO), None, ErrorKind.RATE_LIMITED, 429, "RESOURCE_EXHAUSTED",
     37.0),
    (429, google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.", RETRY_INFO),
     {"Retry-After": "5"}, ErrorKind.RATE_LIMITED, 429, "RESOURCE_EXHAUSTED", 5.0),
    (400, google_error(400, "INVALID_ARGUMENT",
                       "Invalid value at 'generation_config.temperature' (TYPE_FLOAT)"),
     None, ErrorKind.BAD_REQUEST, 400, "INVALID_ARGUMENT", None),
    (400, google_error(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the "
                       "maximum number of tokens allowed (1048576)."),
     None, ErrorKind.CONTEXT_LENGTH, 400, "context_length_exceeded", None),
    (400, google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                       KEY_INVALID), None, ErrorKind.AUTH, 502, "INVALID_ARGUMENT", None),
    (400, google_error(400, "FAILED_PRECONDITION", "User location is not supported for the API "
                       "use."), None, ErrorKind.AUTH, 502, "FAILED_PRECONDITION", None),
    (403, google_error(403, "PERMISSION_DENIED", "Your API key doesn't have the required "
                       "permissions."), None, ErrorKind.AUTH, 502, "PERMISSION_DENIED", None),
    (404, google_error(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta"),
     None, ErrorKind.BAD_REQUEST, 404, "NOT_FOUND", None),
    (500, google_error(500, "INTERNAL", "An internal error has occurred."), None,
     ErrorKind.OVERLOADED, 502, "INTERNAL", None),
    (503, google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
     None, ErrorKind.OVERLOADED, 502, "UNAVAILABLE", None),
    (504, google_error(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could "
                       "complete."), None, ErrorKind.TIMEOUT, 504, "DEADLINE_EXCEEDED", None),
    (502, b"<html>Bad Gateway</html>", None, ErrorKind.OVERLOADED, 502, None, None),
])
async def test_errors(gemini: FakeGemini, provider: GeminiProvider,
                      session: aiohttp.ClientSession, status: int, body: Any,
                      headers: dict[str, str] | None, kind: ErrorKind, out: int,
                      code: str | None, retry: float | None) -> None:
    gemini.reply(body, status=status, headers=headers)
    with pytest.raises(UpstreamError) as info:
        await provider.chat(chat_request(hello()))
    err = info.value
    assert (err.kind, err.status, err.code, err.retry_after, err.upstream_status) == \
        (kind, out, code, retry, status)
    if isinstance(body, dict):
        assert err.message == body["error"]["message"]
    assert acquired(session) == 0


async def test_error_never_shows_the_key(gemini: FakeGemini,
                                         make_provider: Callable[..., GeminiProvider]) -> None:
    gemini.reply(google_error(400, "INVALID_ARGUMENT", "API key secret-key-123 not valid.",
                              KEY_INVALID), status=400)
    with pytest.raises(UpstreamError) as info:
        await make_provider(token="secret-key-123").chat(chat_request(hello()))
    assert "secret-key-123" not in info.value.message
    assert "secret-key-123" not in repr(info.value)


# --- streaming --------------------------------------------------------------------------------


async def collect(provider: GeminiProvider, request: ChatRequest) -> list[dict[str, Any]]:
    return [chunk async for chunk in provider.stream(request)]


def strip_chunks(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One id and created for the whole stream; then compare the rest exactly."""
    assert len({(c["id"], c["created"]) for c in chunks}) == 1
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == NAME
    strip_ids(chunks[0])
    return [c["choices"] for c in chunks]


def delta(value: dict[str, Any], finish: str | None = None, index: int = 0) -> list[Any]:
    return [{"index": index, "delta": value, "finish_reason": finish}]


async def test_stream_text_with_usage(gemini: FakeGemini, provider: GeminiProvider,
                                      session: aiohttp.ClientSession) -> None:
    gemini.sse(
        text_event("Hel", usageMetadata={"promptTokenCount": 4, "totalTokenCount": 4}),
        {"candidates": [{"content": {"parts": [{"text": "hmm", "thought": True}],
                                     "role": "model"}, "index": 0}]},
        text_event("lo"),
        text_event("!", "STOP", usageMetadata={"promptTokenCount": 4, "candidatesTokenCount": 3,
                                              "totalTokenCount": 7}),
    )
    body = {**hello(), "stream": True, "stream_options": {"include_usage": True}}
    chunks = await collect(provider, chat_request(body, stream=True))
    seen = gemini.requests[0]
    assert seen["path"] == "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
    assert seen["query"] == {"alt": "sse"}
    assert seen["headers"]["x-goog-api-key"] == "k"
    assert seen["json"] == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    assert strip_chunks(chunks) == [
        delta({"role": "assistant", "content": ""}),
        delta({"content": "Hel"}),
        delta({"content": "lo"}),
        delta({"content": "!"}),
        delta({}, "stop"),
        [],
    ]
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3,
                                   "total_tokens": 7}
    assert all("usage" not in c for c in chunks[:-1])
    assert acquired(session) == 0


async def test_stream_without_usage(gemini: FakeGemini, provider: GeminiProvider) -> None:
    gemini.sse(text_event("Hi", "MAX_TOKENS"))
    chunks = await collect(provider, chat_request({**hello(), "stream": True}, stream=True))
    assert strip_chunks(chunks) == [
        delta({"role": "assistant", "content": ""}),
        delta({"content": "Hi"}),
        delta({}, "length"),
    ]


async def test_stream_tool_calls(gemini: FakeGemini, provider: GeminiProvider) -> None:
    gemini.sse({"candidates": [{"content": {"parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
        {"functionCall": {"id": "fc-2", "name": "get_weather", "args": {"city": "Rome"}}},
    ], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 6,
                          "totalTokenCount": 15}})
    chunks = await collect(provider, chat_request({**hello(), "stream": True}, stream=True))
    first_id = chunks[1]["choices"][0]["delta"]["tool_calls"][0]["id"]
    assert re.fullmatch(r"call_[0-9a-f]{24}", first_id)
    assert strip_chunks(chunks) == [
        delta({"role": "assistant", "content": ""}),
        delta({"tool_calls": [{"index": 0, "id": first_id, "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city":"Paris"}'}}]}),
        delta({"tool_calls": [{"index": 1, "id": "fc-2", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city":"Rome"}'}}]}),
        delta({}, "tool_calls"),
    ]


async def test_stream_tool_call_signature(gemini: FakeGemini,
                                          provider: GeminiProvider) -> None:
    gemini.sse({"candidates": [{"content": {"parts": [
        {"functionCall": {"id": "fc-1", "name": "f", "args": {}}, "thoughtSignature": "c2ln"},
    ], "role": "model"}, "finishReason": "STOP", "index": 0}]})
    chunks = await collect(provider, chat_request(hello(), stream=True))
    assert strip_chunks(chunks)[1] == delta({"tool_calls": [{
        "index": 0, "id": "fc-1", "type": "function",
        "function": {"name": "f", "arguments": "{}"},
        "extra_content": {"google": {"thought_signature": "c2ln"}}}]})


async def test_stream_safety_stop_without_content(gemini: FakeGemini,
                                                  provider: GeminiProvider) -> None:
    gemini.sse(text_event("Once"), {"candidates": [
        {"finishReason": "SAFETY", "index": 0, "safetyRatings": SAFETY_RATINGS}]})
    chunks = await collect(provider, chat_request({**hello(), "stream": True}, stream=True))
    assert strip_chunks(chunks) == [
        delta({"role": "assistant", "content": ""}),
        delta({"content": "Once"}),
        delta({}, "content_filter"),
    ]


async def test_stream_two_candidates(gemini: FakeGemini, provider: GeminiProvider) -> None:
    gemini.sse({"candidates": [
        {"content": {"parts": [{"text": "A"}], "role": "model"}, "finishReason": "STOP",
         "index": 0},
        {"content": {"parts": [{"text": "B"}], "role": "model"}, "finishReason": "STOP",
         "index": 1},
    ]})
    chunks = await collect(provider, chat_request({**hello(), "n": 2}, stream=True))
    assert strip_chunks(chunks) == [
        delta({"role": "assistant", "content": ""}), delta({"content": "A"}), delta({}, "stop"),
        delta({"role": "assistant", "content": ""}, index=1), delta({"content": "B"}, index=1),
        delta({}, "stop", index=1),
    ]


async def stream_failure(provider: GeminiProvider
                         ) -> tuple[list[dict[str, Any]], UpstreamError]:
    chunks: list[dict[str, Any]] = []

    async def consume() -> None:
        async for chunk in provider.stream(chat_request(hello(), stream=True)):
            chunks.append(chunk)

    with pytest.raises(UpstreamError) as info:
        await consume()
    return chunks, info.value


async def test_stream_malformed_event(gemini: FakeGemini, provider: GeminiProvider,
                                      session: aiohttp.ClientSession) -> None:
    gemini.sse(text_event("Hi"), b'{"candidates": [', text_event("!", "STOP"))
    chunks, err = await stream_failure(provider)
    assert err.kind is ErrorKind.PROTOCOL
    assert strip_chunks(chunks) == [delta({"role": "assistant", "content": ""}),
                                    delta({"content": "Hi"})]
    assert acquired(session) == 0


async def test_stream_malformed_shape(gemini: FakeGemini, provider: GeminiProvider) -> None:
    gemini.sse({"candidates": [{"content": {"parts": "not a list"}, "index": 0}]})
    chunks, err = await stream_failure(provider)
    assert err.kind is ErrorKind.PROTOCOL
    assert chunks == []


@pytest.mark.parametrize("events", [[text_event("Hel"), text_event("lo")], []])
async def test_stream_cut_before_finish(gemini: FakeGemini, provider: GeminiProvider,
                                        session: aiohttp.ClientSession,
                                        events: list[Any]) -> None:
    gemini.sse(*events)
    _, err = await stream_failure(provider)
    assert err.kind is ErrorKind.PROTOCOL
    assert err.kind.retryable
    assert acquired(session) == 0


@pytest.mark.parametrize(("error", "kind"), [
    (google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.", RETRY_INFO),
     ErrorKind.RATE_LIMITED),
    (google_error(503, "UNAVAILABLE", "The model is overloaded."), ErrorKind.OVERLOADED),
    (google_error(500, "INTERNAL", "An internal error has occurred."), ErrorKind.OVERLOADED),
])
async def test_stream_error_event(gemini: FakeGemini, provider: GeminiProvider,
                                  error: dict[str, Any], kind: ErrorKind) -> None:
    gemini.sse(text_event("Hi"), error)
    chunks, err = await stream_failure(provider)
    assert err.kind is kind
    assert err.message == error["error"]["message"]
    assert len(chunks) == 2


async def test_stream_blocked_prompt(gemini: FakeGemini, provider: GeminiProvider) -> None:
    gemini.sse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}})
    chunks, err = await stream_failure(provider)
    assert err.kind is ErrorKind.CONTENT_FILTER
    assert "PROHIBITED_CONTENT" in err.message
    assert chunks == []


async def test_stream_http_error(gemini: FakeGemini, provider: GeminiProvider) -> None:
    gemini.reply(google_error(429, "RESOURCE_EXHAUSTED", "Quota.", RETRY_INFO), status=429)
    chunks, err = await stream_failure(provider)
    assert (err.kind, err.retry_after, chunks) == (ErrorKind.RATE_LIMITED, 37.0, [])
    assert gemini.requests[0]["query"] == {"alt": "sse"}


async def test_stream_early_close_releases_connection(gemini: FakeGemini,
                                                      provider: GeminiProvider,
                                                      session: aiohttp.ClientSession) -> None:
    gemini.sse(text_event("Hel"), hang=True)
    stream = provider.stream(chat_request(hello(), stream=True))
    first = await stream.__anext__()
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert acquired(session) == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert acquired(session) == 0
    await asyncio.wait_for(gemini.disconnected.wait(), 5)


# --- embeddings -------------------------------------------------------------------------------


def embeddings_request(body: dict[str, Any]) -> EmbeddingsRequest:
    body = {"model": "gemini/gemini-embedding-001", **body}
    return EmbeddingsRequest(body=body, raw=orjson.dumps(body))


@pytest.fixture
def embedder(make_provider: Callable[..., GeminiProvider]) -> GeminiProvider:
    return make_provider(name="gemini/gemini-embedding-001")


async def test_embed_single(gemini: FakeGemini, embedder: GeminiProvider,
                            session: aiohttp.ClientSession) -> None:
    gemini.reply({"embedding": {"values": [3.0, -4.0, 0.0]}})
    answer = await embedder.embeddings(embeddings_request({"input": "hello", "dimensions": 3}))
    seen = gemini.requests[0]
    assert seen["path"] == "/v1beta/models/gemini-embedding-001:embedContent"
    assert seen["headers"]["x-goog-api-key"] == "k"
    assert seen["json"] == {"model": "models/gemini-embedding-001",
                            "content": {"parts": [{"text": "hello"}]},
                            "outputDimensionality": 3}
    assert answer.data == {
        "object": "list",
        # Truncated to dimensions: normalised to unit length (docs/providers/gemini.md).
        "data": [{"object": "embedding", "index": 0, "embedding": [0.6, -0.8, 0.0]}],
        "model": "gemini/gemini-embedding-001",
        # Gemini reports no tokens: about 4 bytes a token.
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    assert acquired(session) == 0


async def test_embed_batch(gemini: FakeGemini, embedder: GeminiProvider) -> None:
    gemini.reply({"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]})
    answer = await embedder.embeddings(embeddings_request({"input": ["a", "b"]}))
    seen = gemini.requests[0]
    assert seen["path"] == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert seen["json"] == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}},
    ]}
    assert answer.data["data"] == [
        {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
        {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
    ]


async def test_embed_base64(gemini: FakeGemini, embedder: GeminiProvider) -> None:
    gemini.reply({"embedding": {"values": [1.0, -2.0, 0.5]}})
    answer = await embedder.embeddings(embeddings_request({"input": "x",
                                                           "encoding_format": "base64"}))
    encoded = answer.data["data"][0]["embedding"]
    assert encoded == "AACAPwAAAMAAAAA/"  # little-endian float32 of 1.0, -2.0, 0.5
    assert struct.unpack("<3f", base64.b64decode(encoded)) == (1.0, -2.0, 0.5)


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [1, 2, 3]}, "input"),
    ({"input": [[1, 2], [3]]}, "input"),
    ({"input": []}, "input"),
    ({"input": "x", "dimensions": 0}, "dimensions"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
])
async def test_embed_bad_requests(gemini: FakeGemini, embedder: GeminiProvider,
                                  body: dict[str, Any], param: str) -> None:
    with pytest.raises(UpstreamError) as info:
        await embedder.embeddings(embeddings_request(body))
    assert (info.value.kind, info.value.param) == (ErrorKind.BAD_REQUEST, param)
    assert gemini.requests == []


async def test_embed_count_mismatch(gemini: FakeGemini, embedder: GeminiProvider) -> None:
    gemini.reply({"embeddings": [{"values": [0.1]}]})
    with pytest.raises(UpstreamError) as info:
        await embedder.embeddings(embeddings_request({"input": ["a", "b"]}))
    assert info.value.kind is ErrorKind.PROTOCOL


async def test_embed_error(gemini: FakeGemini, embedder: GeminiProvider) -> None:
    gemini.reply(google_error(429, "RESOURCE_EXHAUSTED", "Quota.", RETRY_INFO), status=429)
    with pytest.raises(UpstreamError) as info:
        await embedder.embeddings(embeddings_request({"input": "x"}))
    assert (info.value.kind, info.value.retry_after) == (ErrorKind.RATE_LIMITED, 37.0)


# --- issue 12 translations, at the translation level ------------------------------------------
# (End to end through the proxy and the openai SDK: tests/test_provider_gemini_e2e.py.)


@pytest.mark.parametrize(("upstream", "effort", "thinking"), [
    ("models/gemini-2.5-pro", "none", {"thinkingBudget": 128}),
    ("models/gemini-3-pro-preview", "minimal", {"thinkingLevel": "LOW"}),
    ("gemma-3-27b-it", "high", None),
    ("tunedModels/my-model", "medium", {"thinkingBudget": 8192}),
])
def test_reasoning_effort_by_upstream_model(make_provider: Callable[..., GeminiProvider],
                                            upstream: str, effort: str, thinking: Any) -> None:
    # https://ai.google.dev/gemini-api/docs/thinking
    provider = make_provider(upstream_model=upstream)
    config = provider.build_request({**hello(), "reasoning_effort": effort}).get(
        "generationConfig", {})
    assert config.get("thinkingConfig") == thinking


@pytest.mark.parametrize(("metadata", "usage"), [
    # https://ai.google.dev/api/generate-content#UsageMetadata
    ({"promptTokenCount": 10, "toolUsePromptTokenCount": 5, "candidatesTokenCount": 2,
      "totalTokenCount": 17}, (15, 2, 17)),
    # A total above its known parts: the rest is counted as prompt, never lost.
    ({"promptTokenCount": 10, "candidatesTokenCount": 2, "totalTokenCount": 20}, (18, 2, 20)),
    ({"promptTokenCount": 10, "candidatesTokenCount": 2}, (10, 2, 12)),
])
async def test_usage_adds_up(gemini: FakeGemini, provider: GeminiProvider,
                             metadata: dict[str, Any], usage: tuple[int, int, int]) -> None:
    gemini.reply({**TEXT_ANSWER, "usageMetadata": metadata})
    got = (await provider.chat(chat_request(hello()))).data["usage"]
    assert (got["prompt_tokens"], got["completion_tokens"], got["total_tokens"]) == usage


async def test_stream_replays_gemini_call_ids(gemini: FakeGemini,
                                              provider: GeminiProvider) -> None:
    # https://ai.google.dev/api/caching#FunctionCall
    gemini.sse({"candidates": [{"content": {"parts": [
        {"functionCall": {"id": "fc-1", "name": "f", "args": {}}}], "role": "model"},
        "finishReason": "STOP", "index": 0}]})
    chunks = await collect(provider, chat_request(hello(), stream=True))
    call = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    gemini.reply(TEXT_ANSWER)
    await provider.chat(chat_request({"messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None,
         "tool_calls": [{k: v for k, v in call.items() if k != "index"}]},
        {"role": "tool", "tool_call_id": call["id"], "content": "ok"}]}))
    assert gemini.requests[-1]["json"]["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}, "id": "fc-1"}}]},
        {"role": "user", "parts": [{"functionResponse": {
            "name": "f", "response": {"content": "ok"}, "id": "fc-1"}}]},
    ]
