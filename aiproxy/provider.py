"""The plugin contract: what a provider plugin implements and the values it exchanges with the core.

A plugin imports only this module (and aiohttp). Requests, responses and stream chunks are in
the OpenAI Chat Completions shape; a provider that speaks another dialect translates both ways.
Read ``docs/plugins.md`` for a walk-through; ``PLUGIN_API_VERSION`` changes when this does.
"""

from __future__ import annotations

import base64
import email.utils
import enum
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, ClassVar, TypeVar

import aiohttp
import attrs
import orjson

from aiproxy.config import ConfigError, ModelConfig, structure_options
from aiproxy.sse import SSEEvent, iter_sse

__all__ = [
    "PLUGIN_API_VERSION",
    "Capability",
    "ChatRequest",
    "ChatResponse",
    "ConfigError",
    "EmbeddingsRequest",
    "EmbeddingsResponse",
    "ErrorKind",
    "ImageRequest",
    "ImageResponse",
    "ModelConfig",
    "Provider",
    "RateLimitHint",
    "SSEEvent",
    "StreamChunks",
    "UpstreamError",
    "completion_id",
    "embedding_base64",
    "end_response",
    "error_from_status",
    "image_media_type",
    "iter_sse",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "tool_call_id",
]

# Bumped on any incompatible change to this module. A plugin may check it at import time.
PLUGIN_API_VERSION = 1

#: Connect bound when a model sets none (seconds).
DEFAULT_CONNECT_TIMEOUT = 10.0

T = TypeVar("T")


class Capability(enum.Enum):
    """What a provider can serve; the core answers 400 for what a model does not declare."""

    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    IMAGES = "images"


class ErrorKind(enum.Enum):
    """Why an upstream call failed: the one vocabulary routing decides on."""

    RATE_LIMITED = "rate_limited"  # 429 or a quota: retry later / elsewhere
    OVERLOADED = "overloaded"  # 5xx, 503, 529: retry / fall back
    TIMEOUT = "timeout"  # connect, first token, idle or total bound passed
    CONNECTION = "connection"  # refused, reset, TLS, DNS
    PROTOCOL = "protocol"  # malformed answer, stream cut before its end
    BAD_REQUEST = "bad_request"  # 400/404/413/422: the client's fault, never retried
    AUTH = "auth"  # 401/403 from upstream: our credentials, never retried as-is
    CONTENT_FILTER = "content_filter"  # refused by the provider's safety system
    CONTEXT_LENGTH = "context_length"  # request too long for this model; a larger one may take it

    @property
    def retryable(self) -> bool:
        """True where the same request may succeed on a retry or another candidate."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED, ErrorKind.TIMEOUT, ErrorKind.CONNECTION,
     ErrorKind.PROTOCOL}
)


@attrs.frozen
class RateLimitHint:
    """What an upstream told us of its own limits: nothing left until ``reset_after`` seconds."""

    remaining: int | None = None
    reset_after: float | None = None


class UpstreamError(Exception):
    """An upstream call failed. Raised by providers; routing decides what the client sees.

    ``status`` is the HTTP status the client gets if this error is final (upstream 4xx keep
    theirs; 5xx, connection failures and timeouts become 502/504). ``message`` must never
    contain a token or a URL with credentials.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        provider_name: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status if status is not None else _DEFAULT_STATUS[kind]
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.upstream_status = upstream_status
        # Who failed behind an aggregator (OpenRouter's metadata.provider_name), for messages.
        self.provider_name = provider_name

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    @message.setter
    def message(self, value: str) -> None:
        # Kept in args too, so str(err) never shows what a redaction removed.
        self.args = (value,)

    def __repr__(self) -> str:
        return f"UpstreamError({self.kind.value}, {self.status}, {self.message!r})"


