"""OpenAI-compatible upstreams: OpenAI itself, OpenRouter, Groq, the HuggingFace router, and any
server that speaks the Chat Completions API (vLLM, Ollama, Cloudflare's ``/ai/v1`` endpoint...).

The request body is forwarded as the client sent it, re-encoded only when the model id changes.
API reference: https://platform.openai.com/docs/api-reference/chat
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import attrs
import orjson

from aiproxy.provider import (
    Capability,
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorKind,
    ImageRequest,
    ImageResponse,
    ModelConfig,
    Provider,
    UpstreamError,
    image_media_type,
    iter_sse,
)

__all__ = ["GroqProvider", "HuggingFaceProvider", "OpenAIProvider", "OpenRouterProvider"]

_CHAT_SUFFIX = "/chat/completions"


@attrs.frozen
class OpenAIOptions:
    """``options:`` of an OpenAI-compatible model."""

    # Extra headers sent upstream (an organisation or project header, say).
    headers: Mapping[str, str] = attrs.field(factory=dict)
    # OpenRouter's optional app attribution headers.
    http_referer: str | None = None
    x_title: str | None = None


class OpenAIProvider(Provider):
    """Any upstream that speaks the OpenAI API. ``url:`` is the API base (``.../v1``) or, as in
    the old proxy's configs, the full ``.../chat/completions`` endpoint."""

    capabilities = frozenset({Capability.CHAT, Capability.EMBEDDINGS, Capability.IMAGES})
    default_url = "https://api.openai.com/v1"
    options_type = OpenAIOptions

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(model, session)
        url = self.url.rstrip("/")
        if url.endswith(_CHAT_SUFFIX):
            self.chat_url, self.base_url = url, url[: -len(_CHAT_SUFFIX)]
        else:
            self.chat_url, self.base_url = url + _CHAT_SUFFIX, url
        headers = {"Content-Type": "application/json"}
        if model.token:
            headers["Authorization"] = f"Bearer {model.token}"
        options: OpenAIOptions = self.options
        if options.http_referer:
            headers["HTTP-Referer"] = options.http_referer
        if options.x_title:
            headers["X-Title"] = options.x_title
        headers.update(options.headers)
        self.headers = headers

    async def chat(self, request: ChatRequest) -> ChatResponse:
        body = request.upstream_body(self.upstream_model)
        resp = await self.send("POST", self.chat_url, data=body, headers=self.headers)
        try:
            data = await self._read_json(resp)
        finally:
            resp.release()
        if not isinstance(data.get("choices"), list):
            raise self._embedded_error(data) or UpstreamError(
                ErrorKind.PROTOCOL, "the upstream answer has no choices")
        return ChatResponse(data)

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        body = request.upstream_body(self.upstream_model)
        resp = await self.send("POST", self.chat_url, data=body, headers=self.headers)
        finished = False
        try:
            try:
                async for event in iter_sse(resp.content):
                    if event.data == b"[DONE]":
                        return
                    chunk = self._parse_chunk(event.data)
                    for choice in chunk.get("choices") or ():
                        if isinstance(choice, dict) and choice.get("finish_reason"):
                            finished = True
                    yield chunk
            except (aiohttp.ClientError, ValueError) as exc:
                raise UpstreamError(ErrorKind.PROTOCOL, "the upstream stream broke "
                                    f"({type(exc).__name__})") from None
            if not finished:
                raise UpstreamError(ErrorKind.PROTOCOL,
                                    "the upstream stream ended before its answer was complete")
            # Ended cleanly with a finish_reason but no [DONE]: the core adds [DONE].
        finally:
            resp.close()

    def _parse_chunk(self, data: bytes) -> dict[str, Any]:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(ErrorKind.PROTOCOL,
                                "the upstream sent a malformed stream event") from None
        if not isinstance(chunk, dict):
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream sent a stream event that is "
                                "not an object")
        if "error" in chunk:
            raise self._embedded_error(chunk) or UpstreamError(
                ErrorKind.PROTOCOL, "the upstream reported an error mid-stream")
        if not isinstance(chunk.get("choices"), list):
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream sent a chunk without choices")
        return chunk

    def _embedded_error(self, data: Mapping[str, Any]) -> UpstreamError | None:
        """An error object inside a 200 answer or a stream event (OpenRouter does this)."""
        err = data.get("error")
        if not isinstance(err, dict):
            return None
        status = err.get("code")
        status = status if isinstance(status, int) and 400 <= status < 600 else 502
        return self.error_from_response(status, orjson.dumps(data), {})

    async def _read_json(self, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        try:
            data = orjson.loads(await resp.read())
        except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream answer is not valid JSON "
                                f"({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream answer is not a JSON object")
        return data

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        body = dict(request.body)
        body["model"] = self.upstream_model
        resp = await self.send("POST", self.base_url + "/embeddings", data=orjson.dumps(body),
                               headers=self.headers)
        try:
            data = await self._read_json(resp)
        finally:
            resp.release()
        if not isinstance(data.get("data"), list):
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream answer has no data")
        return EmbeddingsResponse(data)

    async def images(self, request: ImageRequest) -> ImageResponse:
        body = dict(request.body)
        body["model"] = self.upstream_model
        body["response_format"] = "b64_json"  # we hand bytes to the core, never a URL
        resp = await self.send("POST", self.base_url + "/images/generations",
                               data=orjson.dumps(body), headers=self.headers)
        try:
            data = await self._read_json(resp)
        finally:
            resp.release()
        images = []
        for item in data.get("data") or ():
            encoded = item.get("b64_json") if isinstance(item, dict) else None
            if not isinstance(encoded, str):
                continue
            try:
                raw = base64.b64decode(encoded, validate=True)
            except ValueError:
                raise UpstreamError(ErrorKind.PROTOCOL, "the upstream sent invalid base64 "
                                    "image data") from None
            images.append((raw, image_media_type(raw) or "application/octet-stream"))
        if not images:
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream answer has no image")
        return ImageResponse(tuple(images))


