"""Cloudflare Workers AI: its native REST API ``POST .../accounts/{id}/ai/run/{model}``, or its
OpenAI-compatible endpoint ``.../accounts/{id}/ai/v1/...`` when ``url:`` names that.

Native text models take OpenAI-like ``messages`` and answer ``{"result": {"response": ...}}``
inside Cloudflare's API envelope (``success``, ``errors``, ``messages``); newer models answer the
OpenAI shape inside it. What each model reads is decided by its family in ``_FAMILY_OF``.
Text-to-image models answer a base64 image in the envelope, or raw image bytes.

Cloudflare's documentation, which the behaviour below follows:

* REST API: https://developers.cloudflare.com/workers-ai/get-started/rest-api/
* each model's input/output schema: https://developers.cloudflare.com/workers-ai/models/<model>/
* streaming: ``"stream": true`` on the same model pages; the answer is SSE events ending with
  ``data: [DONE]``
* JSON mode: https://developers.cloudflare.com/workers-ai/features/json-mode/
* errors: https://developers.cloudflare.com/workers-ai/platform/errors/
* AI Gateway url form: https://developers.cloudflare.com/ai-gateway/providers/workersai/
* OpenAI-compatible endpoints (chat completions, embeddings):
  https://developers.cloudflare.com/workers-ai/configuration/open-ai-compatibility/
"""

from __future__ import annotations

import base64
import binascii
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
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorKind,
    ImageRequest,
    ImageResponse,
    ModelConfig,
    Provider,
    RateLimitHint,
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
from aiproxy_providers.openai import OpenAIProvider

__all__ = ["CloudflareOptions", "CloudflareProvider"]

DEFAULT_URL = "https://api.cloudflare.com/client/v4"
_MODELS = "https://developers.cloudflare.com/workers-ai/models/"

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


# --- What each model reads ---------------------------------------------------------------

@attrs.frozen
class _Family:
    """What a family of Workers AI text models reads, as its model pages' input schema says."""

    name: str
    page: str  # a model page whose schema shows it
    # The OpenAI Chat Completions schema: stop, n, logprobs, top_logprobs, logit_bias, every
    # tool_choice, and OpenAI's response_format ({name, schema, strict}) as it is.
    openai_schema: bool
    # One top-level ``image`` (its bytes as integers 0-255) beside string contents, instead of
    # OpenAI image_url parts.
    top_level_image: bool = False
    # The schema's max_tokens default: an answer that used all of it was cut.
    default_max_tokens: int | None = 256


# llama-3.x, mistral, qwen, gemma-3, llama-4...: no stop, n, logprobs or forced tool_choice;
# response_format.json_schema is the JSON schema itself (features/json-mode/).
_NATIVE = _Family("native", _MODELS + "llama-3.3-70b-instruct-fp8-fast/", openai_schema=False)
_VISION = _Family("vision", _MODELS + "llama-3.2-11b-vision-instruct/", openai_schema=False,
                 top_level_image=True)
# These answer max_tokens cuts with finish_reason "length" themselves.
_CHAT_COMPLETIONS = _Family("chat-completions", _MODELS + "glm-4.7-flash/", openai_schema=True,
                           default_max_tokens=None)
_FAMILIES = {f.name: f for f in (_NATIVE, _VISION, _CHAT_COMPLETIONS)}

# Model id (after its last "/") prefix -> family, first match wins; any other model is native,
# and options.family overrides. Each line was read off the model page named beside it.
_FAMILY_OF: tuple[tuple[str, _Family], ...] = (
    ("llama-3.2-11b-vision-instruct", _VISION),  # models/llama-3.2-11b-vision-instruct/
    ("glm-", _CHAT_COMPLETIONS),  # models/glm-4.7-flash/, models/glm-5.3/
    ("kimi-k2", _CHAT_COMPLETIONS),  # models/kimi-k2.5/, models/kimi-k2.6/
    ("gemma-4", _CHAT_COMPLETIONS),  # models/gemma-4-26b-a4b-it/
    ("nemotron-3", _CHAT_COMPLETIONS),  # models/nemotron-3-120b-a12b/
    ("deepseek-v4", _CHAT_COMPLETIONS),  # models/deepseek-v4-flash-0731/
    ("qwen3.8", _CHAT_COMPLETIONS),  # models/qwen3.8-27b/
)


