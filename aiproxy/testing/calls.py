"""Requests as the core builds them from a client's JSON, and the draining of a stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import orjson

from aiproxy.provider import ChatRequest, EmbeddingsRequest, ImageRequest

__all__ = ["MESSAGES", "chat_request", "collect_stream", "drain", "embeddings_request",
           "image_request"]

#: The conversation every conformance request carries.
MESSAGES: tuple[dict[str, Any], ...] = (
    {"role": "system", "content": "You are a conformance test."},
    {"role": "user", "content": "Say hello."},
)


def chat_request(*, stream: bool = False, include_usage: bool = False,
                 model: str = "conformance/model",
                 messages: Sequence[Mapping[str, Any]] = MESSAGES,
                 **fields: Any) -> ChatRequest:
    """A :class:`ChatRequest` as the core would build it from a client's JSON body."""
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages], **fields}
    if stream:
        body["stream"] = True
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return ChatRequest(body=body, raw=orjson.dumps(body), stream=stream)


def embeddings_request(input: str | Sequence[str], *, model: str = "conformance/model",
                       **fields: Any) -> EmbeddingsRequest:
    """An :class:`EmbeddingsRequest` as the core builds it (``input`` a string or a list)."""
    body: dict[str, Any] = {"model": model,
                            "input": input if isinstance(input, str) else list(input), **fields}
    return EmbeddingsRequest(body=body, raw=orjson.dumps(body))


def image_request(prompt: str, *, model: str = "conformance/model",
                  **fields: Any) -> ImageRequest:
    """An :class:`ImageRequest` as the core builds it."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, **fields}
    return ImageRequest(body=body, raw=orjson.dumps(body))


async def collect_stream(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every chunk of a provider's stream; closes it whatever happens."""
    chunks, error = await drain(stream)
    if error is not None:
        raise error
    return chunks


async def drain(stream: AsyncIterator[dict[str, Any]]
                ) -> tuple[list[dict[str, Any]], Exception | None]:
    """The chunks a stream yields, and the exception that ended it (``None``: a clean end)."""
    chunks: list[dict[str, Any]] = []
    try:
        async for chunk in stream:
            chunks.append(chunk)
    except Exception as exc:  # noqa: BLE001 - the caller judges what was raised
        return chunks, exc
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
    return chunks, None
