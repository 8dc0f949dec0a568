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

from collections.abc import AsyncIterator, Callable, Mapping
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
    ErrorRule,
    ErrorTable,
    Message,
    ModelConfig,
    Parameters,
    Provider,
    StreamAssembler,
    UpstreamError,
    UpstreamFailure,
    assistant_message,
    bad_request,
    chat_completion,
    classify,
    embedding_encoding,
    embedding_texts,
    embeddings_answer,
    error_json,
    function_tools,
    json_object,
    max_tokens_of,
    messages_of,
    openai_finish_reason,
    openai_tool_call,
    openai_usage,
    parts_of,
    protocol_error,
    read_body,
    stop_of,
    token_count,
    tool_choice_of,
)

__all__ = ["CohereOptions", "CohereProvider"]

PROVIDER = "Cohere"
# https://docs.cohere.com/reference/embed#request.body.input_type ("image" is for image inputs,
# which an OpenAI embeddings request never carries).
_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
# https://docs.cohere.com/reference/chat#request.body.safety_mode
_SAFETY_MODES = ("CONTEXTUAL", "STRICT", "OFF")
#: Texts per Embed call: https://docs.cohere.com/reference/embed#request.body.texts ("Maximum
#: number of texts per call is 96").
EMBED_BATCH = 96

# What the v2 chat request has room for (https://docs.cohere.com/reference/chat).
CHAT_PARAMETERS = Parameters(
    PROVIDER,
    supported={"temperature", "seed", "frequency_penalty", "presence_penalty", "logprobs",
               "top_p", "max_completion_tokens", "max_tokens", "stop", "response_format",
               "tools", "tool_choice"},
    ignored={"user", "metadata", "store", "parallel_tool_calls", "service_tier", "prediction",
             "safety_identifier", "prompt_cache_key", "prompt_cache_options",
             "prompt_cache_retention"},
    notes={
        "parallel_tool_calls": "Cohere decides how many tools it calls at once",
        "top_logprobs": "Cohere returns no alternative tokens; use logprobs alone",
        "n": "Cohere returns one choice",
        "logit_bias": "Cohere has no logit bias",
        "audio": "Cohere answers in text only",
        "modalities": "Cohere answers in text only",
        "functions": "use tools instead of the deprecated functions",
        "function_call": "use tool_choice instead of the deprecated function_call",
        "reasoning_effort": "not translated to Cohere",
        "web_search_options": "Cohere has no web search",
    },
)
EMBEDDING_PARAMETERS = Parameters(PROVIDER, supported={"dimensions", "encoding_format"},
                                  ignored={"user"}, api="embeddings")

# https://docs.cohere.com/reference/errors; 498, 499, 501 come from the API definition.
ERRORS = ErrorTable(statuses={
    # The account's billing limit: a quota, which OpenAI answers as 429 insufficient_quota;
    # another provider may still serve the request.
    402: ErrorRule(ErrorKind.RATE_LIMITED, code="insufficient_quota", status=429),
    498: ErrorKind.AUTH,  # invalid token
    # "Request cancelled" by Cohere, not by us (we would not be reading it); try again.
    499: ErrorKind.OVERLOADED,
    501: ErrorKind.BAD_REQUEST,  # not implemented for this model: asking again will not help
})

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


def _dig(value: Any, *keys: str) -> Any:
    """``value[k1][k2]...`` or None when any level is missing or not an object."""
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


# ---------------------------------------------------------------- OpenAI request → Cohere v2


def _text_items(msg: Message, *, refusal: bool = False) -> str | list[dict[str, Any]]:
    """System, assistant and tool content: a string, or text parts as Cohere text items (an
    assistant's refusal is what it said: kept as text)."""
    if isinstance(msg.content, str):
        return msg.content
    kinds = ("text", "refusal") if refusal else ("text",)
    return [{"type": "text", "text": part.text or ""}
            for part in parts_of(msg.content, msg.where, provider=PROVIDER, kinds=kinds)]


def _user_content(msg: Message) -> str | list[dict[str, Any]]:
    """User content: text and images; Cohere's image item is OpenAI's ``image_url`` part, with
    a data URL or an HTTP URL (https://docs.cohere.com/docs/image-inputs)."""
    if isinstance(msg.content, str):
        return msg.content
    items: list[dict[str, Any]] = []
    for part in parts_of(msg.content, msg.where, provider=PROVIDER, kinds=("text", "image_url")):
        if part.kind == "text":
            items.append({"type": "text", "text": part.text})
        else:
            image = {"url": part.url}
            if part.detail is not None:
                image["detail"] = part.detail
            items.append({"type": "image_url", "image_url": image})
    return items