def _family_of(model_id: str) -> _Family:
    name = model_id.rsplit("/", 1)[-1]
    return next((fam for prefix, fam in _FAMILY_OF if name.startswith(prefix)), _NATIVE)


@attrs.frozen
class _ImageModel:
    """The inputs of one text-to-image model, as its model page's input schema lists them."""

    page: str
    # Inputs besides ``prompt`` a client may send (extra_body), each with the schema's maximum
    # where it has one. The schemas refuse any other key.
    inputs: Mapping[str, int | None]
    # The bounds of width and height; None: the model takes no size and picks its own.
    size: tuple[int, int] | None


_SD_INPUTS: Mapping[str, int | None] = {"negative_prompt": None, "num_steps": 20,
                                        "guidance": None, "seed": None}
_IMAGE_MODELS = {
    "flux-1-schnell": _ImageModel(_MODELS + "flux-1-schnell/", {"steps": 8}, None),
    "stable-diffusion-xl-base-1.0": _ImageModel(_MODELS + "stable-diffusion-xl-base-1.0/",
                                                _SD_INPUTS, (256, 2048)),
    "stable-diffusion-xl-lightning": _ImageModel(_MODELS + "stable-diffusion-xl-lightning/",
                                                 _SD_INPUTS, (256, 2048)),
    "dreamshaper-8-lcm": _ImageModel(_MODELS + "dreamshaper-8-lcm/", _SD_INPUTS, (256, 2048)),
    "lucid-origin": _ImageModel(_MODELS + "lucid-origin/", {
        "guidance": None, "seed": None, "num_steps": 40, "steps": 40}, (0, 2500)),
    "phoenix-1.0": _ImageModel(_MODELS + "phoenix-1.0/", {
        "guidance": None, "seed": None, "num_steps": 50, "negative_prompt": None}, (0, 2048)),
}
# A model the table does not know gets what the client sent of these, and size as width/height.
_ANY_IMAGE_MODEL = _ImageModel(_MODELS, dict.fromkeys(
    ("steps", "num_steps", "guidance", "negative_prompt", "seed")), (0, 1 << 16))


@attrs.frozen
class CloudflareOptions:
    """``options:`` of a Workers AI model."""

    # Required unless url: already holds ".../accounts/<id>/ai/run" (or ".../ai/v1").
    account_id: str | None = None
    # The input schema family of a model _FAMILY_OF does not know: native, vision or
    # chat-completions.
    family: str | None = None


def _bad_request(param: str, message: str) -> UpstreamError:
    return UpstreamError(ErrorKind.BAD_REQUEST, message, status=400,
                         code="unsupported_parameter", param=param)


def _protocol(message: str) -> UpstreamError:
    return UpstreamError(ErrorKind.PROTOCOL, message)


@attrs.frozen
class _Endpoints:
    run_base: str  # ".../ai/run": model ids are appended
    model_in_url: str | None  # a model id an old run url ends with
    compat_base: str | None  # ".../ai/v1", the account's OpenAI-compatible endpoint
    compat_chat: bool  # url: named the OpenAI-compatible endpoint: chat goes there


def _endpoints(model: ModelConfig, opts: CloudflareOptions, url: str) -> _Endpoints:
    url = url.rstrip("/")
    for marker in ("/ai/v1", "/ai/run"):
        head, found, tail = url.partition(marker)
        if not found:
            continue
        if opts.account_id and f"/accounts/{opts.account_id}/" not in head + "/":
            raise ConfigError([f"{model.name}: options.account_id does not match the account "
                               "in url:"])
        if marker == "/ai/v1":  # what follows (/chat/completions, /embeddings) is ours to add
            return _Endpoints(head + "/ai/run", None, head + marker, compat_chat=True)
        # An old config may give the whole run url, model id included.
        return _Endpoints(head + marker, tail.strip("/") or None, head + "/ai/v1", False)
    if url.endswith("/workers-ai"):
        # AI Gateway: https://gateway.ai.cloudflare.com/v1/{account}/{gateway}/workers-ai/{model}
        return _Endpoints(url, None, None, compat_chat=False)
    if not opts.account_id:
        raise ConfigError([f"{model.name}: options.account_id: required unless url: is the "
                           "https://api.cloudflare.com/client/v4/accounts/<id>/ai/run/ base"])
    account = f"{url}/accounts/{opts.account_id}"
    return _Endpoints(f"{account}/ai/run", None, f"{account}/ai/v1", compat_chat=False)


