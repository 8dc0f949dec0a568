"""The plugin conformance suite (``aiproxy.testing``) against first-party providers and the
example plugin, and the suite's own teeth: deliberately broken providers must fail it.

To cover another provider, write one adapter class (how its upstream says things) and add it
to ``ADAPTERS``; a known, accepted gap goes in ``KNOWN_GAPS`` (a strict xfail, so fixing the
provider turns it red until the entry is removed).
"""

from __future__ import annotations

import base64
import importlib.util
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from aiproxy.config import ModelConfig
from aiproxy.provider import (
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorKind,
    ImageRequest,
    ImageResponse,
    Provider,
    UpstreamError,
    embedding_base64,
    iter_sse,
)
from aiproxy.testing import (
    CHECKS,
    RETRY_AFTER,
    TEXT,
    ConformanceAdapter,
    FakeUpstream,
    RecordedRequest,
    SSEEvent,
    StreamEvent,
    ToolCall,
    Usage,
    applicable_checks,
    chat_request,
    collect_stream,
    conformance_tests,
    embedding_for,
    encode_stream,
    json_response,
    run_check,
    run_conformance,
    skipped_checks,
    stream_response,
)
from aiproxy_providers.anthropic import AnthropicProvider
from aiproxy_providers.cloudflare import CloudflareProvider
from aiproxy_providers.cohere import CohereProvider
from aiproxy_providers.gemini import GeminiProvider
from aiproxy_providers.gigachat import GigaChatProvider
from aiproxy_providers.mock import MockProvider
from aiproxy_providers.openai import (
    AIMLAPIProvider,
    AirforceProvider,
    ArliAIProvider,
    GitHubModelsProvider,
    GlamaProvider,
    GroqProvider,
    HuggingFaceProvider,
    OpenAIProvider,
    OpenRouterProvider,
    TogetherProvider,
)
from tests.anthropic_fakes import claude_events, claude_message, text_block, tool_block
from tests.provider_fakes import (
    CF_ACCOUNT,
    COHERE_STREAM_ID,
    FakeGigaChat,
    cf_envelope,
    cf_failure,
    cohere_text,
    cohere_tool_call,
    gemini_call,
    gemini_error,
    gemini_text,
    giga_completion,
    retry_info,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "aiproxy-provider-example"


# ---------------------------------------------------------------------------------------------
# Adapters: how each upstream says things


class OpenAIAdapter(ConformanceAdapter):
    """The OpenAI Chat Completions wire format (https://platform.openai.com/docs/api-reference/chat),
    shared by OpenAI, OpenRouter, Groq and the HuggingFace router."""

    chat_paths = ("/v1/chat/completions",)
    embeddings_paths = ("/v1/embeddings",)
    image_paths = ("/v1/images/generations",)
    # HuggingFace makes images with its task API, which answers the image bytes
    # (https://huggingface.co/docs/inference-providers/tasks/text-to-image).
    HF_IMAGES = "/hf-inference/models/gpt-test"

    def __init__(self, provider: type[Provider] = OpenAIProvider) -> None:
        self.provider = provider
        if issubclass(provider, HuggingFaceProvider):
            self.image_paths = (self.HF_IMAGES,)

    def model_config(self, base_url: str) -> ModelConfig:
        options = ({"image_url": base_url + self.HF_IMAGES}
                   if issubclass(self.provider, HuggingFaceProvider) else {})
        return ModelConfig(name="upstream/gpt-test", provider="upstream", url=base_url + "/v1",
                           token=self.token, options=options)

    def answer_tool_call(self, call: ToolCall, usage: Usage,
                         request: RecordedRequest) -> dict[str, Any]:
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments_json}}]}
        return {"id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000,
                "model": request.json["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls",
                             "logprobs": None}],
                "usage": _usage_fields(usage)}

    def stream_tool_call(self, call: ToolCall, usage: Usage,
                         request: RecordedRequest) -> list[StreamEvent]:
        # The first tool_calls delta names the call; the arguments follow in fragments
        # (https://platform.openai.com/docs/api-reference/chat-streaming/streaming).
        base = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1700000000,
                "model": request.json["model"]}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        args = call.arguments_json
        cut = len(args) // 2
        events: list[StreamEvent] = [
            chunk({"role": "assistant", "content": None}),
            chunk({"tool_calls": [{"index": 0, "id": call.id, "type": "function",
                                   "function": {"name": call.name, "arguments": ""}}]}),
            *(chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
              for part in (args[:cut], args[cut:])),
            chunk({}, "tool_calls"),
        ]
        if (request.json.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": _usage_fields(usage)})
        return [*events, b"[DONE]"]

    def answer_embeddings(self, request: RecordedRequest) -> dict[str, Any]:
        # https://platform.openai.com/docs/api-reference/embeddings/create
        texts = request.json["input"]
        texts = [texts] if isinstance(texts, str) else texts
        b64 = request.json.get("encoding_format") == "base64"
        return {"object": "list", "model": request.json["model"], "data": [
            {"object": "embedding", "index": i,
             "embedding": embedding_base64(embedding_for(t)) if b64 else embedding_for(t)}
            for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": 2 * len(texts), "total_tokens": 2 * len(texts)}}

    def answer_image(self, image: bytes, request: RecordedRequest
                     ) -> dict[str, Any] | web.StreamResponse:
        if request.path == self.HF_IMAGES:
            return web.Response(body=image, content_type="image/png")
        # https://platform.openai.com/docs/api-reference/images/create
        return {"created": 1700000000, "data": [{"b64_json": base64.b64encode(image).decode()}]}

    def answer_text(self, text: str, usage: Usage, request: RecordedRequest) -> dict[str, Any]:
        return {"id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000,
                "model": request.json["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": usage.prompt_tokens,
                          "completion_tokens": usage.completion_tokens,
                          "total_tokens": usage.total_tokens}}

    def stream_text(self, pieces: Sequence[str], usage: Usage,
                    request: RecordedRequest) -> list[StreamEvent]:
        base = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1700000000,
                "model": request.json["model"]}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        events: list[StreamEvent] = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in pieces]
        events.append(chunk({}, "stop"))
        # Like the real API: the usage chunk only when stream_options asks for it.
        if (request.json.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": {
                "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens}})
        events.append(b"[DONE]")
        return events

    def error(self, kind: ErrorKind, message: str,
              request: RecordedRequest) -> web.StreamResponse | None:
        def envelope(status: int, code: str | None, typ: str = "invalid_request_error",
                     headers: dict[str, str] | None = None) -> web.Response:
            return json_response({"error": {"message": message, "type": typ, "param": None,
                                            "code": code}}, status=status, headers=headers)

        if kind is ErrorKind.RATE_LIMITED:
            return envelope(429, "rate_limit_exceeded", "requests",
                            {"Retry-After": str(int(RETRY_AFTER))})
        if kind is ErrorKind.OVERLOADED:
            return envelope(503, None, "server_error")
        if kind is ErrorKind.BAD_REQUEST:
            return envelope(400, "invalid_value")
        if kind is ErrorKind.AUTH:
            return envelope(401, "invalid_api_key")
        if kind is ErrorKind.CONTEXT_LENGTH:
            message = f"This model's maximum context length is 8192 tokens. {message}"
            return envelope(400, "context_length_exceeded")
        if kind is ErrorKind.CONTENT_FILTER:
            return envelope(400, "content_filter")
        return None

    def stream_error(self, message: str) -> StreamEvent | None:
        # OpenRouter reports a failure after the first byte as an event with an error object.
        return {"error": {"message": message, "code": 502}}

    def check_request(self, request: RecordedRequest, chat: ChatRequest) -> None:
        assert request.json["model"] == "gpt-test"
        assert request.json["messages"] == chat.body["messages"]
        assert request.json.get("stream", False) is chat.stream
        assert request.json.get("stream_options") == chat.body.get("stream_options")
        assert request.headers["Authorization"] == f"Bearer {self.token}"


class MockAdapter(ConformanceAdapter):
    """The offline mock: no upstream, so only the shape checks apply."""

    provider = MockProvider
    has_upstream = False
    exact_usage = False  # it counts words
    token = None
    tool_calls = True  # given tools, it calls one

    def model_config(self, base_url: str) -> ModelConfig:
        return ModelConfig(name="mock/echo", provider="mock", options={"reply": TEXT})

    def answer_text(self, text: str, usage: Usage, request: RecordedRequest) -> dict[str, Any]:
        raise AssertionError("the mock provider calls no upstream")

    def stream_text(self, pieces: Sequence[str], usage: Usage,
                    request: RecordedRequest) -> list[StreamEvent]:
        raise AssertionError("the mock provider calls no upstream")

    def error(self, kind: ErrorKind, message: str,
              request: RecordedRequest) -> web.StreamResponse | None:
        return None


def _usage_fields(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def _conversation(chat: ChatRequest) -> tuple[str, str]:
    """The canonical request's system and user texts."""
    system, user = chat.body["messages"]
    return system["content"], user["content"]


class GeminiAdapter(ConformanceAdapter):
    """Gemini API v1beta: ``models/{model}:generateContent`` and
    ``:streamGenerateContent?alt=sse`` (https://ai.google.dev/api/generate-content), errors as
    google.rpc.Status bodies (https://ai.google.dev/gemini-api/docs/troubleshooting)."""

    provider = GeminiProvider
    MODEL = "gemini-2.0-flash"
    chat_paths = (f"/v1beta/models/{MODEL}:generateContent",
                  f"/v1beta/models/{MODEL}:streamGenerateContent")

    embeddings_paths = (f"/v1beta/models/{MODEL}:embedContent",
                        f"/v1beta/models/{MODEL}:batchEmbedContents")

    def model_config(self, base_url: str) -> ModelConfig:
        return ModelConfig(name=f"gemini/{self.MODEL}", provider="gemini",
                           url=base_url + "/v1beta", token=self.token)

    @staticmethod
    def _meta(usage: Usage) -> dict[str, int]:
        return {"promptTokenCount": usage.prompt_tokens,
                "candidatesTokenCount": usage.completion_tokens,
                "totalTokenCount": usage.total_tokens}

    def answer_tool_call(self, call: ToolCall, usage: Usage,
                         request: RecordedRequest) -> dict[str, Any]:
        # A functionCall part, with its id (https://ai.google.dev/api/caching#FunctionCall);
        # Gemini finishes a calling turn with STOP.
        return {**gemini_call(call.name, dict(call.arguments), call_id=call.id),
                "usageMetadata": self._meta(usage)}

    def stream_tool_call(self, call: ToolCall, usage: Usage,
                         request: RecordedRequest) -> list[StreamEvent]:
        # Gemini never splits a functionCall: the one event carries it whole.
        return [self.answer_tool_call(call, usage, request)]

    def check_tool_result(self, request: RecordedRequest, call: ToolCall, result: str) -> None:
        # The call and its answer as a functionCall / functionResponse pair, ids kept
        # (https://ai.google.dev/gemini-api/docs/function-calling).
        parts = [part for content in request.json["contents"] for part in content["parts"]]
        calls = [p["functionCall"] for p in parts if "functionCall" in p]
        responses = [p["functionResponse"] for p in parts if "functionResponse" in p]
        assert [(c["name"], c["args"]) for c in calls] == [(call.name, dict(call.arguments))]
        assert [r["name"] for r in responses] == [call.name]
        assert calls[0].get("id") == responses[0].get("id") == call.id

    def answer_embeddings(self, request: RecordedRequest) -> dict[str, Any]:
        # embedContent answers {"embedding"}, batchEmbedContents {"embeddings"}
        # (https://ai.google.dev/api/embeddings).
        if request.path.endswith(":embedContent"):
            text = request.json["content"]["parts"][0]["text"]
            return {"embedding": {"values": embedding_for(text)}}
        return {"embeddings": [{"values": embedding_for(r["content"]["parts"][0]["text"])}
                               for r in request.json["requests"]]}

    def answer_text(self, text: str, usage: Usage, request: RecordedRequest) -> dict[str, Any]:
        return gemini_text(text, prompt=usage.prompt_tokens, output=usage.completion_tokens)

    def stream_text(self, pieces: Sequence[str], usage: Usage,
                    request: RecordedRequest) -> list[StreamEvent]:
        # One GenerateContentResponse per piece; usageMetadata is cumulative, and the last
        # event carries the finishReason and the final counts. Gemini sends no [DONE].
        events: list[StreamEvent] = []
        for i, piece in enumerate(pieces):
            candidate: dict[str, Any] = {"content": {"parts": [{"text": piece}],
                                                     "role": "model"}, "index": 0}
            meta = {"promptTokenCount": usage.prompt_tokens,
                    "totalTokenCount": usage.prompt_tokens}
            if i == len(pieces) - 1:
                candidate["finishReason"] = "STOP"
                meta = {"promptTokenCount": usage.prompt_tokens,
                        "candidatesTokenCount": usage.completion_tokens,
                        "totalTokenCount": usage.total_tokens}
            events.append({"candidates": [candidate], "usageMetadata": meta,
                           "modelVersion": self.MODEL, "responseId": "conformance-response"})
        return events

    def error(self, kind: ErrorKind, message: str,
              request: RecordedRequest) -> web.StreamResponse | None:
        def status(code: int, grpc: str, text: str, *details: Any) -> web.Response:
            return json_response(gemini_error(code, grpc, text, *details), status=code)

        if kind is ErrorKind.RATE_LIMITED:  # the delay is in a google.rpc.RetryInfo detail
            return status(429, "RESOURCE_EXHAUSTED", message, retry_info(int(RETRY_AFTER)))
        if kind is ErrorKind.OVERLOADED:
            return status(503, "UNAVAILABLE", f"The model is overloaded. {message}")
        if kind is ErrorKind.BAD_REQUEST:
            return status(400, "INVALID_ARGUMENT", message)
        if kind is ErrorKind.AUTH:  # a bad key is a 400 with reason API_KEY_INVALID
            return status(400, "INVALID_ARGUMENT", message, {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID", "domain": "googleapis.com"})
        if kind is ErrorKind.CONTEXT_LENGTH:
            return status(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds "
                          f"the maximum number of tokens allowed (1048576). {message}")
        if kind is ErrorKind.CONTENT_FILTER:
            # A blocked prompt is a 200 answer with promptFeedback.blockReason and no
            # candidates; streamed, it is the stream's only event.
            blocked = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}]},
                "usageMetadata": {"promptTokenCount": 11, "totalTokenCount": 11},
                "modelVersion": self.MODEL}
            if request.path.endswith(":streamGenerateContent"):
                return web.Response(body=encode_stream([blocked]),
                                    content_type="text/event-stream")
            return json_response(blocked)
        return None

    def stream_error(self, message: str) -> StreamEvent | None:
        return gemini_error(500, "INTERNAL", message)

    def check_request(self, request: RecordedRequest, chat: ChatRequest) -> None:
        assert request.path.endswith(":streamGenerateContent") is chat.stream
        assert dict(request.query) == ({"alt": "sse"} if chat.stream else {})
        assert request.headers["x-goog-api-key"] == self.token  # never ?key= in the URL
        system, user = _conversation(chat)
        assert request.json == {
            "contents": [{"role": "user", "parts": [{"text": user}]}],
            "systemInstruction": {"parts": [{"text": system}]},
            "generationConfig": {"temperature": 0.5, "maxOutputTokens": 32},
        }


class CohereAdapter(ConformanceAdapter):
    """Cohere Chat API v2 (https://docs.cohere.com/reference/chat), its named stream events
    (https://docs.cohere.com/reference/chat-stream) and ``{"message"}`` errors
    (https://docs.cohere.com/reference/errors)."""

    provider = CohereProvider
    MODEL = "command-a-03-2025"
    chat_paths = ("/v2/chat",)

    embeddings_paths = ("/v2/embed",)

    def model_config(self, base_url: str) -> ModelConfig:
        return ModelConfig(name=f"cohere/{self.MODEL}", provider="cohere", url=base_url,
                           token=self.token, options={"safety_mode": "CONTEXTUAL"})

    @staticmethod
    def _usage(usage: Usage) -> dict[str, Any]:
        return {"billed_units": {"input_tokens": usage.prompt_tokens,
                                 "output_tokens": usage.completion_tokens},
                "tokens": {"input_tokens": usage.prompt_tokens,
                           "output_tokens": usage.completion_tokens}}

    def answer_tool_call(self, call: ToolCall, usage: Usage,
                         request: RecordedRequest) -> dict[str, Any]:
        return {**cohere_tool_call(call.id, call.name, call.arguments_json),
                "usage": self._usage(usage)}

    def stream_tool_call(self, call: ToolCall, usage: Usage,
                         request: RecordedRequest) -> list[StreamEvent]:
        # tool-call-start names the call, tool-call-delta events carry the arguments in pieces
        # (https://docs.cohere.com/reference/chat-stream).
        args = call.arguments_json
        cut = len(args) // 3
        events: list[dict[str, Any]] = [
            {"id": COHERE_STREAM_ID, "type": "message-start", "delta": {"message": {
                "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [],
                "citations": []}}},
            {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will look"}}},
            {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
                "id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": ""}}}}},
            *({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {
                "function": {"arguments": part}}}}}
              for part in (args[:cut], args[cut:2 * cut], args[2 * cut:])),
            {"type": "tool-call-end", "index": 0},
            {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL",
                                              "usage": self._usage(usage)}},
        ]
        return [self._event(e) for e in events]

    def answer_embeddings(self, request: RecordedRequest) -> dict[str, Any]:
        # https://docs.cohere.com/reference/embed: embeddings by type, floats asked for.
        texts = request.json["texts"]
        return {"id": "da6e531f-83b9-4a6b-9a1c-1b9c7a1a1f1e",
                "embeddings": {"float": [embedding_for(t) for t in texts]}, "texts": texts,
                "meta": {"api_version": {"version": "2"},
                         "billed_units": {"input_tokens": 2 * len(texts)}},
                "response_type": "embeddings_by_type"}

    def answer_text(self, text: str, usage: Usage, request: RecordedRequest) -> dict[str, Any]:
        return cohere_text(text, prompt=usage.prompt_tokens, output=usage.completion_tokens)

    @staticmethod
    def _event(data: dict[str, Any]) -> SSEEvent:
        return SSEEvent(orjson.dumps(data), event=data["type"])

    def stream_text(self, pieces: Sequence[str], usage: Usage,
                    request: RecordedRequest) -> list[StreamEvent]:
        events: list[dict[str, Any]] = [
            {"id": COHERE_STREAM_ID, "type": "message-start", "delta": {"message": {
                "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [],
                "citations": []}}},
            {"type": "content-start", "index": 0,
             "delta": {"message": {"content": {"type": "text", "text": ""}}}},
            *({"type": "content-delta", "index": 0,
               "delta": {"message": {"content": {"text": piece}}}} for piece in pieces),
            {"type": "content-end", "index": 0},
            # Cohere's documented stream examples give the token counts as floats.
            {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": {
                "billed_units": {"input_tokens": usage.prompt_tokens,
                                 "output_tokens": usage.completion_tokens},
                "tokens": {"input_tokens": float(usage.prompt_tokens),
                           "output_tokens": float(usage.completion_tokens)}}}},
        ]
        return [self._event(e) for e in events]

    def error(self, kind: ErrorKind, message: str,
              request: RecordedRequest) -> web.StreamResponse | None:
        def status(code: int, text: str, headers: dict[str, str] | None = None
                   ) -> web.Response:
            return json_response({"id": "c0f0e7e2-5a3c-4c8e-9d2f-conformance", "message": text},
                                 status=code, headers=headers)

        if kind is ErrorKind.RATE_LIMITED:
            return status(429, message, {"Retry-After": str(int(RETRY_AFTER))})
        if kind is ErrorKind.OVERLOADED:
            return status(503, f"service unavailable: {message}")
        if kind is ErrorKind.BAD_REQUEST:
            return status(400, f"invalid request: {message}")
        if kind is ErrorKind.AUTH:
            return status(401, message)
        if kind is ErrorKind.CONTEXT_LENGTH:
            return status(400, "too many tokens: total number of tokens in the prompt cannot "
                          f"exceed 4081 - received 4292. {message}")
        # CONTENT_FILTER: Cohere has no such error; its safety modes shape the answer, and a
        # blocked answer is a finish_reason (ERROR_TOXIC), not a failure.
        return None

    def stream_error(self, message: str) -> StreamEvent | None:
        # A generation that fails after the stream began ends with finish_reason ERROR.
        return self._event({"type": "message-end",
                            "delta": {"finish_reason": "ERROR", "error": message}})

    def check_request(self, request: RecordedRequest, chat: ChatRequest) -> None:
        assert request.headers["Authorization"] == f"Bearer {self.token}"
        assert request.headers["Accept"] == ("text/event-stream" if chat.stream
                                             else "application/json")
        system, user = _conversation(chat)
        assert request.json == {
            "model": self.MODEL, "stream": chat.stream,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": user}],
            "temperature": 0.5, "max_tokens": 32, "safety_mode": "CONTEXTUAL",
        }


