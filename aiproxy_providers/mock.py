"""An offline provider for demos and tests: deterministic answers, no network, no key.

It echoes the last user message (or answers a fixed ``reply``), streams it word by word, counts
usage in words, and can simulate latency. ``config/demo.yaml`` runs the proxy on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs

from aiproxy.provider import (
    Capability,
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ImageRequest,
    ImageResponse,
    Provider,
    StreamChunks,
)

__all__ = ["MockOptions", "MockProvider", "mock_png"]


def _non_negative(inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0")


@attrs.frozen
class MockOptions:
    """``options:`` of a mock model."""

    reply: str | None = None  # fixed answer; default: "You said: <last user message>"
    latency: float = attrs.field(default=0.0, validator=_non_negative)  # before the answer
    chunk_delay: float = attrs.field(default=0.0, validator=_non_negative)  # between chunks
    dimensions: int = 8  # embedding size


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content
                        if isinstance(p, dict) and p.get("type") == "text")
    return ""


def mock_png(width: int = 2, height: int = 2, seed: bytes = b"") -> bytes:
    """A small valid PNG whose colour depends on ``seed``."""
    r, g, b = hashlib.sha256(seed).digest()[:3]
    row = b"\x00" + bytes((r, g, b)) * width
    raw = row * height

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


class MockProvider(Provider):
    capabilities = frozenset({Capability.CHAT, Capability.EMBEDDINGS, Capability.IMAGES})
    requires_token = False  # offline: no upstream
    default_url = "mock://local"
    options_type = MockOptions

    def _answer(self, body: Mapping[str, Any]) -> tuple[str, int]:
        options: MockOptions = self.options
        messages = body.get("messages") or []
        prompt_words = sum(len(_text_of(m.get("content")).split()) for m in messages
                           if isinstance(m, dict))
        if options.reply is not None:
            return options.reply, prompt_words
        last = next((_text_of(m.get("content")) for m in reversed(messages)
                     if isinstance(m, dict) and m.get("role") == "user"), "")
        return f"You said: {last}", prompt_words

    @staticmethod
    def _completion_id(body: Mapping[str, Any]) -> str:
        digest = hashlib.sha256(repr(body.get("messages")).encode()).hexdigest()[:24]
        return f"chatcmpl-mock-{digest}"

    async def chat(self, request: ChatRequest) -> ChatResponse:
        options: MockOptions = self.options
        if options.latency:
            await asyncio.sleep(options.latency)
        text, prompt = self._answer(request.body)
        completion = len(text.split())
        return ChatResponse({
            "id": self._completion_id(request.body),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        })

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        options: MockOptions = self.options
        if options.latency:
            await asyncio.sleep(options.latency)
        text, prompt = self._answer(request.body)
        words = text.split(" ")
        chunks = StreamChunks(self.model.name, id=self._completion_id(request.body))
        yield chunks.role()
        for i, word in enumerate(words):
            if options.chunk_delay:
                await asyncio.sleep(options.chunk_delay)
            piece = word if i == 0 else " " + word
            yield chunks.chunk({"content": piece})
        yield chunks.chunk({}, "stop")
        if request.include_usage:
            completion = len(text.split())
            yield chunks.usage({
                "prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion})

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        options: MockOptions = self.options
        raw_input = request.body.get("input")
        inputs = [raw_input] if isinstance(raw_input, str) else list(raw_input or [])
        dims = request.body.get("dimensions") or options.dimensions
        data = []
        for i, item in enumerate(inputs):
            digest = hashlib.sha256(str(item).encode()).digest()
            vector = [((digest[j % 32] / 255.0) * 2 - 1) for j in range(dims)]
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            data.append({"object": "embedding", "index": i,
                         "embedding": [v / norm for v in vector]})
        tokens = sum(len(str(item).split()) for item in inputs)
        return EmbeddingsResponse({"object": "list", "data": data, "model": self.model.name,
                                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def images(self, request: ImageRequest) -> ImageResponse:
        n = request.body.get("n") or 1
        prompt = str(request.body.get("prompt", ""))
        return ImageResponse(tuple((mock_png(seed=f"{prompt}:{i}".encode()), "image/png")
                                   for i in range(n)))