# --- Request translation -----------------------------------------------------------------

def _image_bytes(url: Any, where: str) -> list[int]:
    """A ``data:<mime>;base64,...`` image as the integer array llama-3.2-vision's ``image``
    takes (its schema: "an array of integers ... 8-bit unsigned integer values")."""
    head, sep, data = url.partition(",") if isinstance(url, str) else ("", "", "")
    if not (sep and head.startswith("data:") and head.endswith(";base64")):
        raise _bad_request("messages", f"{where}: this Workers AI model takes images as data: "
                           "URLs (data:image/png;base64,...), not http(s) URLs")
    try:
        return list(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        raise _bad_request("messages", f"{where}: the image is not valid base64") from None


def _messages(messages: Any, family: _Family) -> tuple[list[Any], list[int] | None]:
    """OpenAI messages as Workers AI takes them, and a vision-family model's top-level image."""
    if not isinstance(messages, list) or not messages:
        raise _bad_request("messages", "messages: expected a non-empty list")
    out: list[Any] = []
    image: list[int] | None = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad_request("messages", f"messages[{i}]: expected an object")
        if msg.get("role") == "developer":
            # OpenAI's newer name for system (platform.openai.com/docs/api-reference/chat);
            # the Workers AI schemas name the role system.
            msg = {**msg, "role": "system"}
        content = msg.get("content")
        if content is None:
            # OpenAI allows null content beside tool_calls; the schemas want a string.
            msg = {**msg, "content": ""}
        elif isinstance(content, list):
            texts, images = [], []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    texts.append(str(part.get("text") or ""))
                elif kind == "image_url" and family.top_level_image:
                    url = part.get("image_url")
                    images.append(_image_bytes(url.get("url") if isinstance(url, dict) else url,
                                               f"messages[{i}].content[{j}]"))
                elif family.top_level_image:
                    raise _bad_request("messages", f"messages[{i}].content[{j}]: this model "
                                       "takes text and image_url parts")
                else:
                    break  # image parts stay for the models that read OpenAI's parts
            else:
                if images and (image is not None or len(images) > 1):
                    raise _bad_request("messages", "this Workers AI model takes one image a "
                                       "request")
                image = images[0] if images else image
                msg = {**msg, "content": "\n".join(texts)}
        out.append(msg)
    return out, image


def _response_format(fmt: Any, family: _Family) -> dict[str, Any] | None:
    """JSON mode: https://developers.cloudflare.com/workers-ai/features/json-mode/."""
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if family.openai_schema:
        return fmt  # the OpenAI shape is the one these models' schema declares
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] != "json_schema":
        raise _bad_request("response_format", "response_format.type: expected text, "
                           "json_object or json_schema")
    spec = fmt.get("json_schema")
    # OpenAI wraps the schema as {name, schema, strict}; native models read json_schema as the
    # JSON schema itself. A client that sent the bare schema keeps it.
    if isinstance(spec, dict) and isinstance(spec.get("schema"), dict) \
            and "properties" not in spec:
        spec = spec["schema"]
    return {"type": "json_schema", "json_schema": spec}


# Sent as they are when the client sets them: every family's schema has them. top_k and
# repetition_penalty are Workers AI's own.
_SAMPLING = ("temperature", "top_p", "top_k", "seed", "repetition_penalty",
             "frequency_penalty", "presence_penalty")
# Only the OpenAI-schema family takes these (e.g. models/glm-4.7-flash/).
_OPENAI_ONLY = ("stop", "n", "logprobs", "top_logprobs", "logit_bias", "tool_choice",
                "parallel_tool_calls", "reasoning_effort", "max_tokens", "max_completion_tokens")


def _native_refusals(body: Mapping[str, Any], model_id: str) -> None:
    """400 for what a model without the OpenAI schema has no input for."""
    # The model's own page: https://developers.cloudflare.com/workers-ai/models/<name>/.
    page = f"{_MODELS}{model_id.rsplit('/', 1)[-1]}/"
    why = f"{model_id}'s input schema ({page}) has no such input"
    if body.get("n") not in (None, 1):
        raise _bad_request("n", f"n must be 1: {why}")
    if body.get("stop"):
        raise _bad_request("stop", f"stop sequences: {why}")
    if body.get("logprobs") or body.get("top_logprobs") is not None:
        raise _bad_request("logprobs", f"log probabilities: {why}")
    if body.get("logit_bias"):
        raise _bad_request("logit_bias", f"logit_bias: {why}")
    if body.get("tool_choice") not in (None, "auto", "none"):
        raise _bad_request("tool_choice", f"tool_choice may be auto or none: {why}; the model "
                           "decides on tool use itself")


