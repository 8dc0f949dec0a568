"""Cloudflare Workers AI: its native REST API ``POST .../accounts/{id}/ai/run/{model}``, or its
OpenAI-compatible endpoint ``.../accounts/{id}/ai/v1/...`` when ``url:`` names that.

Native text models take OpenAI-like ``messages`` and answer ``{"result": {"response": ...}}``
inside Cloudflare's API envelope (``success``, ``errors``, ``messages``); newer models answer the
OpenAI shape inside it. What each model reads is decided by its family (``models``); the
translation both ways is ``translate``. Text-to-image models answer a base64 image in the
envelope, or raw image bytes. Streams: ``"stream": true`` on the same model pages; the answer is
SSE events ending with ``data: [DONE]``. OpenAI-compatible endpoints (chat completions,
embeddings): https://developers.cloudflare.com/workers-ai/configuration/open-ai-compatibility/
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import aiohttp
import attrs
import orjson

from aiproxy.provider import (
    Capability,
    ChatRequest,
    ChatResponse,
    ConfigError,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ImageRequest,
    ImageResponse,
    ModelConfig,
    Parameters,
    Provider,
    RateLimitHint,
    StreamAssembler,
    UpstreamError,
    UpstreamResponse,
    assistant_message,
    bad_request,
    chat_completion,
    error_json,
    image_media_type,
    json_object,
    protocol_error,
    read_body,
)
from aiproxy_providers.cloudflare.models import FAMILIES, NATIVE, family_of, image_body
from aiproxy_providers.cloudflare.translate import (
    PROVIDER,
    Choice,
    chat_input,
    choices,
    cloudflare_error,
    endpoints,
    envelope_error,
    finish,
    tool_call,
    usage,
)
from aiproxy_providers.openai import OpenAIProvider

__all__ = ["DEFAULT_URL", "CloudflareOptions", "CloudflareProvider"]

DEFAULT_URL = "https://api.cloudflare.com/client/v4"


@attrs.frozen
class CloudflareOptions:
    """``options:`` of a Workers AI model."""

    # Required unless url: already holds ".../accounts/<id>/ai/run" (or ".../ai/v1").
    account_id: str | None = None
    # The input schema family of a model the family table does not know: native, vision or
    # chat-completions.
    family: str | None = None


class _OpenAICompatible(OpenAIProvider):
    """Workers AI's ``.../ai/v1`` endpoint: the OpenAI plugin, reading Cloudflare's envelope
    errors (``{"errors": [...]}``) with Workers AI's codes."""

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        parsed = error_json(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("errors"), list):
            message, code = envelope_error(parsed)
            return cloudflare_error(status, message, code, headers)
        return super().error_from_response(status, body, headers)


