"""Cohere: OpenAI chat completions and embeddings over Cohere's Chat API v2 and Embed API v2.

Cohere's own API reference is the source of every shape translated here:

- Chat (request, response, finish reasons): https://docs.cohere.com/reference/chat
- Chat streaming events: https://docs.cohere.com/reference/chat-stream,
  https://docs.cohere.com/docs/streaming and https://docs.cohere.com/docs/tool-use-streaming
- Image content: https://docs.cohere.com/docs/image-inputs
- Structured outputs: https://docs.cohere.com/docs/structured-outputs
- Tool use: https://docs.cohere.com/docs/tool-use-overview
- Embed: https://docs.cohere.com/reference/embed
- Errors: https://docs.cohere.com/reference/errors
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
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
    ModelConfig,
    Provider,
    StreamChunks,
    UpstreamError,
    completion_id,
    embedding_base64,
    end_response,
    error_from_status,
    iter_sse,
    parse_retry_after,
    tool_call_id,
)

__all__ = ["CohereOptions", "CohereProvider"]

# https://docs.cohere.com/reference/embed#request.body.input_type ("image" is for image inputs,
# which an OpenAI embeddings request never carries).
_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
# https://docs.cohere.com/reference/chat#request.body.safety_mode
_SAFETY_MODES = ("CONTEXTUAL", "STRICT", "OFF")
#: Texts per Embed call: https://docs.cohere.com/reference/embed#request.body.texts ("Maximum
#: number of texts per call is 96").
EMBED_BATCH = 96


def _one_of(choices: tuple[str, ...]) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    """An attrs validator whose message reads well in a config error (``path: message``)."""

    def check(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(choices)} "
                             f"(got {value!r})")

    return check


@attrs.frozen
class CohereOptions:
    """A Cohere model's ``options:``."""

    #: What the embedded texts are for; Embed v3+ requires it.
    input_type: str = attrs.field(default="search_document", validator=_one_of(_INPUT_TYPES))
    #: Sent as ``safety_mode`` on chat requests; unset leaves Cohere's default (CONTEXTUAL).
    safety_mode: str | None = attrs.field(default=None, validator=_one_of(_SAFETY_MODES))


# https://docs.cohere.com/reference/chat#response.body.finish_reason. ERROR and TIMEOUT are not
# here: they raise (see _finish_reason). ERROR_TOXIC is the v1 name of a blocked answer, which
# some deployments still send.
_FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR_TOXIC": "content_filter",
}

# OpenAI parameters that would change the answer and that Cohere cannot honour: refused, not
# silently dropped. Harmless ones (user, metadata, store, stream_options, parallel_tool_calls,
# service_tier, prediction...) are ignored.
_REFUSED = {
    # v2 gives the log probability of each generated token, never the alternatives.
    "top_logprobs": "Cohere returns no alternative tokens; use logprobs alone",
    "logit_bias": "Cohere has no logit bias",
    "audio": "Cohere answers in text only",
    "functions": "use tools instead of the deprecated functions",
    "function_call": "use tool_choice instead of the deprecated function_call",
    "reasoning_effort": "not translated to Cohere",
    "web_search_options": "Cohere has no web search",
}

# Tokens shorter than this are not looked for in error messages: "k" would mangle every word.
_MIN_REDACTED_TOKEN = 8


def _bad_request(message: str, param: str) -> UpstreamError:
    return UpstreamError(ErrorKind.BAD_REQUEST, message, status=400, param=param)


def _dig(value: Any, *keys: str) -> Any:
    """``value[k1][k2]...`` or None when any level is missing or not an object."""
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _count(value: Any) -> int | None:
    # Cohere's documented stream examples carry token counts as floats (37.0).
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


def _tokens(meta: Any, key: str) -> int:
    """``usage.tokens[key]``, else ``usage.billed_units[key]``, else 0."""
    for source in ("tokens", "billed_units"):
        count = _count(_dig(meta, source, key))
        if count is not None:
            return count
    return 0