# --- Answer translation ------------------------------------------------------------------

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


def _count(raw: Mapping[str, Any], *path: str) -> int | None:
    value: Any = raw
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _usage(raw: Any) -> dict[str, Any] | None:
    """Workers AI's usage; the OpenAI-schema models also report cached and reasoning tokens
    (models/glm-4.7-flash/ output schema), which are carried over."""
    if not isinstance(raw, dict):
        return None
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": int(raw.get("total_tokens") or prompt + completion)}
    cached = _count(raw, "prompt_tokens_details", "cached_tokens")
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    reasoning = _count(raw, "completion_tokens_details", "reasoning_tokens")
    if reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def _finish(upstream: Any, called: bool, usage: Mapping[str, Any] | None,
            limit: int | None) -> str:
    if upstream in ("length", "content_filter"):
        return str(upstream)
    if called:
        return "tool_calls"
    if isinstance(upstream, str) and upstream:
        return upstream
    # A native answer says nothing of truncation: one that used the whole budget (the client's,
    # or the schema's default of 256) was cut by it.
    if limit and usage and usage["completion_tokens"] >= limit:
        return "length"
    return "stop"


@attrs.frozen
class _Choice:
    index: int
    content: Any
    calls: list[dict[str, Any]]
    finish: Any
    logprobs: Any = None


def _choices(result: Mapping[str, Any]) -> list[_Choice]:
    """The choices of a text ``result``: the OpenAI shape newer models answer, or the native
    ``{response, tool_calls}``."""
    choices = result.get("choices")
    if isinstance(choices, list) and choices:
        out = []
        for k, choice in enumerate(choices):
            if not isinstance(choice, dict):
                raise _protocol("Workers AI sent a malformed choice")
            message = choice.get("message") or {}
            index = choice.get("index")
            out.append(_Choice(index if isinstance(index, int) else k, message.get("content"),
                               [_tool_call(c) for c in message.get("tool_calls") or []],
                               choice.get("finish_reason"), choice.get("logprobs")))
        return out
    response = result.get("response")
    calls = [_tool_call(c) for c in result.get("tool_calls") or []]
    if response is None and not calls:
        raise _protocol("Workers AI answered without a response")
    if response is not None and not isinstance(response, str):
        response = orjson.dumps(response).decode()  # JSON mode answers an object
    return [_Choice(0, response, calls, None)]


@attrs.define
class _ChoiceState:
    role_sent: bool = False
    finish: Any = None
    calls: int = 0  # tool calls so far; the next one's index
    by_index: dict[int, int] = attrs.field(factory=dict)  # upstream tool-call index -> ours


