"""An aiproxy provider for Ollama's native chat API: the worked example of docs/plugins.md.

Ollama also serves an OpenAI-compatible ``/v1`` (``provider: openai`` handles that); this plugin
speaks the native ``/api/chat`` instead, to show a real translation in both directions.

- Chat API (request, answer, options):
  https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion
- Streaming, newline-delimited JSON whose last object has ``done: true``:
  https://docs.ollama.com/api/streaming
- Errors, ``{"error": "..."}``, also as a line inside a started stream:
  https://docs.ollama.com/api/errors
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import aiohttp
import attrs
import orjson

from aiproxy.provider import (
    Capability,
    ChatRequest,
    ChatResponse,
    ErrorKind,
    ModelConfig,
    Provider,
    UpstreamError,
    error_from_status,
)

__all__ = ["OllamaOptions", "OllamaProvider"]
__version__ = "0.1.0"

# One NDJSON line may not grow past this: an upstream that never sends a newline must not eat
# memory.
MAX_LINE_BYTES = 16 * 1024 * 1024


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


def _bad(message: str, param: str) -> UpstreamError:
    return UpstreamError(ErrorKind.BAD_REQUEST, message, status=400, param=param)


def _protocol(message: str) -> UpstreamError:
    return UpstreamError(ErrorKind.PROTOCOL, f"Ollama: {message}")


def _keep_alive(value: str) -> str | int:
    # YAML's `keep_alive: 300` reaches us as "300"; Ollama reads a JSON number as seconds but
    # parses a string as a Go duration, which needs a unit.
    try:
        return int(value)
    except ValueError:
        return value


def _image(url: Any, where: str) -> str:
    """The base64 payload of a ``data:`` URL; Ollama takes images inline only."""
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise _bad(f"{where}: Ollama takes images as data:<mime>;base64,... URLs only",
                   "messages")
    return url.partition(";base64,")[2]


def _content(content: Any, where: str) -> tuple[str, list[str]]:
    """OpenAI message content as Ollama's ``content`` text and ``images`` list."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _bad(f"{where}: content must be a string or an array of parts", "messages")
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            images.append(_image(part["image_url"].get("url"), where))
        else:
            raise _bad(f"{where}: content part {kind!r} is not supported by Ollama "
                       "(text, image_url)", "messages")
    return "".join(texts), images


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty array", "messages")
    out = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, dict) else None
        if role == "developer":  # OpenAI's newer name for system
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise _bad(f"{where}: role {role!r} is not supported by this provider "
                       "(system, user, assistant)", "messages")
        text, images = _content(msg.get("content"), where)
        item: dict[str, Any] = {"role": role, "content": text}
        if images:
            item["images"] = images
        out.append(item)
    return out


