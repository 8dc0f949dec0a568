"""Cloudflare Workers AI through its native REST API: ``POST .../accounts/{id}/ai/run/{model}``.

Text models take OpenAI-like ``messages`` and answer ``{"result": {"response": ...}}`` inside
Cloudflare's API envelope (``success``, ``errors``, ``messages``); text-to-image models answer a
base64 image in the same envelope, or raw image bytes. The account's OpenAI-compatible endpoint
(``.../ai/v1/chat/completions``) needs no plugin: ``provider: openai`` with that url.

Cloudflare's documentation, which the behaviour below follows:

* REST API: https://developers.cloudflare.com/workers-ai/get-started/rest-api/
* text generation input/output (e.g.):
  https://developers.cloudflare.com/workers-ai/models/llama-3.1-8b-instruct/
* streaming: ``"stream": true`` on the same model pages; the answer is SSE
  ``data: {"response": ...}`` events ending with ``data: [DONE]``
* JSON mode (``response_format``): https://developers.cloudflare.com/workers-ai/json-mode
* text-to-image: https://developers.cloudflare.com/workers-ai/models/flux-1-schnell/
* errors: https://developers.cloudflare.com/workers-ai/platform/errors/
* AI Gateway url form: https://developers.cloudflare.com/ai-gateway/providers/workersai/
* OpenAI-compatible endpoint:
  https://developers.cloudflare.com/workers-ai/configuration/open-ai-compatibility
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import attrs
import orjson

from aiproxy.provider import (
    Capability,
    ChatRequest,
    ChatResponse,
    ConfigError,
    ErrorKind,
    ImageRequest,
    ImageResponse,
    ModelConfig,
    Provider,
    StreamChunks,
    UpstreamError,
    completion_id,
    end_response,
    error_from_status,
    image_media_type,
    iter_sse,
    parse_retry_after,
    tool_call_id,
)

__all__ = ["CloudflareOptions", "CloudflareProvider"]

DEFAULT_URL = "https://api.cloudflare.com/client/v4"

# Workers AI's internal error codes (platform/errors) where the HTTP status alone misleads.
_CODE_KINDS = {
    3036: ErrorKind.RATE_LIMITED,  # daily free allocation used up
    3040: ErrorKind.RATE_LIMITED,  # out of capacity: no data center left to forward to
    3007: ErrorKind.TIMEOUT,
    3008: ErrorKind.TIMEOUT,  # aborted
    3023: ErrorKind.AUTH,  # account blocked
    3041: ErrorKind.AUTH,  # account not allowed for a private model
    5016: ErrorKind.AUTH,  # model terms not agreed to
    5018: ErrorKind.AUTH,
    10000: ErrorKind.AUTH,  # the Cloudflare API's "Authentication error"
    3003: ErrorKind.BAD_REQUEST,
    3006: ErrorKind.BAD_REQUEST,  # request too large
    3042: ErrorKind.BAD_REQUEST,  # invalid model name
    5004: ErrorKind.BAD_REQUEST,
    5007: ErrorKind.BAD_REQUEST,  # no such model
}
_KIND_STATUS = {ErrorKind.RATE_LIMITED: 429, ErrorKind.TIMEOUT: 504, ErrorKind.AUTH: 502,
                ErrorKind.BAD_REQUEST: 400}
# Phrases of a prompt that does not fit the model (Workers AI has no dedicated code for it).
_CONTEXT_WORDS = ("context window", "context length", "context_length", "too many tokens",
                  "input is too long", "prompt is too long", "maximum context")


@attrs.frozen
class CloudflareOptions:
    """``options:`` of a Workers AI model."""

    # Required unless url: already holds ".../accounts/<id>/ai/run".
    account_id: str | None = None


def _bad_request(param: str, message: str) -> UpstreamError:
    return UpstreamError(ErrorKind.BAD_REQUEST, message, status=400,
                         code="unsupported_parameter", param=param)


def _protocol(message: str) -> UpstreamError:
    return UpstreamError(ErrorKind.PROTOCOL, message)


def _run_base(model: ModelConfig, opts: CloudflareOptions, url: str) -> tuple[str, str | None]:
    """The ``.../ai/run`` base to append model ids to, and a model id the url may end with."""
    url = url.rstrip("/")
    if "/ai/v1" in url:
        raise ConfigError([f"{model.name}: url: {url} is Workers AI's OpenAI-compatible endpoint; "
                           "use provider: openai with it, or the .../ai/run/ base here"])
    head, marker, tail = url.partition("/ai/run")
    if marker:
        base = head + marker
        if opts.account_id and f"/accounts/{opts.account_id}/" not in base + "/":
            raise ConfigError([f"{model.name}: options.account_id does not match the account "
                               "in url:"])
        # An old config may give the whole run url, model id included.
        return base, tail.strip("/") or None
    if url.endswith("/workers-ai"):
        # AI Gateway: https://gateway.ai.cloudflare.com/v1/{account}/{gateway}/workers-ai/{model}
        return url, None
    if not opts.account_id:
        raise ConfigError([f"{model.name}: options.account_id: required unless url: is the "
                           "https://api.cloudflare.com/client/v4/accounts/<id>/ai/run/ base"])
    return f"{url}/accounts/{opts.account_id}/ai/run", None


def _messages(messages: Any) -> list[Any]:
    """OpenAI messages as Workers AI takes them: the same, with text-part lists flattened."""
    if not isinstance(messages, list) or not messages:
        raise _bad_request("messages", "messages: expected a non-empty list")
    out: list[Any] = []
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        # Text models declare content a string; a list of text parts says the same thing.
        # Other parts (images) are left for the vision models that take them.
        if isinstance(content, list) and all(
                isinstance(p, dict) and p.get("type") == "text" for p in content):
            msg = {**msg, "content": "\n".join(str(p.get("text") or "") for p in content)}
        elif isinstance(msg, dict) and content is None:
            # OpenAI allows null content beside tool_calls; Workers AI's input schema requires
            # a string on every message.
            msg = {**msg, "content": ""}
        out.append(msg)
    return out


def _tool_call(raw: Any) -> dict[str, Any]:
    """A Workers AI tool call (``{name, arguments: object}``, or OpenAI-shaped) → OpenAI."""
    if not isinstance(raw, dict):
        raise _protocol("Workers AI sent a malformed tool call")
    fn = raw.get("function")
    if not isinstance(fn, dict):
        fn = raw
    args = fn.get("arguments")
    arguments = args if isinstance(args, str) else orjson.dumps(args or {}).decode()
    return {"id": raw.get("id") or tool_call_id(), "type": "function",
            "function": {"name": str(fn.get("name") or ""), "arguments": arguments}}


def _usage(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(raw.get("total_tokens") or prompt + completion)}


def _finish(upstream: Any, called: bool, usage: dict[str, Any] | None,
            max_tokens: int | None) -> str:
    if called:
        return "tool_calls"
    if isinstance(upstream, str) and upstream:
        return upstream
    # The native API says nothing of truncation; an answer that used the whole budget the
    # client set was cut by it.
    if max_tokens and usage and usage["completion_tokens"] >= max_tokens:
        return "length"
    return "stop"


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _protocol(f"Workers AI sent a malformed {what} (not JSON)") from None
    if not isinstance(data, dict):
        raise _protocol(f"Workers AI sent a malformed {what} (not an object)")
    return data


def _envelope_error(data: Mapping[str, Any]) -> tuple[str, int | None]:
    """The message and first code of Cloudflare's ``{"errors": [{"code", "message"}]}``."""
    errors = data.get("errors")
    messages, code = [], None
    if isinstance(errors, list):
        for err in errors:
            if isinstance(err, dict):
                if err.get("message"):
                    messages.append(str(err["message"]))
                if code is None and isinstance(err.get("code"), int):
                    code = err["code"]
    elif isinstance(data.get("error"), str):  # some gateway and worker errors
        messages.append(data["error"])
    return "; ".join(messages), code