class GigaChatAdapter(ConformanceAdapter):
    """GigaChat REST API v1 (https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/
    post-chat, .../api/response-token-streaming), behind Sber's OAuth endpoint, which the
    e2e fake plays: it checks the Basic credentials, RqUID and scope, and issues tokens."""

    provider = GigaChatProvider
    MODEL = "GigaChat-Pro"
    OAUTH_PATH = "/api/v2/oauth"
    chat_paths = ("/api/v1/chat/completions",)
    token = f"{FakeGigaChat.CLIENT_ID}:{FakeGigaChat.CLIENT_SECRET}"

    def __init__(self) -> None:
        self.oauth = FakeGigaChat()

    def model_config(self, base_url: str) -> ModelConfig:
        return ModelConfig(name=f"gigachat/{self.MODEL}", provider="gigachat",
                           url=base_url + "/api/v1", token=self.token,
                           options={"oauth_url": base_url + self.OAUTH_PATH,
                                    "scope": FakeGigaChat.SCOPE})

    def setup(self, fake: FakeUpstream) -> None:
        self.oauth = FakeGigaChat()  # fresh tokens for every check
        fake.route("POST", self.OAUTH_PATH, self.oauth.oauth)

    embeddings_paths = ("/api/v1/embeddings",)

    def answer_text(self, text: str, usage: Usage, request: RecordedRequest) -> dict[str, Any]:
        return giga_completion(text, usage=_usage_fields(usage))

    def answer_tool_call(self, call: ToolCall, usage: Usage,
                         request: RecordedRequest) -> dict[str, Any]:
        # A function_call with object arguments, finish_reason function_call; GigaChat has no
        # call ids (https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/post-chat).
        return giga_completion("", finish="function_call", usage=_usage_fields(usage),
                               function_call={"name": call.name,
                                              "arguments": dict(call.arguments)})

    def stream_tool_call(self, call: ToolCall, usage: Usage,
                         request: RecordedRequest) -> list[StreamEvent]:
        # GigaChat sends a function call whole, in one event.
        return [{"choices": [{"index": 0, "finish_reason": "function_call", "delta": {
            "role": "assistant", "content": "",
            "function_call": {"name": call.name, "arguments": dict(call.arguments)},
            "functions_state_id": "77d3fb14-457a-46ba-937e-8d856156d003"}}],
            "created": 1683034756, "model": "GigaChat-Pro:1.0.26.20",
            "object": "chat.completion", "usage": _usage_fields(usage)}, b"[DONE]"]

    def answer_embeddings(self, request: RecordedRequest) -> dict[str, Any]:
        # https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/post-embeddings
        return {"object": "list", "model": request.json["model"], "data": [
            {"object": "embedding", "embedding": embedding_for(text), "index": i,
             "usage": {"prompt_tokens": 2}} for i, text in enumerate(request.json["input"])]}

    def stream_text(self, pieces: Sequence[str], usage: Usage,
                    request: RecordedRequest) -> list[StreamEvent]:
        # The role comes with the first delta; the last one has finish_reason and usage.
        events: list[StreamEvent] = []
        for i, piece in enumerate(pieces):
            choice: dict[str, Any] = {"delta": {"content": piece}, "index": 0}
            event: dict[str, Any] = {"choices": [choice], "created": 1683034756,
                                     "model": "GigaChat-Pro:1.0.26.20",
                                     "object": "chat.completion"}
            if i == 0:
                choice["delta"]["role"] = "assistant"
            if i == len(pieces) - 1:
                choice["finish_reason"] = "stop"
                event["usage"] = _usage_fields(usage)
            events.append(event)
        events.append(b"[DONE]")
        return events

    def error(self, kind: ErrorKind, message: str,
              request: RecordedRequest) -> web.StreamResponse | None:
        # https://developers.sber.ru/docs/ru/gigachat/api/errors-description
        def status(code: int, text: str, headers: dict[str, str] | None = None
                   ) -> web.Response:
            return json_response({"status": code, "message": text}, status=code,
                                 headers=headers)

        if kind is ErrorKind.RATE_LIMITED:
            return status(429, f"Too Many Requests: {message}",
                          {"Retry-After": str(int(RETRY_AFTER))})
        if kind is ErrorKind.OVERLOADED:
            return status(503, f"Service Unavailable: {message}")
        if kind is ErrorKind.BAD_REQUEST:
            return status(422, f"Invalid params: {message}")
        if kind is ErrorKind.AUTH:  # the access token refused (the provider refreshes once)
            return status(401, message)
        if kind is ErrorKind.CONTEXT_LENGTH:  # a prompt over the model's context window
            return status(413, f"Payload Too Large: {message}")
        # CONTENT_FILTER: GigaChat's moderation answers finish_reason "blacklist", not an error.
        return None

    def stream_error(self, message: str) -> StreamEvent | None:
        return {"status": 500, "message": message}

    def check_request(self, request: RecordedRequest, chat: ChatRequest) -> None:
        issued = self.oauth.issued
        assert issued, "no access token was fetched"
        assert request.headers["Authorization"] == f"Bearer {issued[-1]}"
        system, user = _conversation(chat)
        expected: dict[str, Any] = {
            "model": self.MODEL,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": user}],
            "temperature": 0.5, "max_tokens": 32,
        }
        if chat.stream:
            expected["stream"] = True
        assert request.json == expected