_DEFAULT_STATUS = {
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.OVERLOADED: 502,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.CONNECTION: 502,
    ErrorKind.PROTOCOL: 502,
    ErrorKind.BAD_REQUEST: 400,
    ErrorKind.AUTH: 502,  # our upstream credentials are wrong: not the client's fault
    ErrorKind.CONTENT_FILTER: 400,
    ErrorKind.CONTEXT_LENGTH: 400,
}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _parse_duration(value: str) -> float | None:
    """OpenAI/Groq reset durations: ``1s``, ``6m0s``, ``2m59.56s``, ``20ms``, or plain seconds."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    total, number, i = 0.0, "", 0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if value.startswith("ms", i) else ch
        if unit not in units or not number:
            return None
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    return None if number else total


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHint | None:
    """Read ``x-ratelimit-remaining-*`` / ``x-ratelimit-reset-*`` (OpenAI, Groq, OpenRouter).

    OpenRouter sends ``x-ratelimit-reset`` as a Unix time in milliseconds; OpenAI and Groq send
    durations such as ``6m0s``. Only an exhausted budget (remaining 0) yields a reset.
    """
    remaining: int | None = None
    reset: float | None = None
    for kind in ("requests", "tokens", ""):
        suffix = f"-{kind}" if kind else ""
        raw = headers.get(f"x-ratelimit-remaining{suffix}")
        if raw is None:
            continue
        try:
            left = int(float(raw))
        except ValueError:
            continue
        remaining = left if remaining is None else min(remaining, left)
        if left > 0:
            continue
        raw_reset = headers.get(f"x-ratelimit-reset{suffix}")
        if raw_reset is None:
            continue
        seconds = _parse_duration(raw_reset)
        if seconds is not None and seconds > 1e11:  # epoch milliseconds
            seconds = max(0.0, seconds / 1000 - time.time())
        elif seconds is not None and seconds > 1e9:  # epoch seconds
            seconds = max(0.0, seconds - time.time())
        if seconds is not None:
            reset = seconds if reset is None else max(reset, seconds)
    if remaining is None:
        return None
    return RateLimitHint(remaining=remaining, reset_after=reset if remaining == 0 else None)


def error_from_status(
    status: int,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    code: str | None = None,
    param: str | None = None,
    provider_name: str | None = None,
) -> UpstreamError:
    """The usual mapping of an upstream HTTP error status to an :class:`UpstreamError`."""
    text = f"{message} {code or ''}".lower()
    retry_after = parse_retry_after((headers or {}).get("retry-after"))
    if "context_length" in text or "context length" in text or "too many tokens" in text \
            or "maximum context" in text:
        kind, out = ErrorKind.CONTEXT_LENGTH, 400
        code = code or "context_length_exceeded"
    elif "content_filter" in text or "content management policy" in text \
            or "content_policy" in text:
        kind, out = ErrorKind.CONTENT_FILTER, 400
        code = code or "content_filter"
    elif status == 429:
        kind, out = ErrorKind.RATE_LIMITED, 429
        if retry_after is None and headers:
            hint = parse_rate_limit_headers(headers)
            retry_after = hint.reset_after if hint else None
    elif status in (401, 403):
        kind, out = ErrorKind.AUTH, 502
    elif status == 408:
        kind, out = ErrorKind.TIMEOUT, 504
    elif 400 <= status < 500:
        kind, out = ErrorKind.BAD_REQUEST, status
    else:
        kind, out = ErrorKind.OVERLOADED, 502
    return UpstreamError(kind, message, status=out, code=code, param=param,
                         retry_after=retry_after, upstream_status=status,
                         provider_name=provider_name)


@attrs.frozen
class ChatRequest:
    """A validated OpenAI chat completion request.

    ``body`` is the parsed JSON object; ``raw`` the bytes the client sent, which a provider that
    speaks OpenAI may forward unchanged when the upstream model id equals ``body["model"]``.
    """

    body: Mapping[str, Any]
    raw: bytes
    stream: bool = False

    @property
    def include_usage(self) -> bool:
        """True when the client asked for a final usage chunk on a stream."""
        opts = self.body.get("stream_options")
        return bool(isinstance(opts, dict) and opts.get("include_usage"))

    def upstream_body(self, model_id: str, **overrides: Any) -> bytes:
        """The body to send an OpenAI-compatible upstream, re-encoded only if something changes."""
        if not overrides and self.body.get("model") == model_id:
            return self.raw
        body = dict(self.body)
        body["model"] = model_id
        body.update(overrides)
        return orjson.dumps(body)


@attrs.frozen
class ChatResponse:
    """A complete chat completion in the OpenAI shape (``object: chat.completion``)."""

    data: dict[str, Any]


@attrs.frozen
class EmbeddingsRequest:
    """A validated OpenAI embeddings request (``input`` is a string or a list)."""

    body: Mapping[str, Any]
    raw: bytes


@attrs.frozen
class EmbeddingsResponse:
    """An OpenAI embeddings answer (``object: list`` of ``embedding`` items, ``usage``)."""

    data: dict[str, Any]


@attrs.frozen
class ImageRequest:
    """An OpenAI image generation request (``prompt``, ``n``, ``size``, ``response_format``)."""

    body: Mapping[str, Any]
    raw: bytes


@attrs.frozen
class ImageResponse:
    """Generated images as bytes with their media type; the core builds the client's answer."""

    images: tuple[tuple[bytes, str], ...]


