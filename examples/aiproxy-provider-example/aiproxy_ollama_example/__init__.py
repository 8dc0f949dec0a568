"""An aiproxy provider for Ollama's native chat API: the worked example of docs/plugins.md.

Ollama also serves an OpenAI-compatible ``/v1`` (``provider: openai`` handles that); this plugin
speaks the native ``/api/chat`` instead, to show a real translation in both directions, written
with aiproxy's translation kit: the plugin holds only its request mapping, its answer mapping
and its error table.

- Chat API (request, answer, options):
  https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion
- Streaming, newline-delimited JSON whose last object has ``done: true``:
  https://docs.ollama.com/api/streaming
- Errors, ``{"error": "..."}``, also as a line inside a started stream:
  https://docs.ollama.com/api/errors
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import attrs
import orjson

from aiproxy.provider import (
    Capability,
    ChatRequest,
    ChatResponse,
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
    data_url,
    error_json,
    json_object,
    max_tokens_of,
    messages_of,
    openai_finish_reason,
    openai_usage,
    parts_of,
    protocol_error,
    read_body,
    stop_of,
)

__all__ = ["OllamaOptions", "OllamaProvider"]
__version__ = "0.1.0"

PROVIDER = "Ollama"

# What /api/chat has room for. The rest of the OpenAI API is refused with aiproxy's one 400.
CHAT_PARAMETERS = Parameters(
    PROVIDER,
    supported={"temperature", "top_p", "seed", "presence_penalty", "frequency_penalty",
               "max_completion_tokens", "max_tokens", "stop", "response_format"},
    ignored={"user", "metadata", "store", "service_tier", "safety_identifier",
             "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention"},
    notes={"tools": "not supported by the ollama-example provider",
           "n": "Ollama answers one choice"},
)

# Ollama says "stop" or "length" (num_predict or the context window reached).
_FINISH_REASONS = {"stop": "stop", "length": "length"}


def _positive(inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


@attrs.frozen
class OllamaOptions:
    """``options:`` of an Ollama model in provider-config.yaml."""

    # How long Ollama keeps the model loaded after a request: a duration ("10m", "-1m" for
    # ever) or seconds. OpenAI requests have no such field, so the operator sets it per model.
    keep_alive: str | None = None
    # The context window in tokens. Ollama's default is small and it silently truncates the
    # prompt to it, so long conversations need this raised.
    num_ctx: int | None = attrs.field(default=None, validator=_positive)


def _keep_alive(value: str) -> str | int:
    # YAML's `keep_alive: 300` reaches us as "300"; Ollama reads a JSON number as seconds but
    # parses a string as a Go duration, which needs a unit.
    try:
        return int(value)
    except ValueError:
        return value


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OpenAI messages as Ollama's: ``content`` text and an ``images`` list of base64."""
    out = []
    for msg in messages_of(body, provider=PROVIDER, roles=("system", "user", "assistant")):
        texts: list[str] = []
        images: list[str] = []
        for part in parts_of(msg.content, msg.where, provider=PROVIDER,
                             kinds=("text", "image_url")):
            if part.kind == "text":
                texts.append(part.text or "")
                continue
            image = data_url(part.url)  # Ollama takes images inline only
            if image is None:
                raise bad_request(f"{part.where}: Ollama takes images as "
                                  "data:<mime>;base64,... URLs only", param=part.where)
            images.append(image.data)
        item: dict[str, Any] = {"role": msg.role, "content": "".join(texts)}
        if images:
            item["images"] = images
        out.append(item)
    return out


def _format(fmt: Any) -> str | dict[str, Any] | None:
    """``response_format`` as Ollama's ``format``: "json" or a JSON schema."""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return "json"
    schema = fmt.get("json_schema", {}).get("schema") if kind == "json_schema" else None
    if isinstance(schema, dict):
        return schema
    raise bad_request(f"response_format {fmt!r} is not supported by Ollama",
                      param="response_format")


def _usage(data: Mapping[str, Any]) -> dict[str, Any]:
    return openai_usage(data.get("prompt_eval_count"), data.get("eval_count"))


