"""The plugin contract: what a provider plugin implements, and the one module it imports.

- What a plugin **implements**: a :class:`Provider` subclass, its class attributes (what it
  serves and takes) and its methods (``chat``, ``stream``, ... and ``error_from_response``).
- The **values** it exchanges with the core: requests, responses, stream chunks in the OpenAI
  Chat Completions shape, and :class:`UpstreamError` for every failure.
- The **helpers** it may use: the translation kit (:mod:`aiproxy.kit`), re-exported here.
- What only the **core** sets or calls (``rate_limit_listener``, ``upstream_client``,
  ``note_rate_limit``, ``redact``): a plugin neither sets nor overrides them.

Read ``docs/plugins.md`` for a walk-through; ``PLUGIN_API_VERSION`` changes when this does.
"""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextvars import ContextVar
from typing import Any, ClassVar

import aiohttp
import attrs
import orjson

from aiproxy.config import ConfigError, ModelConfig, structure_options
from aiproxy.kit import (
    OPENAI_CHAT_PARAMETERS,
    OPENAI_EMBEDDING_PARAMETERS,
    ROLES,
    DataURL,
    ErrorKind,
    ErrorRule,
    ErrorTable,
    Event,
    FunctionTool,
    Message,
    Parameters,
    Part,
    RateLimitHint,
    StreamAssembler,
    StreamChunks,
    ToolCall,
    ToolChoice,
    UpstreamError,
    UpstreamFailure,
    assistant_message,
    bad_request,
    chat_completion,
    classify,
    completion_id,
    data_url,
    embedding_base64,
    embedding_encoding,
    embedding_texts,
    embeddings_answer,
    end_response,
    error_from_status,
    error_json,
    function_tools,
    image_media_type,
    is_default,
    json_object,
    max_tokens_of,
    messages_of,
    openai_finish_reason,
    openai_tool_call,
    openai_usage,
    parse_rate_limit_headers,
    parse_retry_after,
    parts_of,
    protocol_error,
    read_body,
    stop_of,
    text_of,
    token_count,
    tool_call_id,
    tool_choice_of,
)
from aiproxy.secrets import Secrets
from aiproxy.sse import SSEEvent, iter_sse
from aiproxy.upstream import UpstreamClient, UpstreamResponse, handles

# The contract: what a plugin implements and the values it exchanges.
__all__ = [
    "MALFORMED_EVENT",
    "PLUGIN_API_VERSION",
    "SUPPORTED_PLUGIN_API_VERSIONS",
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
    "UpstreamError",
    "UpstreamResponse",
]
# The kit (aiproxy.kit): what a plugin may use.
__all__ += [
    "OPENAI_CHAT_PARAMETERS",
    "OPENAI_EMBEDDING_PARAMETERS",
    "ROLES",
    "DataURL",
    "ErrorRule",
    "ErrorTable",
    "Event",
    "FunctionTool",
    "Message",
    "Parameters",
    "Part",
    "SSEEvent",
    "StreamAssembler",
    "StreamChunks",
    "ToolCall",
    "ToolChoice",
    "UpstreamFailure",
    "assistant_message",
    "bad_request",
    "chat_completion",
    "classify",
    "completion_id",
    "data_url",
    "embedding_base64",
    "embedding_encoding",
    "embedding_texts",
    "embeddings_answer",
    "end_response",
    "error_from_status",
    "error_json",
    "function_tools",
    "image_media_type",
    "is_default",
    "iter_sse",
    "json_object",
    "max_tokens_of",
    "messages_of",
    "openai_finish_reason",
    "openai_tool_call",
    "openai_usage",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "parts_of",
    "protocol_error",
    "read_body",
    "stop_of",
    "structure_options",
    "text_of",
    "token_count",
    "tool_call_id",
    "tool_choice_of",
]

#: The version of this contract. A plugin declares the one it was written for
#: (``Provider.plugin_api_version``); the registry refuses a plugin whose version is not in
#: ``SUPPORTED_PLUGIN_API_VERSIONS``. Bumped on any incompatible change (CHANGELOG.md, "Plugin
#: API", says what changed and what to do).
PLUGIN_API_VERSION = 2
#: The plugin API versions this core runs: a plugin written for another one is a config error.
SUPPORTED_PLUGIN_API_VERSIONS = frozenset({2})