def _usage(meta: Any) -> dict[str, int]:
    prompt, completion = _tokens(meta, "input_tokens"), _tokens(meta, "output_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _logprob_entry(item: Any) -> dict[str, Any] | None:
    """One Cohere ``LogprobItem`` as one entry of OpenAI's ``logprobs.content``; None without
    log probabilities.

    https://docs.cohere.com/reference/chat#response.body.logprobs: an item is a chunk of the
    answer's text with the ids and the log probabilities of the tokens it is made of, but not the
    text of each token. So the entry is the chunk: its text as ``token``, the sum of its tokens'
    log probabilities (the log probability of the whole chunk) as ``logprob``, its UTF-8 bytes,
    and no alternatives (Cohere gives none).
    """
    values = _dig(item, "logprobs")
    if not isinstance(values, list) or not values or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in values):
        return None
    text = _dig(item, "text")
    text = text if isinstance(text, str) else ""
    return {"token": text, "logprob": float(sum(values)), "bytes": list(text.encode()),
            "top_logprobs": []}


def _logprobs(items: list[Any]) -> dict[str, Any]:
    """OpenAI's ``choices[].logprobs`` for Cohere items; items without numbers are left out."""
    entries = [entry for entry in map(_logprob_entry, items) if entry is not None]
    return {"content": entries, "refusal": None}


# ---------------------------------------------------------------- OpenAI request → Cohere v2


def _function_call(call: Any) -> dict[str, Any] | None:
    """A function tool call, the same in both APIs; None when it is not one.

    Cohere's ToolCallV2 (https://docs.cohere.com/reference/chat#response.body.message.tool_calls)
    is OpenAI's: ``{"id", "type": "function", "function": {"name", "arguments": <JSON text>}}``.
    """
    name, args = _dig(call, "function", "name"), _dig(call, "function", "arguments")
    if _dig(call, "type") not in (None, "function") or not isinstance(name, str):
        return None
    if not isinstance(args, str):
        args = orjson.dumps(args or {}).decode()
    return {"id": _dig(call, "id") or tool_call_id(), "type": "function",
            "function": {"name": name, "arguments": args}}