class CloudflareAdapter(ConformanceAdapter):
    """Workers AI's native ``/accounts/{id}/ai/run/{model}``
    (https://developers.cloudflare.com/workers-ai/get-started/rest-api/): answers in the API v4
    envelope, ``data: {"response"}`` stream events ending in ``[DONE]``, errors as envelope
    codes (https://developers.cloudflare.com/workers-ai/platform/errors/)."""

    provider = CloudflareProvider
    MODEL = "@cf/meta/llama-3.1-8b-instruct"
    chat_paths = (f"/client/v4/accounts/{CF_ACCOUNT}/ai/run/{MODEL}",)

    image_paths = chat_paths
    # Embedding models answer OpenAI-shaped at the account's /ai/v1/embeddings
    # (https://developers.cloudflare.com/workers-ai/configuration/open-ai-compatibility/).
    embeddings_paths = (f"/client/v4/accounts/{CF_ACCOUNT}/ai/v1/embeddings",)

    def model_config(self, base_url: str) -> ModelConfig:
        return ModelConfig(name=f"cloudflare/{self.MODEL}", provider="cloudflare",
                           url=base_url + "/client/v4", token=self.token,
                           options={"account_id": CF_ACCOUNT})

    def answer_tool_call(self, call: ToolCall, usage: Usage,
                         request: RecordedRequest) -> dict[str, Any]:
        # Native tool calls: {name, arguments (an object)}, no ids
        # (https://developers.cloudflare.com/workers-ai/features/function-calling/).
        return cf_envelope({"response": None, "usage": _usage_fields(usage), "tool_calls": [
            {"name": call.name, "arguments": dict(call.arguments)}]})

    def stream_tool_call(self, call: ToolCall, usage: Usage,
                         request: RecordedRequest) -> list[StreamEvent]:
        return [{"response": "", "tool_calls": [{"name": call.name,
                                                 "arguments": dict(call.arguments)}]},
                {"response": "", "usage": _usage_fields(usage)}, b"[DONE]"]

    def answer_embeddings(self, request: RecordedRequest) -> dict[str, Any]:
        texts = request.json["input"]
        texts = [texts] if isinstance(texts, str) else texts
        return {"object": "list", "model": request.json["model"], "data": [
            {"object": "embedding", "index": i, "embedding": embedding_for(t)}
            for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": 2 * len(texts), "total_tokens": 2 * len(texts)}}

    def answer_image(self, image: bytes, request: RecordedRequest) -> dict[str, Any]:
        # flux-1-schnell's answer: {"result": {"image": base64}}
        # (https://developers.cloudflare.com/workers-ai/models/flux-1-schnell/).
        return cf_envelope({"image": base64.b64encode(image).decode()})

    def answer_text(self, text: str, usage: Usage, request: RecordedRequest) -> dict[str, Any]:
        return cf_envelope({"response": text, "tool_calls": [], "usage": _usage_fields(usage)})

    def stream_text(self, pieces: Sequence[str], usage: Usage,
                    request: RecordedRequest) -> list[StreamEvent]:
        return [*({"response": piece, "p": "abcdefgh"} for piece in pieces),
                {"response": "", "usage": _usage_fields(usage)}, b"[DONE]"]

    def error(self, kind: ErrorKind, message: str,
              request: RecordedRequest) -> web.StreamResponse | None:
        def status(code: int, cf_code: int, text: str,
                   headers: dict[str, str] | None = None) -> web.Response:
            return json_response(cf_failure(cf_code, text), status=code, headers=headers)

        if kind is ErrorKind.RATE_LIMITED:  # 3040: out of capacity
            return status(429, 3040, message, {"Retry-After": str(int(RETRY_AFTER))})
        if kind is ErrorKind.OVERLOADED:  # 3043: internal server error
            return status(500, 3043, message)
        if kind is ErrorKind.BAD_REQUEST:
            return status(400, 8000, message)
        if kind is ErrorKind.AUTH:
            return status(401, 10000, message)
        if kind is ErrorKind.CONTEXT_LENGTH:
            return status(400, 5021, "AiError: The estimated number of input and maximum output "
                          f"tokens exceeded this model context window limit. {message}")
        # CONTENT_FILTER: Workers AI has no content-filter error.
        return None

    def stream_error(self, message: str) -> StreamEvent | None:
        return cf_failure(3043, message)

    def check_request(self, request: RecordedRequest, chat: ChatRequest) -> None:
        assert request.headers["Authorization"] == f"Bearer {self.token}"
        system, user = _conversation(chat)
        expected: dict[str, Any] = {
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": user}],
            "temperature": 0.5, "max_tokens": 32,
        }
        if chat.stream:
            expected["stream"] = True
        assert request.json == expected


class AnthropicAdapter(ConformanceAdapter):
    """Anthropic's Messages API (https://docs.anthropic.com/en/api/messages): named stream
    events (https://docs.anthropic.com/en/api/messages-streaming) and ``{"type": "error",
    "error": {"type", "message"}}`` errors (https://docs.anthropic.com/en/api/errors)."""

    provider = AnthropicProvider
    MODEL = "claude-sonnet-4-5"
    chat_paths = ("/v1/messages",)

    def model_config(self, base_url: str) -> ModelConfig:
        return ModelConfig(name=f"anthropic/{self.MODEL}", provider="anthropic", url=base_url,
                           token=self.token)

    @staticmethod
    def _usage(usage: Usage) -> dict[str, int]:
        return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}

    @staticmethod
    def _events(events: list[dict[str, Any]]) -> list[StreamEvent]:
        return [SSEEvent(orjson.dumps(e), event=e["type"]) for e in events]

    def answer_text(self, text: str, usage: Usage, request: RecordedRequest) -> dict[str, Any]:
        return claude_message(text_block(text), model=self.MODEL, **self._usage(usage))

    def stream_text(self, pieces: Sequence[str], usage: Usage,
                    request: RecordedRequest) -> list[StreamEvent]:
        start = claude_message(model=self.MODEL, **self._usage(usage))
        start.update(stop_reason=None, usage={**start["usage"], "output_tokens": 1})
        return self._events([
            {"type": "message_start", "message": start}, {"type": "ping"},
            {"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}},
            *({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": piece}} for piece in pieces),
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                "stop_sequence": None},
             "usage": {"output_tokens": usage.completion_tokens}},
            {"type": "message_stop"}])

    def answer_tool_call(self, call: ToolCall, usage: Usage,
                         request: RecordedRequest) -> dict[str, Any]:
        return claude_message(tool_block(call.name, dict(call.arguments), call.id),
                              stop_reason="tool_use", model=self.MODEL, **self._usage(usage))

    def stream_tool_call(self, call: ToolCall, usage: Usage,
                         request: RecordedRequest) -> list[StreamEvent]:
        # The input arrives as input_json_delta fragments of its JSON.
        return self._events(claude_events(self.answer_tool_call(call, usage, request)))

    def check_tool_result(self, request: RecordedRequest, call: ToolCall, result: str) -> None:
        assistant, user = request.json["messages"][-2:]
        assert assistant == {"role": "assistant", "content": [
            {"type": "tool_use", "id": call.id, "name": call.name,
             "input": dict(call.arguments)}]}
        assert user == {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": result}]}

    def error(self, kind: ErrorKind, message: str,
              request: RecordedRequest) -> web.StreamResponse | None:
        def status(code: int, kind_name: str, text: str,
                   headers: dict[str, str] | None = None) -> web.Response:
            return json_response({"type": "error", "error": {"type": kind_name,
                                                             "message": text}},
                                 status=code, headers=headers)

        if kind is ErrorKind.RATE_LIMITED:
            return status(429, "rate_limit_error", message,
                          {"retry-after": str(int(RETRY_AFTER))})
        if kind is ErrorKind.OVERLOADED:
            return status(529, "overloaded_error", message)
        if kind is ErrorKind.BAD_REQUEST:
            return status(400, "invalid_request_error", message)
        if kind is ErrorKind.AUTH:
            return status(401, "authentication_error", message)
        if kind is ErrorKind.CONTEXT_LENGTH:
            return status(400, "invalid_request_error",
                          f"prompt is too long: 210000 tokens > 200000 maximum. {message}")
        # CONTENT_FILTER: a refusal is a stop_reason of a 200 answer, not an error.
        return None

    def stream_error(self, message: str) -> StreamEvent | None:
        return SSEEvent(orjson.dumps({"type": "error", "error": {
            "type": "overloaded_error", "message": message}}), event="error")

    def check_request(self, request: RecordedRequest, chat: ChatRequest) -> None:
        assert request.headers["x-api-key"] == self.token
        assert request.headers["anthropic-version"] == "2023-06-01"
        system, user = _conversation(chat)
        expected: dict[str, Any] = {"model": self.MODEL, "max_tokens": 32, "system": system,
                                    "messages": [{"role": "user", "content": user}],
                                    "temperature": 0.5}
        if chat.stream:
            expected["stream"] = True
        assert request.json == expected


def example_adapter() -> ConformanceAdapter:
    """The example plugin's own adapter, from its tests (the plugin need not be installed)."""
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    spec = importlib.util.spec_from_file_location("aiproxy_ollama_example_conformance",
                                                  EXAMPLE / "tests" / "test_conformance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    adapter: ConformanceAdapter = module.OllamaAdapter()
    return adapter


ADAPTERS: dict[str, ConformanceAdapter] = {
    "openai": OpenAIAdapter(OpenAIProvider),
    "openrouter": OpenAIAdapter(OpenRouterProvider),
    "groq": OpenAIAdapter(GroqProvider),
    "huggingface": OpenAIAdapter(HuggingFaceProvider),
    # The names the old proxy sent to its OpenAI client (google is the Gemini plugin's).
    "glama": OpenAIAdapter(GlamaProvider),
    "arliai": OpenAIAdapter(ArliAIProvider),
    "github": OpenAIAdapter(GitHubModelsProvider),
    "together": OpenAIAdapter(TogetherProvider),
    "aimlapi": OpenAIAdapter(AIMLAPIProvider),
    "airforce": OpenAIAdapter(AirforceProvider),
    "gemini": GeminiAdapter(),
    "cohere": CohereAdapter(),
    "gigachat": GigaChatAdapter(),
    "cloudflare": CloudflareAdapter(),
    "anthropic": AnthropicAdapter(),
    "mock": MockAdapter(),
    "ollama-example": example_adapter(),
}

KNOWN_GAPS: dict[tuple[str, str], str] = {}


def _suite(name: str) -> type[object]:
    """The suite for one adapter, as a plugin author binds it: checks that do not apply are
    not collected, and the aiproxy pytest plugin reports them, with why, at the end."""
    gaps = {check: reason for (adapter, check), reason in KNOWN_GAPS.items() if adapter == name}
    cls_name = "TestConformance" + name.title().replace("-", "")
    return conformance_tests(ADAPTERS[name], name=cls_name, known_gaps=gaps)


TestConformanceOpenai = _suite("openai")
TestConformanceOpenrouter = _suite("openrouter")
TestConformanceGroq = _suite("groq")
TestConformanceHuggingface = _suite("huggingface")
TestConformanceGlama = _suite("glama")
TestConformanceArliai = _suite("arliai")
TestConformanceGithub = _suite("github")
TestConformanceTogether = _suite("together")
TestConformanceAimlapi = _suite("aimlapi")
TestConformanceAirforce = _suite("airforce")
TestConformanceGemini = _suite("gemini")
TestConformanceCohere = _suite("cohere")
TestConformanceGigachat = _suite("gigachat")
TestConformanceCloudflare = _suite("cloudflare")
TestConformanceAnthropic = _suite("anthropic")
TestConformanceMock = _suite("mock")
TestConformanceOllamaExample = _suite("ollama-example")


def test_every_adapter_has_its_suite() -> None:
    bound = {name for name, value in globals().items()
             if name.startswith("TestConformance") and hasattr(value, "aiproxy_adapter")}
    assert {v.aiproxy_adapter for k, v in globals().items() if k in bound} \
        == set(ADAPTERS.values())


# First-party plugins whose adapter is not written yet, with the reason; an entry point in
# neither ADAPTERS nor here fails test_every_first_party_plugin_is_checked.
PENDING_ADAPTERS: dict[str, str] = {}


def test_every_first_party_plugin_is_checked() -> None:
    first_party = {e.name: e.load() for e in entry_points(group="aiproxy.providers")
                   if e.value.startswith("aiproxy_providers.")}
    checked = {a.provider for a in ADAPTERS.values()}
    missing = sorted(name for name, cls in first_party.items()
                     if name not in PENDING_ADAPTERS and cls not in checked)
    assert not missing, f"first-party plugins with no conformance adapter: {missing}"
    stale = sorted(name for name in PENDING_ADAPTERS
                   if name not in first_party or first_party[name] in checked)
    assert not stale, f"PENDING_ADAPTERS entries to remove: {stale}"


def test_every_known_gap_names_a_real_case() -> None:
    for name, check in KNOWN_GAPS:
        assert check in applicable_checks(ADAPTERS[name]), (name, check)


# ---------------------------------------------------------------------------------------------
# The suite's teeth: each broken provider must fail the check that guards its mistake


def _chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


class RoleBeforeUpstream(OpenAIProvider):
    """Yields the role chunk before asking the upstream: no failover once that went out."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        yield _chunk({"role": "assistant"})
        async for chunk in super().stream(request):
            yield chunk


class NeverClosesStream(OpenAIProvider):
    """Forgets the response on an early exit and lets aiohttp errors escape."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        resp = await self.send("POST", self.chat_url, data=request.upstream_body(
            self.upstream_model), headers=self.headers)
        async for event in iter_sse(resp.content):
            if event.data == b"[DONE]":
                break
            yield orjson.loads(event.data)
        resp.release()


class SwallowsCut(OpenAIProvider):
    """Ends a broken stream as if it were complete."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in super().stream(request):
                yield chunk
        except UpstreamError:
            return


class UsageUnasked(OpenAIProvider):
    """Adds a usage chunk whether or not the client asked for one."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        last: dict[str, Any] = {}
        async for chunk in super().stream(request):
            last = chunk
            yield chunk
        if not request.include_usage:
            yield {**last, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                                     "total_tokens": 2}}


class FreshIds(OpenAIProvider):
    """Gives every chunk its own id."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        n = 0
        async for chunk in super().stream(request):
            n += 1
            yield {**chunk, "id": f"chatcmpl-{n}"}


class RetriesInside(OpenAIProvider):
    """Retries a 429 itself instead of leaving retries to the core."""

    async def chat(self, request: ChatRequest) -> ChatResponse:
        try:
            return await super().chat(request)
        except UpstreamError:
            return await super().chat(request)


class WrongKind(OpenAIProvider):
    """Reports every upstream failure as OVERLOADED."""

    def error_from_response(self, status: int, body: bytes, headers: Any) -> UpstreamError:
        return UpstreamError(ErrorKind.OVERLOADED, "something failed")


class ToolFragmentsAsCalls(OpenAIProvider):
    """Gives every tool-call fragment an index of its own: one call reaches the client as
    several broken ones (issue 12, defect 10)."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        seen = 0
        async for chunk in super().stream(request):
            for choice in chunk.get("choices") or ():
                for call in (choice.get("delta") or {}).get("tool_calls") or ():
                    call["index"] = seen
                    seen += 1
            yield chunk


class ToolArgumentsAsObject(OpenAIProvider):
    """Hands the client the arguments as an object; OpenAI's are a JSON string."""

    async def chat(self, request: ChatRequest) -> ChatResponse:
        response = await super().chat(request)
        for choice in response.data["choices"]:
            for call in choice["message"].get("tool_calls") or ():
                call["function"]["arguments"] = orjson.loads(call["function"]["arguments"])
        return response


class DropsToolResults(OpenAIProvider):
    """Leaves the client's tool messages out of what it sends upstream."""

    async def chat(self, request: ChatRequest) -> ChatResponse:
        body = dict(request.body)
        body["messages"] = [m for m in body["messages"] if m.get("role") != "tool"]
        return await super().chat(ChatRequest(body=body, raw=orjson.dumps(body)))


class EmbeddingsOutOfOrder(OpenAIProvider):
    """Reassembles the vectors in the wrong order (numbering them afresh)."""

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        response = await super().embeddings(request)
        items = response.data["data"][::-1]
        for i, item in enumerate(items):
            item["index"] = i
        response.data["data"] = items
        return response


class ImageTypeGuessed(OpenAIProvider):
    """Labels every image a JPEG whatever its bytes are."""

    async def images(self, request: ImageRequest) -> ImageResponse:
        response = await super().images(request)
        return ImageResponse(tuple((data, "image/jpeg") for data, _ in response.images))


def leaky_ollama() -> ConformanceAdapter:
    """The example plugin with its key scrubbing removed."""
    adapter = example_adapter()
    base: type[Provider] = adapter.provider

    class LeaksKey(base):  # type: ignore[valid-type,misc]
        # Undo both the plugin's own redaction and the one Provider.send applies.
        def _redact(self, text: str) -> str:
            return text

        def redact(self, text: str) -> str:
            return text

    adapter.provider = LeaksKey
    return adapter


# NeverClosesStream leaks a connection on purpose; aiohttp says so when it is collected.
@pytest.mark.filterwarnings("ignore:Unclosed connection:ResourceWarning")
@pytest.mark.parametrize(("adapter", "check", "complaint"), [
    pytest.param(OpenAIAdapter(RoleBeforeUpstream), "error_rate_limited",
                 "chunks before raising", id="role-before-upstream"),
    pytest.param(OpenAIAdapter(NeverClosesStream), "stream_aclose", "stayed open",
                 id="aclose-keeps-connection"),
    pytest.param(OpenAIAdapter(NeverClosesStream), "stream_cut", "raised ClientPayloadError",
                 id="cut-escapes-as-aiohttp-error"),
    pytest.param(OpenAIAdapter(SwallowsCut), "stream_cut", "no error was raised",
                 id="cut-swallowed"),
    pytest.param(OpenAIAdapter(UsageUnasked), "stream_no_usage", "usage was not asked for",
                 id="usage-unasked"),
    pytest.param(OpenAIAdapter(FreshIds), "stream_usage", "differ between chunks",
                 id="ids-differ"),
    pytest.param(OpenAIAdapter(RetriesInside), "error_rate_limited", "exactly one upstream call",
                 id="retries-inside"),
    pytest.param(OpenAIAdapter(WrongKind), "error_auth", "expected AUTH", id="wrong-kind"),
    pytest.param(leaky_ollama(), "no_secret_in_errors", "key appears", id="leaks-key"),
    pytest.param(OpenAIAdapter(ToolFragmentsAsCalls), "tool_call_stream",
                 "tool call 1 lacks its id", id="tool-fragments-as-calls"),
    pytest.param(OpenAIAdapter(ToolArgumentsAsObject), "tool_round_trip", "a JSON string",
                 id="tool-arguments-object"),
    pytest.param(OpenAIAdapter(DropsToolResults), "tool_round_trip", "the tool's result",
                 id="tool-result-dropped"),
    pytest.param(OpenAIAdapter(EmbeddingsOutOfOrder), "embeddings", "not the upstream's vector",
                 id="embeddings-out-of-order"),
    pytest.param(OpenAIAdapter(ImageTypeGuessed), "images", "does not match the bytes",
                 id="image-media-type"),
])
async def test_suite_catches(adapter: ConformanceAdapter, check: str, complaint: str) -> None:
    result = await run_check(adapter, check)
    assert not result.ok, f"{check} passed a provider that breaks it"
    assert complaint in result.detail, result.detail


# ---------------------------------------------------------------------------------------------
# The kit itself


async def test_report_lists_skipped_checks_with_reasons() -> None:
    report = await run_conformance(ADAPTERS["mock"])
    assert report.ok, report.summary()
    skipped = {r.name: r.detail for r in report.results if r.skipped}
    assert skipped["stream_cut"] == "the provider calls no upstream"
    assert {r.name for r in report.results} == set(CHECKS)
    assert "skip stream_cut" in report.summary()
    report.raise_for_failures()


async def test_report_of_a_broken_provider_raises() -> None:
    report = await run_conformance(OpenAIAdapter(SwallowsCut), ["chat", "stream_cut"])
    assert not report.ok
    assert [r.name for r in report.failures] == ["stream_cut"]
    with pytest.raises(AssertionError, match="FAIL stream_cut"):
        report.raise_for_failures()


def test_conformance_tests_builds_a_pytest_class() -> None:
    adapter = ADAPTERS["ollama-example"]
    cls = conformance_tests(adapter, name="TestX", known_gaps={"chat": "a known bug"})
    assert cls.__name__ == "TestX"
    marks = cls.test_conformance.pytestmark  # type: ignore[attr-defined]
    params = {p.id: p for p in marks[0].args[1]}
    # A test per check that applies, in suite order; the others are no tests at all (a
    # skipped test is one CI never runs) but are named, with why, for the plugin's report.
    assert list(params) == applicable_checks(adapter)
    not_run = skipped_checks(adapter)
    assert "tool_round_trip" in not_run and "error_content_filter" in not_run
    assert dict(cls.aiproxy_not_run) == not_run  # type: ignore[attr-defined]
    assert set(params) | set(not_run) == set(CHECKS) and not set(params) & set(not_run)
    (gap,) = params["chat"].marks
    assert gap.name == "xfail" and gap.kwargs == {"strict": True, "reason": "a known bug"}
    assert all(not p.marks for check, p in params.items() if check != "chat")
    with pytest.raises(ValueError, match="no check: nope"):
        conformance_tests(adapter, known_gaps={"nope": "x"})
    # A gap on a check that does not apply is stale: it could never xfail.
    with pytest.raises(ValueError, match=r"do not apply: images \(the provider does not "
                                         r"declare Capability.IMAGES\)"):
        conformance_tests(adapter, known_gaps={"images": "x"})


def test_every_bound_suite_collects_only_what_applies() -> None:
    """Each first-party suite: its tests are exactly the checks that apply, none marked skip."""
    for name, adapter in ADAPTERS.items():
        cls = globals()["TestConformance" + name.title().replace("-", "")]
        (mark,) = cls.test_conformance.pytestmark
        params = mark.args[1]
        assert [p.id for p in params] == applicable_checks(adapter), name
        assert not any(m.name in ("skip", "skipif") for p in params for m in p.marks), name
        assert dict(cls.aiproxy_not_run) == skipped_checks(adapter), name


class TestFakeUpstream:
    async def test_records_routes_and_refuses_the_unrouted(self) -> None:
        async def hello(request: web.Request) -> web.StreamResponse:
            return json_response({"hi": (await request.json())["name"]})

        async with FakeUpstream() as fake, aiohttp.ClientSession() as http:
            fake.route("POST", "/greet", hello)
            async with http.post(fake.url_for("/greet?x=1"), json={"name": "ann"},
                                 headers={"X-Key": "k"}) as resp:
                assert await resp.json() == {"hi": "ann"}
            async with http.get(fake.url_for("/nowhere")) as resp:
                assert resp.status == 404
            seen = fake.requests[0]
            assert (seen.method, seen.path, dict(seen.query)) == ("POST", "/greet", {"x": "1"})
            assert seen.json == {"name": "ann"}
            assert seen.headers["x-key"] == "k"  # case-insensitive, as HTTP headers are
            assert [r.path for r in fake.unrouted] == ["/nowhere"]
            assert fake.requests_to("/greet") == [seen]

    async def test_path_patterns(self) -> None:
        async def model(request: web.Request) -> web.StreamResponse:
            return json_response(dict(request.match_info))

        async def exact(request: web.Request) -> web.StreamResponse:
            return json_response({"exact": True})

        async with FakeUpstream() as fake, aiohttp.ClientSession() as http:
            fake.route("POST", "/v1beta/models/{model}:{method}", model)
            fake.route("POST", "/ai/run/{name:.+}", model)
            fake.route("POST", "/v1beta/models/fixed:generateContent", exact)
            async with http.post(fake.url_for("/v1beta/models/gemini-x:embedContent")) as resp:
                assert await resp.json() == {"tail": "v1beta/models/gemini-x:embedContent",
                                             "model": "gemini-x", "method": "embedContent"}
            async with http.post(fake.url_for("/ai/run/@cf/meta/llama")) as resp:
                assert (await resp.json())["name"] == "@cf/meta/llama"  # {name:regex} spans /
            async with http.post(fake.url_for("/v1beta/models/fixed:generateContent")) as resp:
                assert await resp.json() == {"exact": True}  # an exact path wins
            async with http.get(fake.url_for("/ai/run/x")) as resp:
                assert resp.status == 404  # the method is part of the route
            assert [r.path for r in fake.unrouted] == ["/ai/run/x"]

    async def test_sse_ndjson_cut_and_hold(self) -> None:
        async def sse(request: web.Request) -> web.StreamResponse:
            return await stream_response(request, [{"a": 1}, b"[DONE]"])

        async def ndjson_cut(request: web.Request) -> web.StreamResponse:
            return await stream_response(request, [{"a": 1}, {"a": 2}], format="ndjson",
                                         cut_after=1)

        async def held(request: web.Request) -> web.StreamResponse:
            return await stream_response(request, [{"a": 1}], hold=5)

        async with FakeUpstream() as fake, aiohttp.ClientSession() as http:
            fake.route("GET", "/sse", sse)
            fake.route("GET", "/cut", ndjson_cut)
            fake.route("GET", "/held", held)
            async with http.get(fake.url_for("/sse")) as resp:
                assert resp.headers["Content-Type"] == "text/event-stream"
                assert await resp.read() == b'data: {"a":1}\n\ndata: [DONE]\n\n'
            async with http.get(fake.url_for("/cut")) as resp:
                assert resp.headers["Content-Type"] == "application/x-ndjson"
                assert await resp.content.readline() == b'{"a":1}\n'
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()
            assert fake.disconnects == 0
            async with http.get(fake.url_for("/held")) as resp:
                assert await resp.content.readline() == b'data: {"a":1}\n'
                resp.close()
            assert await fake.wait_for_disconnect(2.0)
            assert fake.disconnects == 1


async def test_chat_request_and_collect_stream_helpers() -> None:
    request = chat_request(stream=True, include_usage=True, temperature=0)
    assert request.stream and request.include_usage
    assert orjson.loads(request.raw) == request.body
    assert request.body["temperature"] == 0
    provider = MockProvider(ModelConfig(name="m", provider="mock"), None)  # type: ignore[arg-type]
    chunks = await collect_stream(provider.stream(request))
    assert chunks[-1]["usage"]["total_tokens"] > 0


def test_the_kit_imports_without_pytest() -> None:
    code = ("import sys; sys.modules['pytest'] = None; import aiproxy.testing as t; "
            "print(len(t.CHECKS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(CHECKS)