class CloudflareProvider(Provider):
    """Workers AI text generation and text-to-image models."""

    capabilities = frozenset({Capability.CHAT, Capability.IMAGES})
    default_url = DEFAULT_URL
    options_type = CloudflareOptions

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(model, session)
        if not model.token:
            raise ConfigError([f"{model.name}: token: required (a Cloudflare API token with "
                               "Workers AI permission)"])
        base, model_in_url = _run_base(model, self.options, self.url)
        # Model ids keep their "@cf/..." form; the path takes them unescaped.
        self._run_url = f"{base}/{model_in_url or self.upstream_model}"
        self._token = model.token

    # --- HTTP ---------------------------------------------------------------------------

    async def _post(self, body: bytes, accept: str) -> aiohttp.ClientResponse:
        return await self.send("POST", self._run_url, data=body, headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/json",
            "Accept": accept})

    @staticmethod
    async def _read(resp: aiohttp.ClientResponse) -> bytes:
        try:
            return await resp.read()
        except (TimeoutError, aiohttp.ClientError):
            raise _protocol("Workers AI's answer was cut off") from None
        finally:
            resp.release()

    def _error(self, status: int, message: str, code: int | None,
               headers: Mapping[str, str]) -> UpstreamError:
        message = (message or f"upstream answered HTTP {status}").replace(self._token, "***")
        text = f"Workers AI: {message}"
        if code is not None:
            text += f" (code {code})"
        if any(word in text.lower() for word in _CONTEXT_WORDS):
            return UpstreamError(ErrorKind.CONTEXT_LENGTH, text, status=400,
                                 code="context_length_exceeded", upstream_status=status)
        kind = _CODE_KINDS.get(code) if code is not None else None
        if kind is not None:
            out = status if kind is ErrorKind.BAD_REQUEST and 400 <= status < 500 \
                else _KIND_STATUS[kind]
            return UpstreamError(kind, text, status=out, code=str(code),
                                 retry_after=parse_retry_after(headers.get("retry-after")),
                                 upstream_status=status)
        if status < 300:
            # "success": false on a 200 with no code we know: not an answer, maybe transient.
            return UpstreamError(ErrorKind.OVERLOADED, text,
                                 code=str(code) if code is not None else None,
                                 upstream_status=status)
        return error_from_status(status, text, headers=headers,
                                 code=str(code) if code is not None else None)

    def error_from_response(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError:
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        message, code = _envelope_error(parsed) if isinstance(parsed, dict) else ("", None)
        return self._error(status, message, code, headers)

    def _result(self, raw: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """The ``result`` of a 2xx envelope; ``success: false`` is an error, never an answer."""
        data = _json_object(raw, "answer")
        message, code = _envelope_error(data)
        if data.get("success") is False or (message and not data.get("result")):
            raise self._error(200, message, code, headers)
        result = data.get("result", data if "response" in data else None)
        if not isinstance(result, dict):
            raise _protocol("Workers AI answered without a result")
        return result

    # --- chat ---------------------------------------------------------------------------

    def _chat_body(self, request: ChatRequest, stream: bool) -> tuple[bytes, int | None]:
        """The Workers AI input for an OpenAI request, and the max_tokens the client set."""
        body = request.body
        if body.get("n") not in (None, 1):
            raise _bad_request("n", "Workers AI returns one choice per request (n must be 1)")
        if body.get("stop"):
            raise _bad_request("stop", "Workers AI does not support stop sequences")
        if body.get("logprobs") or body.get("top_logprobs") is not None:
            raise _bad_request("logprobs", "Workers AI does not return log probabilities")
        if body.get("logit_bias"):
            raise _bad_request("logit_bias", "Workers AI does not support logit_bias")
        out: dict[str, Any] = {"messages": _messages(body.get("messages"))}
        choice = body.get("tool_choice")
        if choice not in (None, "auto", "none"):
            raise _bad_request("tool_choice", "Workers AI decides on tool use itself: "
                               "tool_choice may be auto or none")
        if body.get("tools") and choice != "none":
            out["tools"] = body["tools"]  # the OpenAI tool shape is one Workers AI accepts
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is not None:
            out["max_tokens"] = max_tokens
        # top_k and repetition_penalty are Workers AI's own; they pass when a client sends them.
        for key in ("temperature", "top_p", "top_k", "seed", "repetition_penalty",
                    "frequency_penalty", "presence_penalty"):
            if body.get(key) is not None:
                out[key] = body[key]
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
            out["response_format"] = fmt  # JSON mode; models without it answer 4xx
        if stream:
            out["stream"] = True
        return orjson.dumps(out), max_tokens if isinstance(max_tokens, int) else None

    @staticmethod
    def _answer(result: Mapping[str, Any]) -> tuple[Any, list[dict[str, Any]], Any]:
        """Content, OpenAI tool calls and upstream finish reason of a text ``result``."""
        choices = result.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            # Newer models answer /ai/run in the OpenAI shape already.
            message = choices[0].get("message") or {}
            calls = [_tool_call(c) for c in message.get("tool_calls") or []]
            return message.get("content"), calls, choices[0].get("finish_reason")
        response = result.get("response")
        calls = [_tool_call(c) for c in result.get("tool_calls") or []]
        if response is None and not calls:
            raise _protocol("Workers AI answered without a response")
        if response is not None and not isinstance(response, str):
            response = orjson.dumps(response).decode()  # JSON mode answers an object
        return response, calls, None

    async def chat(self, request: ChatRequest) -> ChatResponse:
        body, max_tokens = self._chat_body(request, stream=False)
        resp = await self._post(body, "application/json")
        result = self._result(await self._read(resp), resp.headers)
        content, calls, upstream_finish = self._answer(result)
        message: dict[str, Any] = {"role": "assistant", "content": content or ""}
        if calls:
            message["tool_calls"] = calls
            message["content"] = content or None
        usage = _usage(result.get("usage"))
        out: dict[str, Any] = {
            "id": completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model.name,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": _finish(upstream_finish, bool(calls), usage,
                                                  max_tokens)}],
        }
        if usage is not None:
            out["usage"] = usage
        return ChatResponse(data=out)

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        body, max_tokens = self._chat_body(request, stream=True)
        resp = await self._post(body, "text/event-stream")
        chunks = StreamChunks(self.model.name)
        done = role_sent = False
        calls = 0
        upstream_finish: Any = None
        usage: dict[str, Any] | None = None
        try:
            if resp.content_type == "application/json":
                # Answered whole: a model that does not stream, or success:false on a 200.
                result = self._result(await self._read(resp), resp.headers)
                content, tool_calls, upstream_finish = self._answer(result)
                usage = _usage(result.get("usage"))
                delta: dict[str, Any] = {"role": "assistant", "content": content or ""}
                if tool_calls:
                    delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(tool_calls)]
                calls, role_sent, done = len(tool_calls), True, True
                yield chunks.chunk(delta)
            else:
                try:
                    async for event in iter_sse(resp.content):
                        if event.data.strip() == b"[DONE]":
                            done = True
                            break
                        data = _json_object(event.data, "stream event")
                        message, code = _envelope_error(data)
                        if message or data.get("success") is False:
                            raise self._error(200, message, code, resp.headers)
                        usage = _usage(data.get("usage")) or usage
                        content, tool_calls, finish = self._stream_delta(data)
                        upstream_finish = finish or upstream_finish
                        delta = {}
                        if not role_sent:
                            delta["role"] = "assistant"
                        if isinstance(content, str) and (content or not role_sent):
                            delta["content"] = content
                        if tool_calls:
                            delta["tool_calls"] = [{"index": calls + k, **c}
                                                   for k, c in enumerate(tool_calls)]
                            calls += len(tool_calls)
                        if "content" in delta or "tool_calls" in delta:
                            role_sent = True
                            yield chunks.chunk(delta)
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    raise _protocol("Workers AI's stream was cut off") from None
                if not done:
                    raise _protocol("Workers AI's stream ended before [DONE]")
        finally:
            end_response(resp, complete=done)
        for chunk in chunks.end(_finish(upstream_finish, calls > 0, usage, max_tokens), usage,
                                include_usage=request.include_usage, role_sent=role_sent):
            yield chunk

    @staticmethod
    def _stream_delta(data: Mapping[str, Any]) -> tuple[Any, list[dict[str, Any]], Any]:
        """Content, complete tool calls and finish reason carried by one stream event."""
        choices = data.get("choices")
        if isinstance(choices, list):  # OpenAI-shaped chunks from newer models
            if not choices or not isinstance(choices[0], dict):
                return None, [], None
            delta = choices[0].get("delta") or {}
            calls = [_tool_call(c) for c in delta.get("tool_calls") or []]
            return delta.get("content"), calls, choices[0].get("finish_reason")
        response = data.get("response")
        calls = [_tool_call(c) for c in data.get("tool_calls") or []]
        return response if isinstance(response, str) else None, calls, None

    # --- images -------------------------------------------------------------------------

    async def images(self, request: ImageRequest) -> ImageResponse:
        body = request.body
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise _bad_request("prompt", "prompt: a non-empty string is required")
        # One image per call; n > 1 would multiply cost behind the limiter's back.
        if body.get("n") not in (None, 1):
            raise _bad_request("n", "Workers AI makes one image per request (n must be 1)")
        out: dict[str, Any] = {"prompt": prompt}
        size = body.get("size")
        if size not in (None, "auto"):
            width, sep, height = str(size).partition("x")
            if not (sep and width.isdigit() and height.isdigit()):
                raise _bad_request("size", "size: expected WIDTHxHEIGHT, such as 1024x1024")
            out["width"], out["height"] = int(width), int(height)
        # The models' own inputs (flux: steps; stable diffusion: num_steps, guidance, ...).
        for key in ("steps", "num_steps", "seed", "negative_prompt", "guidance"):
            if body.get(key) is not None:
                out[key] = body[key]
        resp = await self._post(orjson.dumps(out), "image/*, application/json")
        media_type = resp.content_type
        raw = await self._read(resp)
        if media_type.startswith("image/"):
            # Stable diffusion models answer the PNG itself, not JSON.
            return ImageResponse(images=((raw, image_media_type(raw) or media_type),))
        image = self._result(raw, resp.headers).get("image")
        if not isinstance(image, str) or not image:
            raise _protocol("Workers AI answered without an image")
        try:
            data = base64.b64decode(image, validate=True)
        except ValueError:
            raise _protocol("Workers AI sent an image that is not valid base64") from None
        return ImageResponse(images=((data, image_media_type(data) or "application/octet-stream"),))