def _format(body: Mapping[str, Any]) -> str | dict[str, Any] | None:
    """``response_format`` as Ollama's ``format``: "json" or a JSON schema."""
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema" and isinstance(fmt.get("json_schema"), dict) \
            and isinstance(fmt["json_schema"].get("schema"), dict):
        schema: dict[str, Any] = fmt["json_schema"]["schema"]
        return schema
    raise _bad(f"response_format {fmt!r} is not supported by Ollama", "response_format")


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(data: Mapping[str, Any]) -> dict[str, int]:
    prompt, completion = _count(data.get("prompt_eval_count")), _count(data.get("eval_count"))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _finish_reason(done_reason: Any) -> str:
    # Ollama says "stop" or "length" (num_predict or the context window reached).
    return "length" if done_reason == "length" else "stop"


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _protocol(f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise _protocol(f"{what} is not a JSON object")
    return data


async def _lines(content: aiohttp.StreamReader) -> AsyncGenerator[bytes, None]:
    """Each non-empty line of an NDJSON body as soon as it has arrived.

    aiohttp's ``readline()`` refuses lines longer than its buffer, so split raw chunks here
    (as ``aiproxy.sse.iter_sse`` does for SSE).
    """
    buffer = b""
    async for piece in content.iter_any():
        *lines, buffer = (buffer + piece).split(b"\n")
        if len(buffer) > MAX_LINE_BYTES:
            raise ValueError("an NDJSON line longer than 16 MiB")
        for line in lines:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


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
    options_type = OllamaOptions

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
        # Refuse what we cannot honour rather than answer something the client did not ask.
        if body.get("tools") or body.get("functions"):
            raise _bad("tools are not supported by the ollama-example provider", "tools")
        if body.get("n") not in (None, 1):
            raise _bad("n > 1 is not supported by Ollama", "n")
        payload: dict[str, Any] = {
            "model": self.upstream_model,
            "messages": _messages(body.get("messages")),
            # Ollama streams unless told otherwise, so always say which.
            "stream": stream,
        }
        options: dict[str, Any] = {}
        for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
            if body.get(name) is not None:
                options[name] = body[name]
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None:
            options["num_predict"] = max_tokens
        stop = body.get("stop")
        if stop:
            options["stop"] = [stop] if isinstance(stop, str) else stop
        opts: OllamaOptions = self.options
        if opts.num_ctx is not None:
            options["num_ctx"] = opts.num_ctx
        if options:
            payload["options"] = options
        fmt = _format(body)
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
        try:
            raw = await resp.read()
        except aiohttp.ClientError:
            raise _protocol("the answer was cut off") from None
        finally:
            resp.release()
        data = _json_object(raw, "the answer")
        message = data.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise _protocol("the answer has no message content")
        return ChatResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            # created_at is RFC 3339 with nanoseconds; the time we got it is as good.
            "created": int(time.time()),
            "model": self.model.name,
            "choices": [{"index": 0, "finish_reason": _finish_reason(data.get("done_reason")),
                         "message": {"role": "assistant", "content": message["content"]},
                         "logprobs": None}],
            "usage": _usage(data),
        })

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        payload = orjson.dumps(self.build_request(request, stream=True))
        # An error status raises here, before the first chunk: the core can still fall back.
        resp = await self.send("POST", self.chat_url, data=payload, headers=self.headers)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.model.name}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta,
                                         "finish_reason": finish_reason}]}

        started = done = False
        try:
            async with contextlib.aclosing(_lines(resp.content)) as lines:
                async for line in lines:
                    data = _json_object(line, "a stream line")
                    if "error" in data:
                        # A failure after the answer began arrives as a line, with HTTP 200.
                        raise self.error_from_response(500, line, {})
                    if done:
                        continue  # nothing is expected after the final line; read to EOF
                    if not started:
                        # The role goes out with the first upstream line, not before the
                        # upstream said anything: an early chunk would stop failover.
                        started = True
                        yield chunk({"role": "assistant", "content": ""})
                    message = data.get("message")
                    text = message.get("content") if isinstance(message, dict) else None
                    if isinstance(text, str) and text:
                        yield chunk({"content": text})
                    if data.get("done") is True:
                        done = True
                        yield chunk({}, _finish_reason(data.get("done_reason")))
                        if request.include_usage:
                            yield {**base, "choices": [], "usage": _usage(data)}
        except (aiohttp.ClientError, ValueError) as exc:
            # The connection broke mid-body, or a line outgrew MAX_LINE_BYTES.
            raise _protocol(f"the stream broke ({type(exc).__name__})") from None
        finally:
            # A body read to its end goes back to the pool; anything else (an early aclose(),
            # an error) must close the connection, or its unread rest would poison the pool.
            if done:
                resp.release()
            else:
                resp.close()
        if not done:
            raise _protocol("the stream ended before its final (done) line")

    # -- errors --------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        token = self.model.token
        return text.replace(token, "[redacted]") if token else text

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        """Ollama answers ``{"error": "<message>"}`` with 400, 401, 403, 404, 429, 500, 502."""
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        message = parsed.get("error") if isinstance(parsed, dict) else None
        # An upstream may quote the key it refused: a message must never carry it.
        text = self._redact(message if isinstance(message, str) and message
                            else f"Ollama answered HTTP {status}")
        # The usual mapping fits Ollama: 429 (+ Retry-After) -> RATE_LIMITED, 401/403 -> AUTH,
        # 5xx -> OVERLOADED, other 4xx -> BAD_REQUEST, "context length" wording ->
        # CONTEXT_LENGTH. A 404 ("model 'x' not found": not pulled on this server) stays
        # BAD_REQUEST with upstream_status 404, which the router takes as a misconfigured model
        # and moves on to the next candidate.
        return error_from_status(status, text, headers=headers)