class OpenRouterProvider(OpenAIProvider):
    """OpenRouter: https://openrouter.ai/docs/api-reference/overview. Errors carry
    ``error.metadata.provider_name`` (which provider behind OpenRouter failed)."""

    capabilities = frozenset({Capability.CHAT, Capability.EMBEDDINGS})
    default_url = "https://openrouter.ai/api/v1"

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        err = super().error_from_response(status, body, headers)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return err
        meta = parsed.get("error", {}).get("metadata") if isinstance(parsed, dict) and \
            isinstance(parsed.get("error"), dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("provider_name"), str):
            err.provider_name = meta["provider_name"]
        return err


class GroqProvider(OpenAIProvider):
    """Groq's OpenAI-compatible API: https://console.groq.com/docs/api-reference."""

    capabilities = frozenset({Capability.CHAT})
    default_url = "https://api.groq.com/openai/v1"


@attrs.frozen
class HuggingFaceOptions(OpenAIOptions):
    """``options:`` of a HuggingFace model; ``image_url`` overrides the text-to-image endpoint
    (default ``https://router.huggingface.co/hf-inference/models/<model>``)."""

    image_url: str | None = None


class HuggingFaceProvider(OpenAIProvider):
    """The HuggingFace inference router: chat is OpenAI-compatible
    (https://huggingface.co/docs/inference-providers/index); text-to-image is the task API,
    ``{"inputs": prompt, "parameters": {...}}`` answered with the image bytes
    (https://huggingface.co/docs/inference-providers/tasks/text-to-image)."""

    capabilities = frozenset({Capability.CHAT, Capability.IMAGES})
    default_url = "https://router.huggingface.co/v1"
    options_type = HuggingFaceOptions

    async def images(self, request: ImageRequest) -> ImageResponse:
        options: HuggingFaceOptions = self.options
        url = options.image_url or (
            f"https://router.huggingface.co/hf-inference/models/{self.upstream_model}")
        parameters: dict[str, Any] = {}
        size = request.body.get("size")
        if isinstance(size, str) and "x" in size:
            width, _, height = size.partition("x")
            if width.isdigit() and height.isdigit():
                parameters.update(width=int(width), height=int(height))
        body = orjson.dumps({"inputs": request.body["prompt"], "parameters": parameters})
        headers = {**self.headers, "Accept": "image/png"}

        async def one() -> tuple[bytes, str]:
            resp = await self.send("POST", url, data=body, headers=headers)
            try:
                data = await resp.read()
            except aiohttp.ClientError as exc:
                raise UpstreamError(ErrorKind.PROTOCOL, "the image download broke "
                                    f"({type(exc).__name__})") from None
            finally:
                resp.release()
            media_type = image_media_type(data)
            if media_type is None:
                raise UpstreamError(ErrorKind.PROTOCOL, "the upstream answer is not an image")
            return data, media_type

        # The task API makes one image a call; n images are n calls made together.
        n = int(request.body.get("n") or 1)
        return ImageResponse(tuple(await asyncio.gather(*(one() for _ in range(n)))))