#: Connect bound when a model sets none (seconds).
DEFAULT_CONNECT_TIMEOUT = 10.0


class Capability(enum.Enum):
    """What a provider can serve; the core answers 400 for what a model does not declare."""

    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    IMAGES = "images"


@attrs.frozen
class ChatRequest:
    """A validated OpenAI chat completion request.

    ``body`` is the parsed JSON object; ``raw`` the bytes the client sent, which a provider that
    speaks OpenAI may forward unchanged when the upstream model id equals ``body["model"]``.
    """

    body: Mapping[str, Any]
    raw: bytes
    stream: bool = False
    #: True when the core continues a broken stream: the last message is an assistant turn
    #: holding the text already relayed, to be continued (not answered) in the provider's
    #: documented way (assistant prefill, ``continue_final_message``, prefix completion).
    continuation: bool = False

    @property
    def include_usage(self) -> bool:
        """True when the client asked for a final usage chunk on a stream."""
        opts = self.body.get("stream_options")
        return bool(isinstance(opts, dict) and opts.get("include_usage"))

    def upstream_body(self, model_id: str, **overrides: Any) -> bytes:
        """The body to send an OpenAI-compatible upstream, re-encoded only if something changes
        (a new model id alone is written into the client's bytes where that is exact)."""
        if not overrides:
            model = self.body.get("model")
            if model == model_id:
                return self.raw
            if isinstance(model, str):
                swapped = _swap_model(self.raw, model, model_id)
                if swapped is not None:
                    return swapped
        body = dict(self.body)
        body["model"] = model_id
        body.update(overrides)
        return orjson.dumps(body)

    def with_usage_requested(self) -> ChatRequest:
        """This stream request asking for the final usage chunk
        (``stream_options.include_usage``), whatever the client asked."""
        if self.include_usage:
            return self
        body = dict(self.body)
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        raw = _add_usage_option(self.raw) if "stream_options" not in self.body else None
        # Built directly, not by attrs.evolve (which looks the fields up on every call: ~2 µs
        # of a stream's opening); tests/test_body_edits.py checks every other field is kept.
        return ChatRequest(body, raw if raw is not None else orjson.dumps(body), self.stream,
                           self.continuation)


# Byte-level edits of a client's JSON body, used where they give exactly what re-encoding the
# parsed body would mean to the upstream, for a fraction of the cost. The body was validated
# (no repeated watched keys, see http/body.py); a body with \u escapes may spell a key in
# another way, and is re-encoded instead.
_JSON_SPACE = b" \t\r\n"
_UNICODE_ESCAPE = re.compile(rb"\\u")
_MODEL_KEY = re.compile(rb'"model"')


def has_unicode_escape(raw: bytes) -> bool:
    """Whether ``raw`` holds a ``\\u`` (a JSON escape that may spell a key another way).
    Most bodies have no backslash at all, which ``bytes.find`` answers by memchr; for the
    others the compiled pattern is ~2.5x faster than ``in`` (whose search stops at every
    "u" of the text): a long prompt paid ~0.8 ns a byte for each such test."""
    return raw.find(b"\\") >= 0 and _UNICODE_ESCAPE.search(raw) is not None


def _swap_model(raw: bytes, model: str, model_id: str) -> bytes | None:
    """``raw`` with the value of its top-level ``"model"`` replaced, or ``None``."""
    first = raw.find(b'"model"')
    # With no escapes, the one "model" is the top-level key (it is present). (The pattern
    # looks for a second one ~1.7x faster than bytes.count over a long prompt.)
    if first < 0 or _MODEL_KEY.search(raw, first + 7) is not None or has_unicode_escape(raw):
        return None
    at = first + 7
    while at < len(raw) and raw[at] in _JSON_SPACE:
        at += 1
    if raw[at:at + 1] != b":":
        return None  # "model" was a value, not the key
    at += 1
    while at < len(raw) and raw[at] in _JSON_SPACE:
        at += 1
    old = orjson.dumps(model)
    if not raw.startswith(old, at):
        return None  # written with other escapes than orjson's
    return raw[:at] + orjson.dumps(model_id) + raw[at + len(old):]


