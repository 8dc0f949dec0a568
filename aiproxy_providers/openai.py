"""OpenAI-compatible upstreams: OpenAI itself, Azure OpenAI, OpenRouter, Groq, the HuggingFace
router, the other names the old proxy sent to its OpenAI client, and any server that speaks the
Chat Completions API (vLLM, Ollama, Cloudflare's ``/ai/v1`` endpoint...).

The request body is forwarded as the client sent it, re-encoded only when the model id changes.
API reference: https://platform.openai.com/docs/api-reference/chat
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import attrs
import orjson

from aiproxy.provider import (
    MALFORMED_EVENT,
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
    UpstreamResponse,
    error_from_status,
    image_media_type,
    iter_sse,
)

__all__ = [
    "AIMLAPIProvider",
    "AirforceProvider",
    "ArliAIProvider",
    "GitHubModelsProvider",
    "GlamaProvider",
    "GroqProvider",
    "HuggingFaceProvider",
    "OpenAIOptions",
    "OpenAIProvider",
    "OpenRouterProvider",
    "TogetherProvider",
    "UpstreamURL",
    "sends_image_response_format",
]

# Endpoints a configured ``url:`` may already end with (the old proxy's configs name the whole
# chat endpoint; an Azure deployment URL may name any of them).
_ENDPOINT_SUFFIXES = ("/chat/completions", "/embeddings", "/images/generations")

# Hosts of Azure OpenAI resources, which take the key in an ``api-key`` header rather than as a
# bearer token: https://learn.microsoft.com/en-us/azure/ai-services/openai/reference#authentication
_AZURE_HOST_SUFFIXES = (".openai.azure.com", ".cognitiveservices.azure.com",
                        ".services.ai.azure.com")


@attrs.frozen
class UpstreamURL:
    """A configured ``url:`` split into the API prefix and its query string, so an endpoint
    path goes before the query: Azure's ``.../deployments/{d}?api-version=...`` becomes
    ``.../deployments/{d}/chat/completions?api-version=...``."""

    prefix: str
    query: str

    @classmethod
    def parse(cls, url: str) -> UpstreamURL:
        parts = urlsplit(url.strip())
        path = parts.path.rstrip("/")
        for suffix in _ENDPOINT_SUFFIXES:
            if path.endswith(suffix):
                path = path[: -len(suffix)]
                break
        return cls(urlunsplit((parts.scheme, parts.netloc, path, "", "")), parts.query)

    def endpoint(self, path: str) -> str:
        """The URL of ``path`` (``/chat/completions``...) with the configured query kept."""
        return f"{self.prefix}{path}?{self.query}" if self.query else self.prefix + path

    @property
    def is_azure(self) -> bool:
        host = (urlsplit(self.prefix).hostname or "").lower()
        return host.endswith(_AZURE_HOST_SUFFIXES)

    @property
    def azure_deployment(self) -> str | None:
        """``{d}`` of an Azure ``/openai/deployments/{d}`` URL, else None."""
        segments = urlsplit(self.prefix).path.split("/")
        if len(segments) >= 2 and segments[-2] == "deployments" and segments[-1]:
            return segments[-1]
        return None


@attrs.frozen
class OpenAIOptions:
    """``options:`` of an OpenAI-compatible model."""

    # Extra headers sent upstream (an organisation or project header, say).
    headers: Mapping[str, str] = attrs.field(factory=dict)
    # OpenRouter's optional app attribution headers.
    http_referer: str | None = None
    x_title: str | None = None
    # How the key is sent: ``bearer`` (Authorization: Bearer), ``api-key`` (Azure's header).
    # Unset: ``api-key`` for Azure OpenAI hosts, ``bearer`` for every other.
    auth_header: Literal["bearer", "api-key"] | None = None
    # Whether image calls send ``response_format: b64_json``: ``auto`` leaves it out for the
    # GPT image models, which refuse it, and sends it to every other model.
    image_response_format: Literal["auto", "b64_json", "omit"] = "auto"
    # Whether Responses API requests (/v1/responses) pass through to this upstream untranslated
    # instead of being translated to chat. Unset: true for api.openai.com only (set it for Azure
    # OpenAI's v1 API, vLLM, or any other server with a /responses endpoint).
    responses_api: bool | None = None
    # Whether legacy completions (/v1/completions) pass through untranslated. Unset: true for
    # OpenAI's completion models (gpt-3.5-turbo-instruct, davinci-002, babbage-002) on
    # api.openai.com, which are the only ones OpenAI serves there; vLLM and most local servers
    # serve it for every model: set it.
    completions_api: bool | None = None
    # How this upstream continues an assistant turn (mid-stream continuation, when the model's
    # `continuation: true`): `prefix` marks the last message as a prefix (DeepSeek's and
    # Mistral's prefix completion), `continue_final_message` sets vLLM's flags of that name,
    # `plain` sends the trailing assistant turn as it is (servers that continue one natively).
    continuation: Literal["plain", "prefix", "continue_final_message"] = "plain"


# The models OpenAI serves on the legacy completions endpoint:
# https://platform.openai.com/docs/api-reference/completions
_OPENAI_COMPLETION_MODELS = ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002")
# Terminal events of a Responses API stream:
# https://platform.openai.com/docs/api-reference/responses-streaming
_RESPONSE_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def sends_image_response_format(option: str, *model_ids: str | None) -> bool:
    """Whether an image request may carry ``response_format``. The GPT image models always
    answer base64 and refuse the parameter ("Unknown parameter"); DALL-E and other
    OpenAI-compatible image models default to ``url`` and need it set to ``b64_json``:
    https://platform.openai.com/docs/api-reference/images/create#images-create-response_format
    """
    if option != "auto":
        return option == "b64_json"
    for model_id in model_ids:
        name = (model_id or "").lower().rsplit("/", 1)[-1]
        if name.startswith(("gpt-image", "chatgpt-image")):
            return False
    return True


class OpenAIProvider(Provider):
    """Any upstream that speaks the OpenAI API. ``url:`` is the API base (``.../v1``), or, as in
    the old proxy's configs, a full endpoint such as ``.../chat/completions``; a query string
    (Azure's ``?api-version=``) is kept on every endpoint.

    It declares no ``chat_parameters``: the request goes on as the client sent it, and the
    upstream, which speaks the same API, judges every parameter itself."""

    plugin_api_version = 2
    capabilities = frozenset({Capability.CHAT, Capability.EMBEDDINGS, Capability.IMAGES})
    default_url = "https://api.openai.com/v1"
    options_type = OpenAIOptions

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(model, session)
        self.upstream_url = UpstreamURL.parse(self.url)
        self.base_url = self.upstream_url.prefix  # without the query: use endpoint()
        self.chat_url = self.endpoint("/chat/completions")
        options: OpenAIOptions = self.options
        headers = {"Content-Type": "application/json"}
        if model.token:
            # Azure OpenAI takes its key as ``api-key``:
            # https://learn.microsoft.com/en-us/azure/ai-services/openai/reference#authentication
            auth = options.auth_header or ("api-key" if self.upstream_url.is_azure
                                           else "bearer")
            if auth == "api-key":
                headers["api-key"] = model.token
            else:
                headers["Authorization"] = f"Bearer {model.token}"
        if options.http_referer:
            headers["HTTP-Referer"] = options.http_referer
        if options.x_title:
            headers["X-Title"] = options.x_title
        headers.update(options.headers)
        self.headers = headers
        on_openai = (urlsplit(self.base_url).hostname or "").lower() == "api.openai.com"
        self.serves_responses_api = (options.responses_api if options.responses_api is not None
                                     else on_openai)
        self.serves_completions_api = (
            options.completions_api if options.completions_api is not None
            else on_openai and self.upstream_model.startswith(_OPENAI_COMPLETION_MODELS))

    def endpoint(self, path: str) -> str:
        """The upstream URL of an API path such as ``/embeddings``."""
        return self.upstream_url.endpoint(path)

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

    def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        body = request.upstream_body(self.upstream_model, **self._continuation(request))
        # The call is made as the first chunk is asked for; no generator of its own around
        # _chunks (each layer is one more step for every chunk of the stream).
        return self._chunks(self.chat_url, body)

    async def _chunks(self, url: str, body: bytes) -> AsyncIterator[dict[str, Any]]:
        """POST ``body`` to ``url`` and yield the chunks of the OpenAI-shaped stream it
        answers (chat or legacy completions), until [DONE] or a clean end after a
        finish_reason; a cut or an early end is a PROTOCOL error. An event that is not JSON
        is yielded as MALFORMED_EVENT, for the core to drop."""
        resp = await self.send("POST", url, data=body, headers=self.headers)
        finished = False
        try:
            try:
                async for event in iter_sse(resp.content):
                    if event.data == b"[DONE]":
                        return
                    chunk = self._parse_chunk(event.data)
                    if chunk is MALFORMED_EVENT:
                        yield chunk
                        continue
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

    def _continuation(self, request: ChatRequest) -> dict[str, Any]:
        """The body fields that make this upstream continue the trailing assistant turn of a
        continuation request (none for a client's own request)."""
        if not request.continuation:
            return {}
        style = self.options.continuation if self.options is not None else "plain"
        if style == "continue_final_message":
            # https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html (chat extras)
            return {"continue_final_message": True, "add_generation_prompt": False}
        if style == "prefix":
            # https://api-docs.deepseek.com/guides/chat_prefix_completion
            messages = [dict(m) for m in request.body["messages"]]
            messages[-1]["prefix"] = True
            return {"messages": messages}
        return {}

    def _parse_chunk(self, data: bytes) -> dict[str, Any]:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return MALFORMED_EVENT  # dropped and counted by the core; repeated ones break it
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

    async def _read_json(self, resp: UpstreamResponse) -> dict[str, Any]:
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
        resp = await self.send("POST", self.endpoint("/embeddings"), data=orjson.dumps(body),
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
        options: OpenAIOptions = self.options
        # We hand bytes to the core, never a URL: ask for base64 where the model takes the
        # parameter; the GPT image models answer base64 without it and refuse it.
        if sends_image_response_format(options.image_response_format, self.upstream_model,
                                       self.upstream_url.azure_deployment):
            body["response_format"] = "b64_json"
        else:
            body.pop("response_format", None)
        resp = await self.send("POST", self.endpoint("/images/generations"),
                               data=orjson.dumps(body), headers=self.headers)
        try:
            data = await self._read_json(resp)
        finally:
            resp.release()
        images = []
        urls_only = False
        for item in data.get("data") or ():
            encoded = item.get("b64_json") if isinstance(item, dict) else None
            if not isinstance(encoded, str):
                urls_only = urls_only or (isinstance(item, dict) and "url" in item)
                continue
            try:
                raw = base64.b64decode(encoded, validate=True)
            except ValueError:
                raise UpstreamError(ErrorKind.PROTOCOL, "the upstream sent invalid base64 "
                                    "image data") from None
            images.append((raw, image_media_type(raw) or "application/octet-stream"))
        if not images and urls_only:
            # We download nothing the upstream points at; the model must answer base64.
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream answered image URLs, not "
                                "b64_json; set options.image_response_format: b64_json")
        if not images:
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream answer has no image")
        return ImageResponse(tuple(images))

    # --- The Responses API and the legacy completions, passed through untranslated ---------
    # Used by the front doors when ``serves_responses_api`` / ``serves_completions_api``:
    # https://platform.openai.com/docs/api-reference/responses and .../completions

    def _native_body(self, body: Mapping[str, Any]) -> bytes:
        return orjson.dumps({**body, "model": self.upstream_model})

    async def responses(self, body: Mapping[str, Any]) -> dict[str, Any]:
        resp = await self.send("POST", self.endpoint("/responses"),
                               data=self._native_body(body), headers=self.headers)
        try:
            data = await self._read_json(resp)
        finally:
            resp.release()
        if data.get("object") != "response":
            raise self._embedded_error(data) or UpstreamError(
                ErrorKind.PROTOCOL, "the upstream answer is not a Response object")
        return data

    async def responses_stream(self, body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        resp = await self.send("POST", self.endpoint("/responses"),
                               data=self._native_body({**body, "stream": True}),
                               headers=self.headers)
        try:
            try:
                async for event in iter_sse(resp.content):
                    if event.data == b"[DONE]":
                        break
                    data = self._parse_event(event.data)
                    kind = data.get("type")
                    if kind == "error":
                        raise self._event_error(data)
                    yield data
                    if kind in _RESPONSE_TERMINAL:
                        return
            except (aiohttp.ClientError, ValueError) as exc:
                raise UpstreamError(ErrorKind.PROTOCOL, "the upstream stream broke "
                                    f"({type(exc).__name__})") from None
            raise UpstreamError(ErrorKind.PROTOCOL,
                                "the upstream stream ended before its response was complete")
        finally:
            resp.close()

    async def delete_response(self, response_id: str) -> None:
        resp = await self.send("DELETE", self.endpoint(f"/responses/{response_id}"),
                               headers=self.headers)
        resp.release()

    async def completions(self, body: Mapping[str, Any]) -> dict[str, Any]:
        resp = await self.send("POST", self.endpoint("/completions"),
                               data=self._native_body(body), headers=self.headers)
        try:
            data = await self._read_json(resp)
        finally:
            resp.release()
        if not isinstance(data.get("choices"), list):
            raise self._embedded_error(data) or UpstreamError(
                ErrorKind.PROTOCOL, "the upstream answer has no choices")
        return data

    def completions_stream(self, body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._chunks(self.endpoint("/completions"),
                            self._native_body({**body, "stream": True}))

    def _parse_event(self, data: bytes) -> dict[str, Any]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(ErrorKind.PROTOCOL,
                                "the upstream sent a malformed stream event") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream sent a stream event without "
                                "a type")
        return event

    def _event_error(self, event: Mapping[str, Any]) -> UpstreamError:
        """A Responses stream's ``error`` event (``code``, ``message``, ``param``) as the
        error its code names: https://platform.openai.com/docs/api-reference/responses-streaming/error
        """
        code = event.get("code")
        code = code if isinstance(code, str) else None
        message = str(event.get("message") or "the upstream reported an error mid-stream")
        status = 429 if code in ("rate_limit_exceeded", "insufficient_quota") else (
            400 if code and code.startswith("invalid") else 500)
        param = event.get("param")
        return error_from_status(status, self.redact(message), code=code,
                                 param=param if isinstance(param, str) else None)


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


# --- Names the old proxy sent to its OpenAI-compatible client --------------------------------
# Its provider switch passed "groq", "arliai", "github" and every unnamed provider (its configs
# use "glama", "together", "aimlapi", "airforce") to one OpenAI client; each keeps its name here,
# with the base URL its own documentation gives.


class GlamaProvider(OpenAIProvider):
    """Glama Gateway: https://glama.ai/ai/gateway/docs/api. The old proxy's
    ``https://glama.ai/api/gateway/openai/v1`` still works as ``url:``."""

    capabilities = frozenset({Capability.CHAT})
    default_url = "https://gateway.glama.ai/v1"


class ArliAIProvider(OpenAIProvider):
    """Arli AI text generation: https://www.arliai.com/docs."""

    capabilities = frozenset({Capability.CHAT})
    default_url = "https://api.arliai.com/v1"


class GitHubModelsProvider(OpenAIProvider):
    """GitHub Models inference (a token with ``models: read``):
    https://docs.github.com/en/rest/models/inference; model ids are ``publisher/name``."""

    capabilities = frozenset({Capability.CHAT})
    default_url = "https://models.github.ai/inference"


class TogetherProvider(OpenAIProvider):
    """Together AI's OpenAI-compatible API (chat, embeddings, images):
    https://docs.together.ai/docs/inference/openai-compatibility."""

    default_url = "https://api.together.ai/v1"


class AIMLAPIProvider(OpenAIProvider):
    """AI/ML API, OpenAI-compatible (chat, embeddings, images):
    https://docs.aimlapi.com/quickstart/supported-sdks."""

    default_url = "https://api.aimlapi.com/v1"


class AirforceProvider(OpenAIProvider):
    """api.airforce chat completions: https://api.airforce/docs/api/chat/. (The old proxy's
    ``GET`` image API is not an OpenAI endpoint and is not served.)"""

    capabilities = frozenset({Capability.CHAT})
    default_url = "https://api.airforce/v1"