class Provider:
    """Base class of every provider plugin: one instance per configured model.

    Subclasses override what they support and list it in ``capabilities``. ``chat`` and
    ``stream`` must raise :class:`UpstreamError` for every failure (the core treats anything
    else as a bug and answers 502). The core enforces timeouts around these calls, cancels
    them when the client goes away, and handles retries and fallback: a provider makes one
    attempt per call.
    """

    #: What this provider can serve.
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.CHAT})
    #: Used when a model's config has no ``url:``; ``None`` makes ``url:`` required.
    default_url: ClassVar[str | None] = None
    #: Whether the upstream needs ``token:``; ``--check-config`` warns when it is empty (except
    #: for an upstream on this machine).
    requires_token: ClassVar[bool] = True
    #: An attrs class for the model's ``options:``; ``None`` refuses any option.
    options_type: ClassVar[type[Any] | None] = None

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        self.model = model
        self.session = session
        # Set by the core once, when it builds the provider: told when the upstream announces
        # an exhausted budget (``note_rate_limit``); the core parks the model until the reset.
        self.rate_limit_listener: Callable[[RateLimitHint], None] | None = None
        url = model.url or self.default_url
        if not url:
            raise ConfigError([f"{model.name}: url: required for provider {model.provider!r}"])
        self.url: str = url
        self.options: Any = self._structure_options()

    def _structure_options(self) -> Any:
        if self.options_type is None:
            if self.model.options:
                keys = ", ".join(sorted(self.model.options))
                raise ConfigError([f"{self.model.name}: options: provider "
                                   f"{self.model.provider!r} takes no options (got {keys})"])
            return None
        return structure_options(self.model.options, self.options_type,
                                 f"{self.model.name}: options")

    @property
    def upstream_model(self) -> str:
        """The model id this provider's upstream knows the model by."""
        return self.model.upstream_model_id

    @property
    def client_timeout(self) -> aiohttp.ClientTimeout:
        """Connect bound for upstream calls; the core bounds first token, idle and total."""
        connect = self.model.timeouts.connect or DEFAULT_CONNECT_TIMEOUT
        return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect)

    async def send(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> aiohttp.ClientResponse:
        """Make one upstream call; return a 2xx response (caller releases it) or raise.

        Connection failures become ``CONNECTION``/``TIMEOUT`` errors, and a non-2xx answer is read
        and turned into an :class:`UpstreamError` by :meth:`error_from_response`.
        """
        UPSTREAM_CALLED.set(True)
        # Redirects are never followed: a credential header (api-key, x-goog-api-key) would go
        # along to another host, 307/308 would re-send the prompt, and the other server's
        # answer would be served as the model's. An operator configures the final URL.
        kwargs["allow_redirects"] = False
        try:
            resp = await self.session.request(method, url, data=data, headers=headers,
                                              timeout=self.client_timeout, **kwargs)
        except TimeoutError:
            raise UpstreamError(ErrorKind.TIMEOUT, f"{self.model.name}: connect timed out",
                                status=504) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(ErrorKind.CONNECTION,
                                f"{self.model.name}: cannot reach upstream "
                                f"({type(exc).__name__})") from None
        if resp.status < 300:
            self.note_rate_limit(resp.headers)
            if resp.content_type not in STREAM_CONTENT_TYPES:
                # Read the whole body here, bounded: the plugin's resp.read()/json() then
                # return it without reading again. A stream is bounded per event (sse.py).
                limit = self.model.http_client_config.max_response_size or MAX_RESPONSE_SIZE
                await _read_bounded(resp, limit, self.model.name)
            return resp
        if 300 <= resp.status < 400:
            resp.release()
            raise UpstreamError(ErrorKind.PROTOCOL, f"{self.model.name}: the upstream answered "
                                f"a redirect (HTTP {resp.status}), which aiproxy does not "
                                "follow: configure the final URL", status=502,
                                upstream_status=resp.status)
        try:
            body = await _read_bounded(resp, MAX_ERROR_SIZE, self.model.name, truncate=True)
        except (aiohttp.ClientError, TimeoutError, UpstreamError):
            body = b""
        finally:
            resp.release()
        err = self.error_from_response(resp.status, body, resp.headers)
        err.message = self.redact(err.message)
        raise err

    def redact(self, text: str) -> str:
        """``text`` without the model's token: upstreams like to quote a rejected key back."""
        token = self.model.token
        if token and len(token) >= 8 and token in text:
            text = text.replace(token, "[redacted]")
        return text

    def note_rate_limit(self, headers: Mapping[str, str]) -> None:
        """Pass the upstream's ``x-ratelimit-*`` headers on to the core (``send`` does this for
        every successful answer): an exhausted budget parks the model until its reset."""
        listener = self.rate_limit_listener
        if listener is None or not ("x-ratelimit-remaining-requests" in headers
                                    or "x-ratelimit-remaining-tokens" in headers
                                    or "x-ratelimit-remaining" in headers):
            return
        hint = parse_rate_limit_headers(headers)
        if hint is not None and hint.remaining == 0 and hint.reset_after:
            listener(hint)

    def error_from_response(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError:
        """Map an upstream error answer to an :class:`UpstreamError`.

        The default reads the OpenAI envelope ``{"error": {"message", "code", "param"}}``;
        plugins override it for their provider's own error shape.
        """
        message, code, param = "", None, None
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        err = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or "")
            code = str(err["code"]) if err.get("code") is not None else None
            param = str(err["param"]) if err.get("param") is not None else None
        elif isinstance(err, str):
            message = err
        elif isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            message = parsed["message"]
        if not message:
            message = f"upstream answered HTTP {status}"
        return error_from_status(status, message, headers=headers, code=code, param=param)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        raise NotImplementedError  # pragma: no cover - every chat provider overrides it

    def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        """Yield OpenAI ``chat.completion.chunk`` objects; end only when the answer is complete.

        Yield nothing before the upstream has answered: until the first chunk the core may
        still fall over to another model. Raise :class:`UpstreamError` (kind ``PROTOCOL``) if
        the upstream stream is cut before its end. Closing the iterator early (``aclose``)
        must release the upstream connection.
        """
        raise NotImplementedError  # pragma: no cover

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        raise NotImplementedError  # pragma: no cover

    async def images(self, request: ImageRequest) -> ImageResponse:
        raise NotImplementedError  # pragma: no cover

    async def close(self) -> None:
        """Release what the provider holds beyond the shared session (tokens, own sessions)."""


# The largest upstream answer read whole, unless a model's http_client_config says otherwise.
MAX_RESPONSE_SIZE = 64 * 1024 * 1024
# Answers read as they come (streams); anything else is read whole, bounded, by send().
STREAM_CONTENT_TYPES = frozenset({"text/event-stream", "application/x-ndjson",
                                  "application/jsonl", "application/json-seq",
                                  "application/stream+json"})
# An error answer is read up to this much (its message is all the core uses).
MAX_ERROR_SIZE = 1024 * 1024

# True once a provider's call reached :meth:`Provider.send` in this task: the core tells a
# translation failure (the client's request could not be expressed: a 400 that never counts
# against the model) from a failure after the upstream was called.
UPSTREAM_CALLED: ContextVar[bool] = ContextVar("aiproxy_upstream_called", default=False)


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int, name: str, *,
                        truncate: bool = False) -> bytes:
    """The body of ``resp``, at most ``limit`` bytes: past it, an :class:`UpstreamError` (or,
    with ``truncate``, the first ``limit`` bytes and the connection closed). The body is also
    kept where ``resp.read()`` finds it."""
    declared = resp.content_length
    if declared is not None and declared > limit and not truncate:
        resp.close()
        raise UpstreamError(ErrorKind.PROTOCOL, f"{name}: the upstream answer is larger "
                            f"({declared} bytes) than the bound of {limit} bytes", status=502)
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in resp.content.iter_chunked(256 * 1024):
            size += len(chunk)
            if size > limit:
                resp.close()
                if truncate:
                    parts.append(chunk[: len(chunk) - (size - limit)])
                    break
                raise UpstreamError(ErrorKind.PROTOCOL, f"{name}: the upstream answer grew "
                                    f"past the bound of {limit} bytes", status=502)
            parts.append(chunk)
    except (aiohttp.ClientError, TimeoutError):
        resp.close()
        raise
    body = b"".join(parts)
    resp._body = body  # what ClientResponse.read() returns once read
    return body