class CloudflareProvider(Provider):
    """Workers AI text generation, embeddings (OpenAI-compatible endpoint) and text-to-image."""

    plugin_api_version = 2
    capabilities = frozenset({Capability.CHAT, Capability.EMBEDDINGS, Capability.IMAGES})
    default_url = DEFAULT_URL
    options_type = CloudflareOptions
    #: The native family's; each model takes its own family's (``family_parameters``). With an
    #: ``/ai/v1`` url, requests go to the OpenAI-compatible endpoint as sent.
    chat_parameters = NATIVE.parameters
    #: Every family's declaration, by family name (docs/providers/cloudflare.md prints them).
    family_parameters: ClassVar[Mapping[str, Parameters]] = {
        name: family.parameters for name, family in FAMILIES.items()}

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(model, session)
        if not model.token:
            raise ConfigError([f"{model.name}: token: required (a Cloudflare API token with "
                               "Workers AI permission)"])
        options: CloudflareOptions = self.options
        ends = endpoints(model, options.account_id, self.url)
        # Model ids keep their "@cf/..." form; the path takes them unescaped.
        self._model_id = ends.model_in_url or self.upstream_model
        self._run_url = f"{ends.run_base}/{self._model_id}"
        if options.family is not None and options.family not in FAMILIES:
            raise ConfigError([f"{model.name}: options.family: expected one of "
                               f"{', '.join(FAMILIES)}"])
        self._family = FAMILIES[options.family] if options.family else family_of(
            self._model_id)
        self._compat_chat = ends.compat_chat
        self._compat: _OpenAICompatible | None = None
        if ends.compat_base:
            self._compat = _OpenAICompatible(attrs.evolve(
                model, provider="openai", url=ends.compat_base, options={},
                upstream_model=self._model_id), session)
            self._compat.rate_limit_listener = self._pass_rate_limit

    def _pass_rate_limit(self, hint: RateLimitHint) -> None:
        if self.rate_limit_listener is not None:
            self.rate_limit_listener(hint)

    # --- HTTP ---------------------------------------------------------------------------

    async def _post(self, body: bytes, accept: str) -> UpstreamResponse:
        return await self.send("POST", self._run_url, data=body, headers={
            "Authorization": f"Bearer {self.model.token}", "Content-Type": "application/json",
            "Accept": accept})

    def error_from_response(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError:
        parsed = error_json(body)
        message, code = envelope_error(parsed) if isinstance(parsed, dict) else ("", None)
        return cloudflare_error(status, message, code, headers)

    def _in_answer_error(self, message: str, code: int | None,
                         headers: Mapping[str, str]) -> UpstreamError:
        """An error inside a 200 answer or stream: ``send`` did not see it, so redact here."""
        err = cloudflare_error(200, message, code, headers)
        err.message = self.redact(err.message)
        return err

    def _result(self, raw: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """The ``result`` of a 2xx envelope; ``success: false`` is an error, never an answer."""
        data = json_object(raw, provider=PROVIDER)
        message, code = envelope_error(data)
        if data.get("success") is False or (message and not data.get("result")):
            raise self._in_answer_error(message, code, headers)
        result = data.get("result", data if "response" in data else None)
        if not isinstance(result, dict):
            raise protocol_error("Workers AI answered without a result")
        return result

    # --- chat ---------------------------------------------------------------------------

    def _chat_body(self, request: ChatRequest, stream: bool) -> tuple[bytes, int | None]:
        body, limit = chat_input(request.body, self._family, self._model_id, stream=stream,
                                 include_usage=request.include_usage)
        return orjson.dumps(body), limit

    async def chat(self, request: ChatRequest) -> ChatResponse:
        if self._compat_chat and self._compat is not None:
            return await self._compat.chat(request)
        body, limit = self._chat_body(request, stream=False)
        resp = await self._post(body, "application/json")
        result = self._result(await read_body(resp, provider=PROVIDER), resp.headers)
        answer = choices(result)
        answer_usage = usage(result.get("usage"))
        out = []
        for choice in answer:
            item: dict[str, Any] = {
                "index": choice.index,
                "message": assistant_message(choice.content or "", choice.calls),
                "finish_reason": finish(choice.finish, bool(choice.calls),
                                        answer_usage if len(answer) == 1 else None, limit)}
            if choice.logprobs is not None:
                item["logprobs"] = choice.logprobs
            out.append(item)
        return ChatResponse(chat_completion(self.model.name, out, answer_usage))

    def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        if self._compat_chat and self._compat is not None:
            return self._compat.stream(request)
        return self._native_stream(request)

    async def _native_stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        body, limit = self._chat_body(request, stream=True)
        resp = await self._post(body, "text/event-stream")
        out = StreamAssembler(self.model.name, include_usage=request.include_usage,
                              provider=PROVIDER, logprobs=bool(request.body.get("logprobs")))
        finishes: dict[int, Any] = {}  # each choice's upstream finish reason, for the end
        if resp.content_type == "application/json":
            # Answered whole: a model that does not stream, or success:false on a 200.
            result = self._result(await read_body(resp, provider=PROVIDER), resp.headers)
            out.usage = usage(result.get("usage"))
            for choice in choices(result):
                for chunk in self._choice_chunks(out, choice):
                    yield chunk
                finishes[choice.index] = choice.finish
        else:
            async with out.read(resp, end="[DONE]") as events:
                async for event in events:
                    message, code = envelope_error(event.data)
                    if message or event.data.get("success") is False:
                        raise self._in_answer_error(message, code, resp.headers)
                    for chunk in self._event_chunks(out, event.data, finishes):
                        yield chunk
        # Every choice's finish reason at the end: a native answer cut by the token budget
        # says so only through its usage (translate.finish).
        indexes = sorted({*out.open_choices, *finishes}) or [0]
        for index in indexes:
            reason = finish(finishes.get(index), out.has_tool_calls(index),
                            out.usage if len(indexes) == 1 else None, limit)
            for chunk in out.finish(reason, index):
                yield chunk
        for chunk in out.end():
            yield chunk

    @staticmethod
    def _choice_chunks(out: StreamAssembler, choice: Choice) -> list[dict[str, Any]]:
        """A whole choice (an answer not streamed): its text, then its calls."""
        chunks = out.text(choice.content or "", choice.index)
        for call in choice.calls:
            fn = call["function"]
            chunks += out.tool_call(fn["name"], fn["arguments"], id=call["id"],
                                    index=choice.index)
        return chunks

    @staticmethod
    def _event_chunks(out: StreamAssembler, data: Mapping[str, Any],
                      finishes: dict[int, Any]) -> list[dict[str, Any]]:
        out.usage = usage(data.get("usage")) or out.usage
        raw_choices = data.get("choices")
        if not isinstance(raw_choices, list):  # native: {"response", "tool_calls"?}
            response = data.get("response")
            calls = data.get("tool_calls") or []
            if not isinstance(response, str) and not calls:
                return []
            return CloudflareProvider._choice_chunks(out, Choice(
                0, response if isinstance(response, str) else "",
                [tool_call(c) for c in calls], None))
        chunks: list[dict[str, Any]] = []
        for k, choice in enumerate(raw_choices):  # OpenAI-shaped chunks from newer models
            if not isinstance(choice, dict):
                raise protocol_error("Workers AI sent a malformed stream choice")
            index = choice.get("index")
            index = index if isinstance(index, int) else k
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) or choice.get("logprobs") is not None:
                chunks += out.text(content if isinstance(content, str) else "", index,
                                   logprobs=choice.get("logprobs"))
            for raw in delta.get("tool_calls") or ():
                if not isinstance(raw, dict):
                    raise protocol_error("Workers AI sent a malformed tool call")
                fn = raw["function"] if isinstance(raw.get("function"), dict) else {}
                args = fn.get("arguments")
                args = args if isinstance(args, str) else "" if args is None \
                    else orjson.dumps(args).decode()
                key = raw.get("index") if isinstance(raw.get("index"), int) else None
                chunks += out.tool_call_delta(key, id=raw.get("id"), name=fn.get("name"),
                                              arguments=args, index=index)
            if choice.get("finish_reason"):
                finishes[index] = choice["finish_reason"]
        return chunks

    # --- embeddings ---------------------------------------------------------------------

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        # Embedding models are served OpenAI-shaped at the account's .../ai/v1/embeddings.
        if self._compat is None:
            raise bad_request("Workers AI embeddings go to the account's OpenAI-compatible "
                              "endpoint, which an AI Gateway url does not name: configure "
                              "https://api.cloudflare.com/client/v4/accounts/<id>/ai/v1 as "
                              "url:", param="model")
        # Floats always: the core encodes base64 for a client that asked, and Cloudflare's
        # page does not promise encoding_format.
        body = {k: v for k, v in request.body.items() if k != "encoding_format"}
        return await self._compat.embeddings(EmbeddingsRequest(body=body,
                                                               raw=orjson.dumps(body)))

    # --- images -------------------------------------------------------------------------

    async def images(self, request: ImageRequest) -> ImageResponse:
        body = image_body(request.body, self._model_id)
        resp = await self._post(orjson.dumps(body), "image/*, application/json")
        media_type = resp.content_type
        raw = await read_body(resp, provider=PROVIDER)
        if media_type.startswith("image/"):
            # Stable diffusion models answer the PNG itself, not JSON.
            return ImageResponse(images=((raw, image_media_type(raw) or media_type),))
        image = self._result(raw, resp.headers).get("image")
        if not isinstance(image, str) or not image:
            raise protocol_error("Workers AI answered without an image")
        try:
            data = base64.b64decode(image, validate=True)
        except ValueError:
            raise protocol_error("Workers AI sent an image that is not valid base64") from None
        return ImageResponse(images=((data, image_media_type(data) or "application/octet-stream"),))