def _add_usage_option(raw: bytes) -> bytes | None:
    """``raw`` (an object without ``stream_options``) with ``stream_options.include_usage``
    true as its first member, or ``None``.

    The caller knows the parsed object has no ``stream_options`` member, however ``raw``
    spells its keys, so a new first member adds exactly that one: nothing in the rest of
    ``raw`` (the words "stream_options" in a prompt, \\u escapes) needs looking at.
    tests/test_body_edits.py checks the result parses to the object asked for."""
    # The object's opening brace: the first byte, unless whitespace comes first (lstrip copies).
    start = 0 if raw[:1] == b"{" else len(raw) - len(raw.lstrip(_JSON_SPACE))
    if raw[start:start + 1] != b"{":
        return None
    if raw[start + 1:start + 65].lstrip(_JSON_SPACE)[:1] in (b"}", b""):
        return None  # an empty object (or one this edit cannot see into): re-encoded
    return raw[:start + 1] + b'"stream_options":{"include_usage":true},' + raw[start + 1:]


#: What a plugin yields from ``stream()`` in place of an event it could not parse (not valid
#: JSON): the core drops it, counts it, and only repeated ones break the stream.
#: It is compared by identity: a plugin yields this very object and never changes it.
MALFORMED_EVENT: dict[str, Any] = {"object": "aiproxy.malformed_event"}


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

    A subclass declares itself in class attributes and implements what it serves (``chat``,
    ``stream``, ``embeddings``, ``images``), each raising :class:`UpstreamError` for every
    failure (the core treats anything else as a bug and answers 502). The core enforces
    timeouts around these calls, cancels them when the client goes away, and handles retries
    and fallback: a provider makes one attempt per call.
    """

    # --- What a plugin declares ---------------------------------------------------------------

    #: The ``PLUGIN_API_VERSION`` the plugin was written for: the registry refuses a plugin
    #: whose version this core does not run (``SUPPORTED_PLUGIN_API_VERSIONS``), naming it.
    plugin_api_version: ClassVar[int | None] = None
    #: What this provider can serve.
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.CHAT})
    #: Used when a model's config has no ``url:``; ``None`` makes ``url:`` required.
    default_url: ClassVar[str | None] = None
    #: Whether the upstream needs ``token:``; ``--check-config`` warns when it is empty (except
    #: for an upstream on this machine).
    requires_token: ClassVar[bool] = True

    #: An attrs class for the model's ``options:``; ``None`` refuses any option.
    options_type: ClassVar[type[Any] | None] = None
    #: The OpenAI chat parameters it translates, drops or refuses (:class:`Parameters`); the
    #: plugin calls ``chat_parameters.check(body)`` first. ``None``: it forwards the request
    #: as sent (an OpenAI-compatible upstream judges it).
    chat_parameters: ClassVar[Parameters | None] = None
    #: The same for embeddings requests.
    embedding_parameters: ClassVar[Parameters | None] = None

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        self.model = model
        self.session = session
        # Set by the core once, when it builds the provider: told when the upstream announces
        # an exhausted budget (``note_rate_limit``); the core parks the model until the reset.
        self.rate_limit_listener: Callable[[RateLimitHint], None] | None = None
        # Set by the core once, when it builds the provider: its pooled upstream client, which
        # ``send`` uses for plain calls (``None``: every call goes through ``session``).
        self.upstream_client: UpstreamClient | None = None
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

    # --- What a plugin uses ---------------------------------------------------------------------
    # ``self.model`` (its ModelConfig), ``self.url``, ``self.options``, ``self.session``, and:

    @property
    def upstream_model(self) -> str:
        """The model id this provider's upstream knows the model by."""
        return self.model.upstream_model_id

    @property
    def client_timeout(self) -> aiohttp.ClientTimeout:
        """Connect bound for upstream calls; the core bounds first token, idle and total."""
        timeout = self.__dict__.get("_aiproxy_client_timeout")
        if timeout is None:  # built once: the model's config never changes under a provider
            connect = self.model.timeouts.connect or DEFAULT_CONNECT_TIMEOUT
            timeout = self.__dict__["_aiproxy_client_timeout"] = aiohttp.ClientTimeout(
                total=None, connect=connect, sock_connect=connect)
        return timeout

    async def send(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> UpstreamResponse:
        """Make one upstream call; return a 2xx response (caller releases it) or raise.

        The call goes over the core's pooled upstream client (:mod:`aiproxy.upstream`) when
        the provider was built by the core and the call is plain (a ``bytes`` body or none,
        ``headers``, at most ``ssl=``); any other ``aiohttp`` keyword goes through
        ``self.session``. Either way the answer is an :class:`UpstreamResponse`.

        Connection failures become ``CONNECTION``/``TIMEOUT`` errors, and a non-2xx answer is read
        and turned into an :class:`UpstreamError` by :meth:`error_from_response`.
        """
        UPSTREAM_CALLED.set(True)
        # Redirects are never followed: a credential header (api-key, x-goog-api-key) would go
        # along to another host, 307/308 would re-send the prompt, and the other server's
        # answer would be served as the model's. An operator configures the final URL.
        client = self.upstream_client
        try:
            if client is not None and handles(data, kwargs):
                resp: UpstreamResponse = await client.request(
                    method, url, data=data, headers=headers, tls=kwargs.get("ssl", True),
                    connect_timeout=self.client_timeout.sock_connect)
            else:
                kwargs["allow_redirects"] = False
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

    @property
    def accepts_continuation(self) -> bool:
        """Whether this provider's upstream continues a conversation that ends with an
        assistant turn (see ``ChatRequest.continuation``), as its API documents; a model's
        ``continuation:`` overrides it. A model not known to accept one is never sent one."""
        return False

    # --- What only the core calls ---------------------------------------------------------------
    # ``rate_limit_listener`` and ``upstream_client`` (set by the core when it builds the
    # provider), ``redact`` and ``note_rate_limit`` (called by ``send``): a plugin neither
    # sets nor overrides them.

    def redact(self, text: str) -> str:
        """``text`` without the model's credentials (its token, each half of a
        ``client_id:secret`` one, credential options and headers): upstreams like to quote a
        rejected key back. The same scrubbing the core applies to everything that leaves the
        proxy (``aiproxy.secrets``)."""
        secrets = self.__dict__.get("_aiproxy_secrets")
        if secrets is None:
            secrets = self.__dict__["_aiproxy_secrets"] = Secrets.of(self.model.token,
                                                                  self.model.options)
        return secrets.scrub(text)

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

    # --- What a plugin implements ---------------------------------------------------------------

    def error_from_response(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError:
        """Map an upstream error answer to an :class:`UpstreamError`.

        The default reads the OpenAI envelope ``{"error": {"message", "code", "param"}}``;
        plugins override it for their provider's own error shape: read the body into an
        :class:`UpstreamFailure` and :func:`classify` it with the plugin's :class:`ErrorTable`.
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
        """One plain chat completion: one upstream attempt, an OpenAI ``chat.completion``."""
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
        """The embeddings of ``request``: if ``EMBEDDINGS`` is in ``capabilities``."""
        raise NotImplementedError  # pragma: no cover

    async def images(self, request: ImageRequest) -> ImageResponse:
        """The images of ``request``, as bytes: if ``IMAGES`` is in ``capabilities``."""
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


async def _read_bounded(resp: UpstreamResponse, limit: int, name: str, *,
                        truncate: bool = False) -> bytes:
    """The body of ``resp``, at most ``limit`` bytes: past it, an :class:`UpstreamError` (or,
    with ``truncate``, the first ``limit`` bytes and the connection closed). The body is also
    kept where ``resp.read()`` finds it."""
    declared = resp.content_length
    if declared is not None and declared > limit and not truncate:
        resp.close()
        raise UpstreamError(ErrorKind.PROTOCOL, f"{name}: the upstream answer is larger "
                            f"({declared} bytes) than the bound of {limit} bytes", status=502)
    if declared is not None and declared <= limit and "Content-Encoding" not in resp.headers:
        # A declared length within the bound: aiohttp's parser delivers exactly that many
        # bytes (a longer body is a protocol error), so one read is bounded already.
        try:
            return await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            resp.close()
            raise
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