class OllamaProvider(Provider):
    """Chat, plain and streamed, over Ollama's native ``POST /api/chat``.

    ``url:`` is the server root (``http://localhost:11434``); ``.../api`` and the whole
    ``.../api/chat`` are accepted too. ``token:``, if set, goes as a bearer token (ollama.com,
    or a server behind an authenticating reverse proxy).
    """

    # The plugin API this code was written for: aiproxy refuses to load it if it runs another.
    plugin_api_version = 2
    capabilities = frozenset({Capability.CHAT})
    default_url = "http://localhost:11434"
    requires_token = False  # a local Ollama needs none
    options_type = OllamaOptions
    chat_parameters = CHAT_PARAMETERS

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(model, session)  # checks url:, structures options: into self.options
        root = self.url.rstrip("/").removesuffix("/api/chat").removesuffix("/api")
        self.chat_url = f"{root}/api/chat"
        self.headers = {"Content-Type": "application/json"}
        if model.token:
            self.headers["Authorization"] = f"Bearer {model.token}"

    # -- OpenAI request -> Ollama request ----------------------------------------------------

    def build_request(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The ``/api/chat`` body for an OpenAI chat completion request."""
        body = request.body
        CHAT_PARAMETERS.check(body)  # the one 400 for what Ollama cannot honour
        payload: dict[str, Any] = {
            "model": self.upstream_model,
            "messages": _messages(body),
            # Ollama streams unless told otherwise, so always say which.
            "stream": stream,
        }
        options: dict[str, Any] = {}
        for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
            if body.get(name) is not None:
                options[name] = body[name]
        max_tokens = max_tokens_of(body)
        if max_tokens is not None:
            options["num_predict"] = max_tokens
        stop = stop_of(body)
        if stop:
            options["stop"] = stop
        opts: OllamaOptions = self.options
        if opts.num_ctx is not None:
            options["num_ctx"] = opts.num_ctx
        if options:
            payload["options"] = options
        fmt = _format(body.get("response_format"))
        if fmt is not None:
            payload["format"] = fmt
        if opts.keep_alive is not None:
            payload["keep_alive"] = _keep_alive(opts.keep_alive)
        return payload

    # -- calls ---------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        payload = orjson.dumps(self.build_request(request, stream=False))
        # send() turns connection failures and non-2xx answers into UpstreamError for us.
        resp = await self.send("POST", self.chat_url, data=payload, headers=self.headers)
        data = json_object(await read_body(resp, provider=PROVIDER), provider=PROVIDER)
        message = data.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            # Anything unexpected is PROTOCOL: retryable, so another candidate gets the request.
            raise protocol_error("Ollama: the answer has no message content")
        choice = {"index": 0, "message": assistant_message(message["content"]),
                  "finish_reason": openai_finish_reason(data.get("done_reason"),
                                                        _FINISH_REASONS),
                  "logprobs": None}
        # created_at is RFC 3339 with nanoseconds; the time we got it is as good.
        return ChatResponse(chat_completion(self.model.name, [choice], _usage(data)))

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        payload = orjson.dumps(self.build_request(request, stream=True))
        # An error status raises here, before the first chunk: the core can still fall back.
        resp = await self.send("POST", self.chat_url, data=payload, headers=self.headers)
        out = StreamAssembler(self.model.name, include_usage=request.include_usage,
                              provider=PROVIDER)
        # One JSON object a line; the answer is complete once the final (done) line finished
        # it. The assembler raises PROTOCOL for a cut or an early end, and releases the
        # connection (or closes it, when the client went away) whichever way this ends.
        async with out.read(resp, done=None, framing="ndjson",
                            end="its final (done) line") as events:
            async for event in events:
                data = event.data
                if "error" in data:
                    # A failure after the answer began arrives as a line, with HTTP 200.
                    raise self.error_from_response(500, orjson.dumps(data), {})
                if out.finished():
                    continue  # nothing is expected after the final line; read to EOF
                message = data.get("message")
                text = message.get("content") if isinstance(message, dict) else None
                for chunk in out.text(text if isinstance(text, str) else ""):
                    yield chunk
                if data.get("done") is True:
                    out.usage = _usage(data)
                    for chunk in out.finish(openai_finish_reason(data.get("done_reason"),
                                                                 _FINISH_REASONS)):
                        yield chunk
        for chunk in out.end():  # the usage chunk, if the client asked for it
            yield chunk

    # -- errors --------------------------------------------------------------------------------

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        """Ollama answers ``{"error": "<message>"}`` with 400, 401, 403, 404, 429, 500, 502."""
        parsed = error_json(body)
        message = parsed.get("error") if isinstance(parsed, dict) else None
        # An upstream may quote the key it refused: a message must never carry it.
        text = self.redact(message if isinstance(message, str) and message
                            else f"Ollama answered HTTP {status}")
        # The usual mapping fits Ollama, so its error table is empty: 429 (+ Retry-After) ->
        # RATE_LIMITED, 401/403 -> AUTH, 5xx -> OVERLOADED, other 4xx -> BAD_REQUEST, "context
        # length" wording -> CONTEXT_LENGTH. A 404 ("model 'x' not found": not pulled on this
        # server) stays BAD_REQUEST with upstream_status 404, which the router takes as a
        # misconfigured model and moves on to the next candidate.
        return classify(UpstreamFailure(status, text, headers=headers))