class _Stream:
    """The chunks of one streamed answer: per choice the opening role, tool-call indexes and
    the finish reason; the usage; the end."""

    def __init__(self, chunks: StreamChunks) -> None:
        self.chunks = chunks
        self.states: dict[int, _ChoiceState] = {}
        self.usage: dict[str, Any] | None = None

    def _state(self, index: int) -> _ChoiceState:
        return self.states.setdefault(index, _ChoiceState())

    def emit(self, index: int, content: Any, calls: list[dict[str, Any]],
             logprobs: Any = None) -> list[dict[str, Any]]:
        state = self._state(index)
        delta: dict[str, Any] = {} if state.role_sent else {"role": "assistant"}
        if isinstance(content, str) and (content or not state.role_sent):
            delta["content"] = content
        if calls:
            delta["tool_calls"] = calls
        logprobs = logprobs if self.chunks.logprobs else None  # only for a client that asked
        if "content" not in delta and "tool_calls" not in delta and logprobs is None:
            return []
        state.role_sent = True
        chunk = self.chunks.chunk(delta, index=index)
        if logprobs is not None:
            chunk["choices"][0]["logprobs"] = logprobs
        return [chunk]

    def whole_calls(self, index: int, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Complete calls (native events, or an answer given whole): one new index each."""
        state = self._state(index)
        out = [{"index": state.calls + k, **c} for k, c in enumerate(calls)]
        state.calls += len(calls)
        return out

    def fragments(self, index: int, raw_calls: Any) -> list[dict[str, Any]]:
        """OpenAI-shaped tool-call deltas: the first fragment of an upstream index opens a call
        (id, name); later ones only add to its arguments, under the same index."""
        state = self._state(index)
        out: list[dict[str, Any]] = []
        for raw in raw_calls if isinstance(raw_calls, list) else ():
            if not isinstance(raw, dict):
                raise _protocol("Workers AI sent a malformed tool call")
            fn: dict[str, Any] = raw["function"] if isinstance(raw.get("function"), dict) \
                else {}
            args = fn.get("arguments")
            args = args if isinstance(args, str) else "" if args is None \
                else orjson.dumps(args).decode()
            upstream = raw.get("index")
            ours = state.by_index.get(upstream) if isinstance(upstream, int) else None
            if ours is None and upstream is None and state.calls and not (
                    raw.get("id") or fn.get("name")):
                ours = state.calls - 1  # an unindexed continuation of the last call
            if ours is not None:
                if args:
                    out.append({"index": ours, "function": {"arguments": args}})
                continue
            ours, state.calls = state.calls, state.calls + 1
            if isinstance(upstream, int):
                state.by_index[upstream] = ours
            out.append({"index": ours, "id": raw.get("id") or tool_call_id(), "type": "function",
                        "function": {"name": str(fn.get("name") or ""), "arguments": args}})
        return out

    def event(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        self.usage = _usage(data.get("usage")) or self.usage
        choices = data.get("choices")
        if not isinstance(choices, list):  # native: {"response", "tool_calls"?}
            response = data.get("response")
            calls = self.whole_calls(0, [_tool_call(c) for c in data.get("tool_calls") or []])
            return self.emit(0, response if isinstance(response, str) else None, calls)
        out: list[dict[str, Any]] = []
        for k, choice in enumerate(choices):  # OpenAI-shaped chunks from newer models
            if not isinstance(choice, dict):
                raise _protocol("Workers AI sent a malformed stream choice")
            index = choice.get("index")
            index = index if isinstance(index, int) else k
            delta = choice.get("delta") or {}
            calls = self.fragments(index, delta.get("tool_calls"))
            out += self.emit(index, delta.get("content"), calls, choice.get("logprobs"))
            if choice.get("finish_reason"):
                self._state(index).finish = choice["finish_reason"]
        return out

    def end(self, limit: int | None, include_usage: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for index in sorted(self.states) or [0]:
            state = self._state(index)
            if not state.role_sent:
                out.append(self.chunks.role(index))
            usage = self.usage if len(self.states) <= 1 else None
            out.append(self.chunks.chunk({}, _finish(state.finish, state.calls > 0, usage,
                                                     limit), index=index))
        if include_usage and self.usage is not None:
            out.append(self.chunks.usage(self.usage))
        return out


# --- Errors ------------------------------------------------------------------------------

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


def _cloudflare_error(status: int, message: str, code: int | None,
                      headers: Mapping[str, str]) -> UpstreamError:
    text = f"Workers AI: {message or f'upstream answered HTTP {status}'}"
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


class _OpenAICompatible(OpenAIProvider):
    """Workers AI's ``.../ai/v1`` endpoint: the OpenAI plugin, reading Cloudflare's envelope
    errors (``{"errors": [...]}``) with Workers AI's codes."""

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("errors"), list):
            message, code = _envelope_error(parsed)
            return _cloudflare_error(status, message, code, headers)
        return super().error_from_response(status, body, headers)


# --- The provider ------------------------------------------------------------------------