# --- Building OpenAI answers ----------------------------------------------------------------
# What every provider that translates another dialect needs in the same form.


def completion_id() -> str:
    """A new chat completion id in OpenAI's form: ``chatcmpl-`` and 32 hex digits."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def tool_call_id() -> str:
    """A new id for a tool call the upstream sent without one: ``call_`` and 24 hex digits.

    The client needs one to answer the call with (the ``tool_call_id`` of its ``tool`` message).
    """
    return f"call_{uuid.uuid4().hex[:24]}"


def _now() -> int:
    return int(time.time())


@attrs.frozen
class StreamChunks:
    """Builds the ``chat.completion.chunk`` objects of one streamed answer, all with the same
    ``id``, ``created`` and ``model`` (``docs/plugins.md``, section 7).

    Make one per answer once the upstream has answered: ``StreamChunks(self.model.name)``.
    ``logprobs=True`` adds ``"logprobs": None`` to every choice, as OpenAI's own chunks have it.
    """

    model: str
    id: str = attrs.field(factory=completion_id)
    created: int = attrs.field(factory=_now)
    logprobs: bool = False

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, *,
              index: int = 0) -> dict[str, Any]:
        """A chunk of one choice: ``delta`` (``{}`` beside the ``finish_reason``)."""
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason}
        if self.logprobs:
            choice["logprobs"] = None
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [choice]}

    def role(self, index: int = 0) -> dict[str, Any]:
        """The opening chunk of a choice: ``{"role": "assistant", "content": ""}``."""
        return self.chunk({"role": "assistant", "content": ""}, index=index)

    def usage(self, usage: Mapping[str, Any]) -> dict[str, Any]:
        """The usage chunk (``choices: []``): last, and only if ``request.include_usage``."""
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": usage}

    def end(self, finish_reason: str, usage: Mapping[str, Any] | None, *,
            include_usage: bool, role_sent: bool = True) -> list[dict[str, Any]]:
        """The chunks that close a one-choice answer: the opening chunk if none went out yet
        (``role_sent`` false), the ``finish_reason`` chunk, then the usage chunk if the client
        asked for it (``include_usage``) and ``usage`` is known."""
        out = [] if role_sent else [self.role()]
        out.append(self.chunk({}, finish_reason))
        if include_usage and usage is not None:
            out.append(self.usage(usage))
        return out


def end_response(resp: aiohttp.ClientResponse, *, complete: bool) -> None:
    """Let go of a streamed upstream response: call it in the ``finally`` around reading it.

    A ``complete`` body (read to its end) releases the connection to the pool for reuse; any
    other end (``aclose()``, an error, a cut) closes it, so the upstream stops generating and no
    half-read body goes back to the pool.
    """
    if complete:
        resp.release()
    else:
        resp.close()


def embedding_base64(vector: Sequence[float]) -> str:
    """An embedding as OpenAI answers ``encoding_format: base64``: little-endian float32 bytes,
    base64-encoded (the form its SDKs decode)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def image_media_type(data: bytes) -> str | None:
    """The media type of image bytes by their magic number (PNG, JPEG, WebP, GIF), else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None
