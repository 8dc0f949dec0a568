"""The aiproxy conformance suite, run against this plugin.

The adapter tells the suite how Ollama says things (shapes from
https://github.com/ollama/ollama/blob/main/docs/api.md and https://docs.ollama.com/api/errors);
the suite plays that upstream on 127.0.0.1 and checks the provider against the plugin contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiproxy_ollama_example import OllamaProvider

from aiproxy.config import ModelConfig
from aiproxy.provider import ChatRequest, ErrorKind
from aiproxy.testing import (
    RETRY_AFTER,
    ConformanceAdapter,
    RecordedRequest,
    StreamEvent,
    Usage,
    conformance_tests,
    json_response,
)

CREATED_AT = "2025-10-26T17:15:24.097767Z"


class OllamaAdapter(ConformanceAdapter):
    provider = OllamaProvider
    chat_paths = ("/api/chat",)
    stream_format = "ndjson"

    def model_config(self, base_url: str) -> ModelConfig:
        return ModelConfig(name="local/llama", provider="ollama-example", url=base_url,
                           upstream_model="llama3.2", token=self.token,
                           options={"keep_alive": "10m"})

    def answer_text(self, text: str, usage: Usage, request: RecordedRequest) -> dict[str, Any]:
        return {"model": "llama3.2", "created_at": CREATED_AT,
                "message": {"role": "assistant", "content": text},
                "done": True, "done_reason": "stop", "total_duration": 5191566416,
                "prompt_eval_count": usage.prompt_tokens, "eval_count": usage.completion_tokens}

    def stream_text(self, pieces: Sequence[str], usage: Usage,
                    request: RecordedRequest) -> list[StreamEvent]:
        lines: list[StreamEvent] = [
            {"model": "llama3.2", "created_at": CREATED_AT,
             "message": {"role": "assistant", "content": piece}, "done": False}
            for piece in pieces]
        lines.append({"model": "llama3.2", "created_at": CREATED_AT,
                      "message": {"role": "assistant", "content": ""},
                      "done": True, "done_reason": "stop",
                      "prompt_eval_count": usage.prompt_tokens,
                      "eval_count": usage.completion_tokens})
        return lines

    def error(self, kind: ErrorKind, message: str,
              request: RecordedRequest) -> web.StreamResponse | None:
        if kind is ErrorKind.RATE_LIMITED:
            return json_response({"error": message}, status=429,
                                 headers={"Retry-After": str(int(RETRY_AFTER))})
        if kind is ErrorKind.OVERLOADED:  # OLLAMA_MAX_QUEUE exceeded
            return json_response({"error": f"server busy, please try again. {message}"},
                                 status=503)
        if kind is ErrorKind.BAD_REQUEST:
            return json_response({"error": message}, status=400)
        if kind is ErrorKind.AUTH:
            return json_response({"error": message}, status=401)
        if kind is ErrorKind.CONTEXT_LENGTH:
            return json_response(
                {"error": f"input length exceeds maximum context length ({message})"},
                status=400)
        return None  # CONTENT_FILTER: Ollama has no safety system of its own

    def stream_error(self, message: str) -> StreamEvent | None:
        return {"error": message}

    def check_request(self, request: RecordedRequest, chat: ChatRequest) -> None:
        body = request.json
        assert body["model"] == "llama3.2"
        assert body["stream"] is chat.stream
        assert body["messages"] == [{"role": "system", "content": "You are a conformance test."},
                                    {"role": "user", "content": "Say hello."}]
        assert body["options"] == {"temperature": 0.5, "num_predict": 32}
        assert body["keep_alive"] == "10m"
        assert request.headers["Authorization"] == f"Bearer {self.token}"


TestOllamaConformance = conformance_tests(OllamaAdapter())