class CloudflareProvider(Provider):
    """Workers AI text generation, embeddings (OpenAI-compatible endpoint) and text-to-image."""

    capabilities = frozenset({Capability.CHAT, Capability.EMBEDDINGS, Capability.IMAGES})
    default_url = DEFAULT_URL
    options_type = CloudflareOptions

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(model, session)
        if not model.token:
            raise ConfigError([f"{model.name}: token: required (a Cloudflare API token with "
                               "Workers AI permission)"])
        options: CloudflareOptions = self.options
        ends = _endpoints(model, options, self.url)
        # Model ids keep their "@cf/..." form; the path takes them unescaped.
        self._model_id = ends.model_in_url or self.upstream_model
        self._run_url = f"{ends.run_base}/{self._model_id}"
        if options.family is not None and options.family not in _FAMILIES:
            raise ConfigError([f"{model.name}: options.family: expected one of "
                               f"{', '.join(_FAMILIES)}"])
        self._family = _FAMILIES[options.family] if options.family else _family_of(
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

    async def _post(self, body: bytes, accept: str) -> aiohttp.ClientResponse:
        return await self.send("POST", self._run_url, data=body, headers={
            "Authorization": f"Bearer {self.model.token}", "Content-Type": "application/json",
            "Accept": accept})

    @staticmethod
    async def _read(resp: aiohttp.ClientResponse) -> bytes:
        try:
            return await resp.read()
        except (TimeoutError, aiohttp.ClientError):
            raise _protocol("Workers AI's answer was cut off") from None
        finally:
            resp.release()

    def error_from_response(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError:
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        message, code = _envelope_error(parsed) if isinstance(parsed, dict) else ("", None)
        return _cloudflare_error(status, message, code, headers)

    def _in_answer_error(self, message: str, code: int | None,
                         headers: Mapping[str, str]) -> UpstreamError:
        """An error inside a 200 answer or stream: ``send`` did not see it, so redact here."""
        err = _cloudflare_error(200, message, code, headers)
        err.message = self.redact(err.message)
        return err

    def _result(self, raw: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """The ``result`` of a 2xx envelope; ``success: false`` is an error, never an answer."""
        data = _json_object(raw, "answer")
        message, code = _envelope_error(data)
        if data.get("success") is False or (message and not data.get("result")):
            raise self._in_answer_error(message, code, headers)
        result = data.get("result", data if "response" in data else None)
        if not isinstance(result, dict):
            raise _protocol("Workers AI answered without a result")
        return result

    # --- chat ---------------------------------------------------------------------------

    def _chat_body(self, request: ChatRequest, stream: bool) -> tuple[bytes, int | None]:
        """The ``/ai/run`` input for an OpenAI request, and the token budget of the answer."""
        body, family = request.body, self._family
        messages, image = _messages(body.get("messages"), family)
        out: dict[str, Any] = {"messages": messages}
        if image is not None:
            out["image"] = image
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if family.openai_schema:
            out.update((k, body[k]) for k in _OPENAI_ONLY if body.get(k) is not None)
            if body.get("tools"):
                out["tools"] = body["tools"]
            if stream and request.include_usage:
                out["stream_options"] = {"include_usage": True}
        else:
            _native_refusals(body, self._model_id)
            if body.get("tools") and body.get("tool_choice") != "none":
                out["tools"] = body["tools"]  # the OpenAI tool shape is one the schemas take
            if max_tokens is not None:
                out["max_tokens"] = max_tokens
        out.update((k, body[k]) for k in _SAMPLING if body.get(k) is not None)
        fmt = _response_format(body.get("response_format"), family)
        if fmt is not None:
            out["response_format"] = fmt
        if stream:
            out["stream"] = True
        limit = max_tokens if isinstance(max_tokens, int) else family.default_max_tokens
        return orjson.dumps(out), limit

    async def chat(self, request: ChatRequest) -> ChatResponse:
        if self._compat_chat and self._compat is not None:
            return await self._compat.chat(request)
        body, limit = self._chat_body(request, stream=False)
        resp = await self._post(body, "application/json")
        result = self._result(await self._read(resp), resp.headers)
        choices = _choices(result)
        usage = _usage(result.get("usage"))
        out_choices = []
        for choice in choices:
            message: dict[str, Any] = {"role": "assistant", "content": choice.content or ""}
            if choice.calls:
                message["tool_calls"] = choice.calls
                message["content"] = choice.content or None
            finish = _finish(choice.finish, bool(choice.calls),
                             usage if len(choices) == 1 else None, limit)
            item: dict[str, Any] = {"index": choice.index, "message": message,
                                    "finish_reason": finish}
            if choice.logprobs is not None:
                item["logprobs"] = choice.logprobs
            out_choices.append(item)
        out: dict[str, Any] = {"id": completion_id(), "object": "chat.completion",
                               "created": int(time.time()), "model": self.model.name,
                               "choices": out_choices}
        if usage is not None:
            out["usage"] = usage
        return ChatResponse(data=out)

    def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        if self._compat_chat and self._compat is not None:
            return self._compat.stream(request)
        return self._native_stream(request)

    async def _native_stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        body, limit = self._chat_body(request, stream=True)
        resp = await self._post(body, "text/event-stream")
        state = _Stream(StreamChunks(self.model.name,
                                     logprobs=bool(request.body.get("logprobs"))))
        done = False
        try:
            if resp.content_type == "application/json":
                # Answered whole: a model that does not stream, or success:false on a 200.
                result = self._result(await self._read(resp), resp.headers)
                state.usage = _usage(result.get("usage"))
                done = True
                for choice in _choices(result):
                    calls = state.whole_calls(choice.index, choice.calls)
                    for chunk in state.emit(choice.index, choice.content or "", calls):
                        yield chunk
                    state.states[choice.index].finish = choice.finish
            else:
                try:
                    async for event in iter_sse(resp.content):
                        if event.data.strip() == b"[DONE]":
                            done = True
                            break
                        data = _json_object(event.data, "stream event")
                        message, code = _envelope_error(data)
                        if message or data.get("success") is False:
                            raise self._in_answer_error(message, code, resp.headers)
                        for chunk in state.event(data):
                            yield chunk
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    raise _protocol("Workers AI's stream was cut off") from None
                if not done:
                    raise _protocol("Workers AI's stream ended before [DONE]")
        finally:
            end_response(resp, complete=done)
        for chunk in state.end(limit, request.include_usage):
            yield chunk

    # --- embeddings ---------------------------------------------------------------------

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        # Embedding models are served OpenAI-shaped at the account's .../ai/v1/embeddings.
        if self._compat is None:
            raise _bad_request("model", "Workers AI embeddings go to the account's "
                               "OpenAI-compatible endpoint, which an AI Gateway url does not "
                               "name: configure https://api.cloudflare.com/client/v4/accounts/"
                               "<id>/ai/v1 as url:")
        # Floats always: the core encodes base64 for a client that asked, and Cloudflare's
        # page does not promise encoding_format.
        body = {k: v for k, v in request.body.items() if k != "encoding_format"}
        return await self._compat.embeddings(EmbeddingsRequest(body=body,
                                                               raw=orjson.dumps(body)))

    # --- images -------------------------------------------------------------------------

    def _image_body(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The input of a text-to-image model: what its schema (``_IMAGE_MODELS``) takes."""
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise _bad_request("prompt", "prompt: a non-empty string is required")
        # One image per call; n > 1 would multiply cost behind the limiter's back.
        if body.get("n") not in (None, 1):
            raise _bad_request("n", "Workers AI makes one image per request (n must be 1)")
        name = self._model_id.rsplit("/", 1)[-1]
        spec = _IMAGE_MODELS.get(name, _ANY_IMAGE_MODEL)
        out: dict[str, Any] = {"prompt": prompt}
        size = body.get("size")
        if size not in (None, "auto") and spec.size is not None:
            width, sep, height = str(size).partition("x")
            if not (sep and width.isdigit() and height.isdigit()):
                raise _bad_request("size", "size: expected WIDTHxHEIGHT, such as 1024x1024")
            low, high = spec.size
            if not (low <= int(width) <= high and low <= int(height) <= high):
                raise _bad_request("size", f"size: {name} makes images from {low} to {high} "
                                   f"pixels a side ({spec.page})")
            out["width"], out["height"] = int(width), int(height)
        # A model without width/height picks its own size: OpenAI clients send size by habit.
        for key in _ANY_IMAGE_MODEL.inputs:
            value = body.get(key)
            if value is None:
                continue
            if key not in spec.inputs:
                takes = ", ".join(["prompt", *spec.inputs])
                raise _bad_request(key, f"{key}: {name} takes only {takes} ({spec.page})")
            cap = spec.inputs[key]
            if cap is not None and not (isinstance(value, int) and 1 <= value <= cap):
                raise _bad_request(key, f"{key}: {name} takes 1 to {cap} ({spec.page})")
            out[key] = value
        return out

    async def images(self, request: ImageRequest) -> ImageResponse:
        body = self._image_body(request.body)
        resp = await self._post(orjson.dumps(body), "image/*, application/json")
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