def _assistant(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant"}
    if not msg.tool_calls:
        if msg.content is not None:
            out["content"] = _text_items(msg, refusal=True)
        return out
    # Cohere's ToolCallV2 is OpenAI's tool call
    # (https://docs.cohere.com/reference/chat#response.body.message.tool_calls).
    out["tool_calls"] = [openai_tool_call(call.name, call.arguments, id=call.id)
                         for call in msg.tool_calls]
    # A v2 assistant message that calls tools carries its text as `tool_plan`, not `content`
    # (https://docs.cohere.com/docs/tool-use-overview: the history gets {"role": "assistant",
    # "tool_plan", "tool_calls"}; https://docs.cohere.com/reference/chat#request.body.messages).
    # OpenAI-style models write that text in `content`, so it becomes the plan. A `tool_plan`
    # the client kept from an earlier Cohere answer is Cohere's own and wins.
    plan = msg.raw.get("tool_plan")
    if not isinstance(plan, str) and msg.content is not None:
        items = _text_items(msg, refusal=True)
        plan = items if isinstance(items, str) else "".join(item["text"] for item in items)
    if isinstance(plan, str) and plan:
        out["tool_plan"] = plan
    return out


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OpenAI messages → Cohere v2 messages (roles system, user, assistant, tool)."""
    out: list[dict[str, Any]] = []
    for msg in messages_of(body, provider=PROVIDER):
        if msg.role == "system":
            out.append({"role": "system", "content": _text_items(msg)})
        elif msg.role == "user":
            out.append({"role": "user", "content": _user_content(msg)})
        elif msg.role == "assistant":
            out.append(_assistant(msg))
        else:
            if msg.tool_call_id is None:
                raise bad_request(f"{msg.where}.tool_call_id is required",
                                  param=f"{msg.where}.tool_call_id")
            out.append({"role": "tool", "tool_call_id": msg.tool_call_id,
                        "content": _text_items(msg)})
    return out


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
    raise bad_request(f"response_format type {kind!r} is not supported by Cohere",
                      param="response_format")


def _chat_payload(body: Mapping[str, Any], model: str, options: CohereOptions,
                  stream: bool) -> dict[str, Any]:
    CHAT_PARAMETERS.check(body)
    payload: dict[str, Any] = {"model": model, "messages": _messages(body), "stream": stream}
    tools = function_tools(body, provider=PROVIDER)
    if tools:
        payload["tools"] = [{"type": "function", "function": {
            "name": t.name,
            **({"description": t.description} if t.description is not None else {}),
            **({"parameters": t.parameters} if t.parameters is not None else {})}}
            for t in tools]
        if any(t.strict for t in tools):
            # Cohere sets strictness per request, not per tool (request.body.strict_tools).
            payload["strict_tools"] = True
    choice = tool_choice_of(body, tools, provider=PROVIDER)
    if choice is not None and choice.mode == "function":
        # request.body.tool_choice: REQUIRED or NONE; Cohere cannot pin one named function.
        raise bad_request("Cohere's tool_choice can be auto, required or none, not a named "
                          "function", param="tool_choice")
    if choice is not None and choice.mode in ("required", "none"):
        payload["tool_choice"] = choice.mode.upper()
    for name in ("temperature", "seed", "frequency_penalty", "presence_penalty"):
        if body.get(name) is not None:
            payload[name] = body[name]
    if body.get("logprobs") is True:
        # request.body.logprobs: the answer then carries `logprobs` (see _logprobs).
        payload["logprobs"] = True
    if body.get("top_p") is not None:
        top_p = body["top_p"]
        if isinstance(top_p, bool) or not isinstance(top_p, int | float):
            raise bad_request("top_p must be a number", param="top_p")
        # Cohere's p must lie in [0.01, 0.99]; OpenAI clients often send 1 (= no cut-off).
        payload["p"] = min(max(float(top_p), 0.01), 0.99)
    max_tokens = max_tokens_of(body)
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    stop = stop_of(body)
    if stop is not None:
        payload["stop_sequences"] = stop
    response_format = _response_format(body.get("response_format"))
    if response_format is not None:
        payload["response_format"] = response_format
    if options.safety_mode is not None:
        payload["safety_mode"] = options.safety_mode
    return payload


# ---------------------------------------------------------------- Cohere v2 answer → OpenAI


def _tokens(meta: Any, key: str) -> int:
    """``usage.tokens[key]``, else ``usage.billed_units[key]``, else 0."""
    for source in ("tokens", "billed_units"):
        count = token_count(_dig(meta, source, key))
        if count is not None:
            return count
    return 0


def _usage(meta: Any) -> dict[str, Any]:
    return openai_usage(_tokens(meta, "input_tokens"), _tokens(meta, "output_tokens"))


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


def _answer_tool_call(call: Any) -> dict[str, Any]:
    name, args = _dig(call, "function", "name"), _dig(call, "function", "arguments")
    if _dig(call, "type") not in (None, "function") or not isinstance(name, str):
        raise protocol_error("Cohere: a tool call has no function name")
    return openai_tool_call(name, args, id=_dig(call, "id"))


class CohereProvider(Provider):
    """Cohere's Chat API v2 and Embed API v2 behind the OpenAI shapes."""

    plugin_api_version = 2
    capabilities = frozenset({Capability.CHAT, Capability.EMBEDDINGS})
    default_url = "https://api.cohere.com"
    options_type = CohereOptions
    chat_parameters = CHAT_PARAMETERS
    embedding_parameters = EMBEDDING_PARAMETERS

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

    def _finish_reason(self, value: Any, error: Any = None, *, required: bool = True) -> str:
        if value == "ERROR" or (value is None and error):
            # The generation failed on Cohere's side after the request was accepted (the
            # message-end delta's `error` says why). The answer is well formed, so this is not
            # PROTOCOL; like a 5xx it may succeed on a retry or another model: OVERLOADED.
            detail = f": {self.redact(str(error))}" if error else ""
            raise UpstreamError(ErrorKind.OVERLOADED,
                                f"{self.model.name}: Cohere stopped with an error{detail}")
        if value == "TIMEOUT":
            raise UpstreamError(ErrorKind.TIMEOUT,
                                f"{self.model.name}: Cohere timed out during generation")
        if value is None and not required:
            return "stop"
        if not isinstance(value, str):
            raise protocol_error(f"{self.model.name}: answer has no finish_reason")
        # Values added after this was written read as a plain stop rather than fail requests.
        return openai_finish_reason(value, _FINISH_REASONS)

    def error_from_response(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError:
        """Cohere answers errors as ``{"message": ...}`` (sometimes with an ``id``)."""
        message = _dig(error_json(body), "message")
        if not isinstance(message, str) or not message:
            message = f"upstream answered HTTP {status}"
        return classify(UpstreamFailure(status, self.redact(message), headers=headers), ERRORS)

    # ------------------------------------------------------------------------------ chat

    def _chat_request(self, request: ChatRequest, stream: bool) -> tuple[str, bytes]:
        payload = _chat_payload(request.body, self.upstream_model, self.options, stream)
        return f"{self.base_url}/v2/chat", orjson.dumps(payload)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        url, body = self._chat_request(request, stream=False)
        resp = await self.send("POST", url, data=body, headers=self._headers("application/json"))
        data = json_object(await read_body(resp, provider=PROVIDER), provider=PROVIDER)
        message = data.get("message")
        if not isinstance(message, dict):
            raise protocol_error(f"{self.model.name}: answer has no message")
        finish = self._finish_reason(data.get("finish_reason"))
        content = message.get("content") or []
        if not isinstance(content, list):
            raise protocol_error(f"{self.model.name}: message.content is not a list")
        # Only text items form the answer; "thinking" items of reasoning models are dropped.
        texts = [_dig(item, "text") for item in content if _dig(item, "type") == "text"]
        if not all(isinstance(text, str) for text in texts):
            raise protocol_error(f"{self.model.name}: a text item has no text")
        calls = [_answer_tool_call(call) for call in message.get("tool_calls") or []]
        # Present when the request asked for logprobs (response.body.logprobs).
        raw_logprobs = data.get("logprobs")
        if raw_logprobs is not None and not isinstance(raw_logprobs, list):
            raise protocol_error(f"{self.model.name}: logprobs is not a list")
        choice = {"index": 0, "message": assistant_message("".join(texts), calls),
                  "finish_reason": finish,
                  "logprobs": _logprobs(raw_logprobs) if raw_logprobs is not None else None}
        return ChatResponse(chat_completion(self.model.name, [choice],
                                            _usage(data.get("usage")), id=data.get("id")))

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        url, body = self._chat_request(request, stream=True)
        resp = await self.send("POST", url, data=body, headers=self._headers("text/event-stream"))
        # Every chunk carries "logprobs" (null unless asked for), as OpenAI's do.
        out = StreamAssembler(self.model.name, include_usage=request.include_usage,
                              provider=PROVIDER, logprobs=True)
        async with out.read(resp, done=None, end="message-end") as events:
            async for event in events:
                for chunk in self._feed(out, event.data.get("type") or event.name, event.data):
                    yield chunk
                if out.ended:
                    break

    def _feed(self, out: StreamAssembler, kind: Any,
              event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks for one v2 stream event (https://docs.cohere.com/reference/chat-stream)."""
        if kind == "message-start":
            # The answer's id, unless a chunk already went out (a repeated message-start).
            if isinstance(event.get("id"), str) and event["id"] and not out.started:
                out.id = event["id"]
            return out.start()
        if kind == "content-delta":
            text = _dig(event, "delta", "message", "content", "text")
            if text is None:  # a "thinking" delta of a reasoning model: not part of the answer
                return []
            if not isinstance(text, str):
                raise protocol_error(f"{self.model.name}: content-delta text is not a string")
            if not text:
                return out.start()
            # With logprobs asked for, each content-delta carries the LogprobItem of its text.
            entry = _logprob_entry(event.get("logprobs"))
            return out.text(text, logprobs=None if entry is None else {"content": [entry],
                                                                       "refusal": None})
        if kind == "tool-call-start":
            call = _dig(event, "delta", "message", "tool_calls")
            name, args = _dig(call, "function", "name"), _dig(call, "function", "arguments")
            if not isinstance(name, str) or not isinstance(args, str | None):
                raise protocol_error(f"{self.model.name}: tool-call-start has no function name")
            return out.tool_call_delta(("cohere", event.get("index")), id=_dig(call, "id"),
                                       name=name, arguments=args or "")
        if kind == "tool-call-delta":
            key = ("cohere", event.get("index"))
            args = _dig(event, "delta", "message", "tool_calls", "function", "arguments")
            if not out.knows_call(key) or not isinstance(args, str):
                raise protocol_error(f"{self.model.name}: tool-call-delta without its "
                                     "tool-call-start")
            return out.tool_call_delta(key, arguments=args)
        if kind == "message-end":
            delta = event.get("delta")
            finish = self._finish_reason(_dig(delta, "finish_reason"), _dig(delta, "error"),
                                         required=False)
            out.usage = _usage(_dig(delta, "usage"))
            return out.end(finish)
        # content-start/-end, tool-plan-delta, tool-call-end, citation-start/-end, debug and
        # types added later carry nothing an OpenAI client reads.
        return []

    # ------------------------------------------------------------------------ embeddings

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        body = request.body
        EMBEDDING_PARAMETERS.check(body)
        texts = embedding_texts(body, provider=PROVIDER)
        encoding = embedding_encoding(body)
        # https://docs.cohere.com/reference/embed: embedding_types is required in v2.
        payload: dict[str, Any] = {"model": self.upstream_model,
                                   "input_type": self.options.input_type,
                                   "embedding_types": ["float"]}
        if body.get("dimensions") is not None:
            # request.body.output_dimension: embed-v4 and newer (256, 512, 1024, 1536).
            payload["output_dimension"] = body["dimensions"]
        vectors: list[list[float]] = []
        tokens = 0
        # request.body.texts takes at most 96 texts per call: a longer input goes in batches.
        # One after the other, not at once: a batch is one upstream call against the key's
        # per-minute limit, and the first failure ends the request without spending more.
        for start in range(0, len(texts), EMBED_BATCH):
            batch, batch_tokens = await self._embed({**payload,
                                                     "texts": texts[start:start + EMBED_BATCH]})
            vectors += batch
            tokens += batch_tokens
        return EmbeddingsResponse(embeddings_answer(vectors, model=self.model.name,
                                                    prompt_tokens=tokens, encoding=encoding))

    async def _embed(self, payload: dict[str, Any]) -> tuple[list[list[float]], int]:
        """One Embed call: a float vector per text, in order, and the input tokens billed."""
        resp = await self.send("POST", f"{self.base_url}/v2/embed", data=orjson.dumps(payload),
                               headers=self._headers("application/json"))
        data = json_object(await read_body(resp, provider=PROVIDER), provider=PROVIDER)
        vectors = _dig(data, "embeddings", "float")
        if not isinstance(vectors, list) or len(vectors) != len(payload["texts"]):
            raise protocol_error(f"{self.model.name}: answer has no float embedding for each "
                                 "text")
        for i, vector in enumerate(vectors):
            if not isinstance(vector, list) or not all(
                    isinstance(x, int | float) and not isinstance(x, bool) for x in vector):
                raise protocol_error(f"{self.model.name}: embedding {i} is not a list of "
                                     "numbers")
        return vectors, _tokens(data.get("meta"), "input_tokens")