def _text_items(content: Any, where: str, *, allow_refusal: bool = False) -> str | list[Any]:
    """System, assistant and tool content: a string, or OpenAI text parts as Cohere text items."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad_request(f"{where}.content must be a string or a list of parts",
                           f"{where}.content")
    items: list[Any] = []
    for j, part in enumerate(content):
        kind = _dig(part, "type")
        # An assistant's refusal part is what it said: kept as text.
        text = _dig(part, kind) if kind == "text" or (allow_refusal and kind == "refusal") \
            else None
        if not isinstance(text, str):
            raise _bad_request(f"{where}.content[{j}]: only text parts are supported here",
                               f"{where}.content[{j}]")
        items.append({"type": "text", "text": text})
    return items


def _user_content(content: Any, where: str) -> str | list[Any]:
    """User content: text and images; Cohere's image item is OpenAI's ``image_url`` part.

    https://docs.cohere.com/docs/image-inputs: ``{"type": "image_url", "image_url": {"url",
    "detail"}}``, with a data URL or an HTTP URL.
    """
    if not isinstance(content, list):
        return _text_items(content, where)
    items: list[Any] = []
    for j, part in enumerate(content):
        kind = _dig(part, "type")
        if kind == "text" and isinstance(_dig(part, "text"), str):
            items.append({"type": "text", "text": part["text"]})
        elif kind == "image_url" and isinstance(_dig(part, "image_url", "url"), str):
            image = {"url": part["image_url"]["url"]}
            if _dig(part, "image_url", "detail") is not None:
                image["detail"] = part["image_url"]["detail"]
            items.append({"type": "image_url", "image_url": image})
        else:
            raise _bad_request(f"{where}.content[{j}]: Cohere takes text and image_url parts, "
                               f"not {kind!r}", f"{where}.content[{j}]")
    return items


def _assistant(msg: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant"}
    calls = msg.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise _bad_request(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
        out["tool_calls"] = [_function_call(call) for call in calls]
        for j, call in enumerate(out["tool_calls"]):
            if call is None:
                raise _bad_request(f"{where}.tool_calls[{j}]: only function calls are supported",
                                   f"{where}.tool_calls[{j}]")
    content = msg.get("content")
    if not calls:
        if content is not None:
            out["content"] = _text_items(content, where, allow_refusal=True)
        return out
    # A v2 assistant message that calls tools carries its text as `tool_plan`, not `content`
    # (https://docs.cohere.com/docs/tool-use-overview: the history gets {"role": "assistant",
    # "tool_plan", "tool_calls"}; https://docs.cohere.com/reference/chat#request.body.messages).
    # OpenAI-style models write that text in `content`, so it becomes the plan. A `tool_plan`
    # the client kept from an earlier Cohere answer is Cohere's own and wins.
    plan = msg.get("tool_plan")
    if not isinstance(plan, str) and content is not None:
        items = _text_items(content, where, allow_refusal=True)
        plan = items if isinstance(items, str) else "".join(item["text"] for item in items)
    if isinstance(plan, str) and plan:
        out["tool_plan"] = plan
    return out


def _messages(raw: Any) -> list[dict[str, Any]]:
    """OpenAI messages → Cohere v2 messages (roles system, user, assistant, tool)."""
    if not isinstance(raw, list) or not raw:
        raise _bad_request("messages must be a non-empty list", "messages")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        role = _dig(msg, "role")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": _text_items(msg.get("content"), where)})
        elif role == "user":
            out.append({"role": "user", "content": _user_content(msg.get("content"), where)})
        elif role == "assistant":
            out.append(_assistant(msg, where))
        elif role == "tool":
            if not isinstance(msg.get("tool_call_id"), str):
                raise _bad_request(f"{where}.tool_call_id is required", f"{where}.tool_call_id")
            out.append({"role": "tool", "tool_call_id": msg["tool_call_id"],
                        "content": _text_items(msg.get("content"), where)})
        else:
            raise _bad_request(f"{where}.role {role!r} is not supported by Cohere",
                               f"{where}.role")
    return out


def _tools(raw: Any) -> tuple[list[dict[str, Any]], bool]:
    """OpenAI function tools map 1:1 to v2 ``tools``; returns them and whether any is strict."""
    if not isinstance(raw, list):
        raise _bad_request("tools must be a list", "tools")
    tools: list[dict[str, Any]] = []
    strict = False
    for i, tool in enumerate(raw):
        fn = _dig(tool, "function")
        if _dig(tool, "type") != "function" or not isinstance(_dig(fn, "name"), str):
            raise _bad_request(f"tools[{i}]: Cohere takes function tools only", f"tools[{i}]")
        tools.append({"type": "function",
                      "function": {k: fn[k] for k in ("name", "description", "parameters")
                                   if fn.get(k) is not None}})
        strict = strict or fn.get("strict") is True
    return tools, strict


def _response_format(raw: Any) -> dict[str, Any] | None:
    """OpenAI ``response_format`` → v2 ``{"type": "json_object", "json_schema"?}``.

    https://docs.cohere.com/reference/chat#request.body.response_format
    """
    kind = _dig(raw, "type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = _dig(raw, "json_schema", "schema")
        if schema is None:
            return {"type": "json_object"}
        return {"type": "json_object", "json_schema": schema}
    raise _bad_request(f"response_format type {kind!r} is not supported", "response_format")


def _chat_payload(body: Mapping[str, Any], model: str, options: CohereOptions,
                  stream: bool) -> dict[str, Any]:
    for param, why in _REFUSED.items():
        if body.get(param) not in (None, False, 0, {}, []):
            raise _bad_request(f"{param} is not supported for Cohere models ({why})", param)
    if body.get("n") not in (None, 1):
        raise _bad_request("Cohere returns one choice: n must be 1", "n")
    if body.get("modalities") not in (None, ["text"]):
        raise _bad_request("modalities: Cohere answers in text only", "modalities")

    payload: dict[str, Any] = {"model": model, "messages": _messages(body.get("messages")),
                               "stream": stream}
    if body.get("tools"):
        payload["tools"], strict = _tools(body["tools"])
        if strict:
            # Cohere sets strictness per request, not per tool (request.body.strict_tools).
            payload["strict_tools"] = True
    choice = body.get("tool_choice")
    if choice == "required":
        payload["tool_choice"] = "REQUIRED"
    elif choice == "none":
        payload["tool_choice"] = "NONE"
    elif choice not in (None, "auto"):
        # request.body.tool_choice: REQUIRED or NONE; Cohere cannot pin one named function.
        raise _bad_request("Cohere's tool_choice can be auto, required or none, "
                           "not a named function", "tool_choice")
    for name in ("temperature", "seed", "frequency_penalty", "presence_penalty"):
        if body.get(name) is not None:
            payload[name] = body[name]
    if body.get("logprobs") is True:
        # request.body.logprobs: the answer then carries `logprobs` (see _logprobs).
        payload["logprobs"] = True
    if body.get("top_p") is not None:
        top_p = body["top_p"]
        if isinstance(top_p, bool) or not isinstance(top_p, int | float):
            raise _bad_request("top_p must be a number", "top_p")
        # Cohere's p must lie in [0.01, 0.99]; OpenAI clients often send 1 (= no cut-off).
        payload["p"] = min(max(float(top_p), 0.01), 0.99)
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        payload["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    response_format = _response_format(body.get("response_format"))
    if response_format is not None:
        payload["response_format"] = response_format
    if options.safety_mode is not None:
        payload["safety_mode"] = options.safety_mode
    return payload


class CohereProvider(Provider):
    """Cohere's Chat API v2 and Embed API v2 behind the OpenAI shapes."""

    capabilities = frozenset({Capability.CHAT, Capability.EMBEDDINGS})
    default_url = "https://api.cohere.com"
    options_type = CohereOptions

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(model, session)
        # url: is the API base; older configs hold the full chat endpoint, which still works.
        base = self.url.rstrip("/")
        for suffix in ("/v2/chat", "/v2/embed", "/v2"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
                break
        self.base_url = base

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": accept}
        if self.model.token:
            headers["Authorization"] = f"Bearer {self.model.token}"
        return headers

    def _redact(self, message: str) -> str:
        token = self.model.token
        if token and len(token) >= _MIN_REDACTED_TOKEN:
            return message.replace(token, "[redacted]")
        return message

    def _protocol(self, what: str) -> UpstreamError:
        return UpstreamError(ErrorKind.PROTOCOL, f"{self.model.name}: {what}")

    def _finish_reason(self, value: Any, error: Any = None, *, required: bool = True) -> str:
        if value == "ERROR" or (value is None and error):
            # The generation failed on Cohere's side after the request was accepted (the
            # message-end delta's `error` says why). The answer is well formed, so this is not
            # PROTOCOL; like a 5xx it may succeed on a retry or another model: OVERLOADED.
            detail = f": {self._redact(str(error))}" if error else ""
            raise UpstreamError(ErrorKind.OVERLOADED,
                                f"{self.model.name}: Cohere stopped with an error{detail}")
        if value == "TIMEOUT":
            raise UpstreamError(ErrorKind.TIMEOUT,
                                f"{self.model.name}: Cohere timed out during generation")
        if value is None and not required:
            return "stop"
        if not isinstance(value, str):
            raise self._protocol("answer has no finish_reason")
        # Values added after this was written read as a plain stop rather than fail requests.
        return _FINISH_REASONS.get(value, "stop")

    async def _read_json(self, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        try:
            raw = await resp.read()
        except aiohttp.ClientError as exc:
            raise self._protocol(f"answer cut while reading ({type(exc).__name__})") from None
        finally:
            resp.release()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise self._protocol("answer is not JSON") from None
        if not isinstance(data, dict):
            raise self._protocol("answer is not a JSON object")
        return data

    def error_from_response(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError:
        """Cohere answers errors as ``{"message": ...}`` (sometimes with an ``id``).

        https://docs.cohere.com/reference/errors; 498, 499, 501 come from the API definition.
        """
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        message = _dig(parsed, "message")
        if not isinstance(message, str) or not message:
            message = f"upstream answered HTTP {status}"
        message = self._redact(message)
        if status == 429:
            # Before the wording checks: "too many tokens" here is a rate, not a context length.
            return UpstreamError(ErrorKind.RATE_LIMITED, message, status=429,
                                 retry_after=parse_retry_after(headers.get("retry-after")),
                                 upstream_status=status)
        if status == 402:
            # The account's billing limit: a quota, which OpenAI answers as 429
            # insufficient_quota; another provider may still serve the request.
            return UpstreamError(ErrorKind.RATE_LIMITED, message, status=429,
                                 code="insufficient_quota", upstream_status=status)
        if status in (401, 403, 498):  # 498: invalid token
            return UpstreamError(ErrorKind.AUTH, message, upstream_status=status)
        if status == 499:
            # "Request cancelled" by Cohere, not by us (we would not be reading it); the
            # errors page says to try again.
            return UpstreamError(ErrorKind.OVERLOADED, message, upstream_status=status)
        if status == 501:
            # Not implemented for this model: asking again will not help.
            return UpstreamError(ErrorKind.BAD_REQUEST, message, status=400,
                                 upstream_status=status)
        if status == 504:
            return UpstreamError(ErrorKind.TIMEOUT, message, status=504, upstream_status=status)
        # 400 ("too many tokens: ..." → CONTEXT_LENGTH), 404, 422, other 4xx, 500, 503.
        return error_from_status(status, message, headers=headers)

    # ------------------------------------------------------------------------------ chat

    def _chat_request(self, request: ChatRequest, stream: bool) -> tuple[str, bytes]:
        payload = _chat_payload(request.body, self.upstream_model, self.options, stream)
        return f"{self.base_url}/v2/chat", orjson.dumps(payload)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        url, body = self._chat_request(request, stream=False)
        resp = await self.send("POST", url, data=body, headers=self._headers("application/json"))
        data = await self._read_json(resp)
        message = data.get("message")
        if not isinstance(message, dict):
            raise self._protocol("answer has no message")
        finish = self._finish_reason(data.get("finish_reason"))
        content = message.get("content") or []
        if not isinstance(content, list):
            raise self._protocol("message.content is not a list")
        # Only text items form the answer; "thinking" items of reasoning models are dropped.
        texts = [_dig(item, "text") for item in content if _dig(item, "type") == "text"]
        if not all(isinstance(text, str) for text in texts):
            raise self._protocol("a text item has no text")
        calls = [_function_call(call) for call in message.get("tool_calls") or []]
        if None in calls:
            raise self._protocol("a tool call has no function name")
        out: dict[str, Any] = {"role": "assistant",
                               "content": "".join(texts) if texts or not calls else None}
        if calls:
            out["tool_calls"] = calls
        # Present when the request asked for logprobs (response.body.logprobs).
        raw_logprobs = data.get("logprobs")
        if raw_logprobs is not None and not isinstance(raw_logprobs, list):
            raise self._protocol("logprobs is not a list")
        logprobs = _logprobs(raw_logprobs) if raw_logprobs is not None else None
        return ChatResponse(data={
            "id": data.get("id") or completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model.name,
            "choices": [{"index": 0, "message": out, "finish_reason": finish,
                         "logprobs": logprobs}],
            "usage": _usage(data.get("usage")),
        })

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        url, body = self._chat_request(request, stream=True)
        resp = await self.send("POST", url, data=body, headers=self._headers("text/event-stream"))
        translator = _StreamTranslator(self, request.include_usage)
        try:
            async with contextlib.aclosing(self._events(resp)) as events:
                async for event in events:
                    for chunk in translator.feed(event):
                        yield chunk
                    if translator.done:
                        break
            if not translator.done:
                raise self._protocol("stream ended before message-end")
        finally:
            end_response(resp, complete=translator.done)

    async def _events(
        self, resp: aiohttp.ClientResponse
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The stream's events as JSON objects; a broken stream raises PROTOCOL."""
        # iter_sse is an async generator (declared as an iterator): close it with us.
        events = iter_sse(resp.content)
        try:
            async with contextlib.aclosing(events) as sse:
                async for event in sse:
                    if not event.data.strip():
                        continue
                    try:
                        data = orjson.loads(event.data)
                    except orjson.JSONDecodeError:
                        raise self._protocol("stream event is not JSON") from None
                    if not isinstance(data, dict):
                        raise self._protocol("stream event is not a JSON object")
                    # Each event's JSON names its type; the SSE event name is the fallback.
                    data.setdefault("type", event.event)
                    yield data
        except (aiohttp.ClientError, ValueError) as exc:
            raise self._protocol(f"stream cut ({type(exc).__name__})") from None

    # ------------------------------------------------------------------------ embeddings

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        body = request.body
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise _bad_request("Cohere embeds text: input must be a string or a list of "
                               "strings (token arrays are not supported)", "input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _bad_request("encoding_format must be float or base64", "encoding_format")
        if not texts:
            raise _bad_request("input must not be empty", "input")
        # https://docs.cohere.com/reference/embed: embedding_types is required in v2.
        payload: dict[str, Any] = {"model": self.upstream_model,
                                   "input_type": self.options.input_type,
                                   "embedding_types": ["float"]}
        if body.get("dimensions") is not None:
            # request.body.output_dimension: embed-v4 and newer (256, 512, 1024, 1536).
            payload["output_dimension"] = body["dimensions"]
        items: list[dict[str, Any]] = []
        tokens = 0
        # request.body.texts takes at most 96 texts per call: a longer input goes in batches.
        # One after the other, not at once: a batch is one upstream call against the key's
        # per-minute limit, and the first failure ends the request without spending more.
        for start in range(0, len(texts), EMBED_BATCH):
            batch = texts[start:start + EMBED_BATCH]
            vectors, batch_tokens = await self._embed({**payload, "texts": batch})
            for i, vector in enumerate(vectors, start):
                embedding = embedding_base64(vector) if encoding == "base64" else vector
                items.append({"object": "embedding", "index": i, "embedding": embedding})
            tokens += batch_tokens
        return EmbeddingsResponse(data={
            "object": "list", "data": items, "model": self.model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    async def _embed(self, payload: dict[str, Any]) -> tuple[list[list[float]], int]:
        """One Embed call: a float vector per text, in order, and the input tokens billed."""
        resp = await self.send("POST", f"{self.base_url}/v2/embed", data=orjson.dumps(payload),
                               headers=self._headers("application/json"))
        data = await self._read_json(resp)
        vectors = _dig(data, "embeddings", "float")
        if not isinstance(vectors, list) or len(vectors) != len(payload["texts"]):
            raise self._protocol("answer has no float embedding for each text")
        for i, vector in enumerate(vectors):
            if not isinstance(vector, list) or not all(_count(x) is not None for x in vector):
                raise self._protocol(f"embedding {i} is not a list of numbers")
        return vectors, _tokens(data.get("meta"), "input_tokens")


class _StreamTranslator:
    """Cohere v2 stream events → OpenAI ``chat.completion.chunk`` objects, one event at a time."""

    def __init__(self, provider: CohereProvider, include_usage: bool) -> None:
        self.provider = provider
        self.include_usage = include_usage
        self.created = int(time.time())
        # Made by the first event that says something (message-start gives the answer's id).
        self.chunks: StreamChunks | None = None
        self.done = False
        # Cohere's tool-call event index → the OpenAI tool_calls index, in order of appearance.
        self.tool_index: dict[Any, int] = {}

    def _start(self, out: list[dict[str, Any]], cohere_id: Any = None) -> StreamChunks:
        """The answer's chunk builder; the first call also sends the opening (role) chunk."""
        if self.chunks is None:
            answer_id = cohere_id if isinstance(cohere_id, str) and cohere_id \
                else completion_id()
            self.chunks = StreamChunks(self.provider.model.name, id=answer_id,
                                       created=self.created, logprobs=True)
            out.append(self.chunks.role())
        return self.chunks

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        kind = event.get("type")
        if kind == "message-start":
            self._start(out, event.get("id"))
        elif kind == "content-delta":
            text = _dig(event, "delta", "message", "content", "text")
            if text is None:  # a "thinking" delta of a reasoning model: not part of the answer
                return out
            if not isinstance(text, str):
                raise self.provider._protocol("content-delta text is not a string")
            chunks = self._start(out)
            if text:
                piece = chunks.chunk({"content": text})
                # https://docs.cohere.com/reference/chat-stream: with logprobs asked for, each
                # content-delta carries the LogprobItem of its text.
                entry = _logprob_entry(event.get("logprobs"))
                if entry is not None:
                    piece["choices"][0]["logprobs"] = {"content": [entry], "refusal": None}
                out.append(piece)
        elif kind == "tool-call-start":
            call = _dig(event, "delta", "message", "tool_calls")
            name, args = _dig(call, "function", "name"), _dig(call, "function", "arguments")
            if not isinstance(name, str) or not isinstance(args, str | None):
                raise self.provider._protocol("tool-call-start has no function name")
            chunks = self._start(out)
            index = self.tool_index.setdefault(event.get("index"), len(self.tool_index))
            out.append(chunks.chunk({"tool_calls": [{
                "index": index, "id": _dig(call, "id") or tool_call_id(),
                "type": "function", "function": {"name": name, "arguments": args or ""},
            }]}))
        elif kind == "tool-call-delta":
            args = _dig(event, "delta", "message", "tool_calls", "function", "arguments")
            known = self.tool_index.get(event.get("index"))
            if known is None or not isinstance(args, str):
                raise self.provider._protocol("tool-call-delta without its tool-call-start")
            if args:
                # `known`: its tool-call-start came first, so _start only hands back the builder.
                out.append(self._start(out).chunk({"tool_calls": [{
                    "index": known, "function": {"arguments": args}}]}))
        elif kind == "message-end":
            delta = event.get("delta")
            finish = self.provider._finish_reason(_dig(delta, "finish_reason"),
                                                  _dig(delta, "error"), required=False)
            chunks = self._start(out)
            self.done = True
            out += chunks.end(finish, _usage(_dig(delta, "usage")),
                              include_usage=self.include_usage)
        # content-start/-end, tool-plan-delta, tool-call-end, citation-start/-end, debug and
        # types added later carry nothing an OpenAI client reads.
        return out
