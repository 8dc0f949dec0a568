"""The ``anthropic`` provider: Claude over Anthropic's Messages API, both as OpenAI chat
completions (translated) and natively, for the Messages front door (``/v1/messages``).

- Authentication and versioning: https://docs.anthropic.com/en/api/overview (``x-api-key``,
  ``anthropic-version: 2023-06-01``, ``anthropic-beta`` for beta features)
- Messages: https://docs.anthropic.com/en/api/messages; streaming:
  https://docs.anthropic.com/en/api/messages-streaming; token counting:
  https://docs.anthropic.com/en/api/messages-count-tokens
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, Literal

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
    UpstreamResponse,
    end_response,
    iter_sse,
)

from .errors import error_from_event, error_from_response, rate_limit_hint
from .models import profile_of
from .request import CHAT_PARAMETERS, THINKING_MIN, Plan, Settings, messages_body
from .response import ChunkTranslator, chat_completion

__all__ = ["DEFAULT_MAX_TOKENS", "DEFAULT_VERSION", "AnthropicOptions", "AnthropicProvider"]

#: ``anthropic-version`` sent when neither the model's options nor the client name one.
DEFAULT_VERSION = "2023-06-01"
#: ``max_tokens`` when an OpenAI client sets none (Anthropic requires one); with thinking, the
#: thinking budget comes on top.
DEFAULT_MAX_TOKENS = 4096
#: Thinking budgets for OpenAI's reasoning_effort values (the budget form of thinking).
DEFAULT_BUDGETS = {"minimal": THINKING_MIN, "low": 2048, "medium": 8192, "high": 16384,
                   "xhigh": 32768}


def _positive(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be >= 1 (got {value!r})")


def _budgets(inst: object, attribute: attrs.Attribute[Any], value: Mapping[str, int]) -> None:
    for effort, budget in value.items():
        if effort not in DEFAULT_BUDGETS:
            raise ValueError(f"{attribute.name}: unknown effort {effort!r} (known: "
                             f"{', '.join(DEFAULT_BUDGETS)})")
        if budget < THINKING_MIN:
            raise ValueError(f"{attribute.name}.{effort} must be >= {THINKING_MIN}")


@attrs.frozen
class AnthropicOptions:
    """A Claude model's ``options:``; unset ones come from the model id (see ``models.py``)."""

    version: str = DEFAULT_VERSION  # anthropic-version
    betas: tuple[str, ...] = ()  # anthropic-beta values sent on every call
    headers: Mapping[str, str] = attrs.field(factory=dict)
    max_tokens: int = attrs.field(default=DEFAULT_MAX_TOKENS, validator=_positive)
    prefill: bool | None = None  # accepts a trailing assistant turn (continuation)
    thinking: Literal["budget", "adaptive"] | None = None
    sampling: bool | None = None  # sends temperature / top_p / top_k
    structured_output: Literal["native", "tool"] | None = None
    thinking_budgets: Mapping[str, int] = attrs.field(factory=dict, validator=_budgets)


def _api_root(url: str) -> str:
    """``https://api.anthropic.com``, also when configured as ``.../v1`` or a full endpoint."""
    root = url.strip().rstrip("/")
    for suffix in ("/v1/messages/count_tokens", "/v1/messages", "/v1"):
        if root.endswith(suffix):
            return root[: -len(suffix)]
    return root


class AnthropicProvider(Provider):
    """Claude models on Anthropic's API (or an Anthropic-compatible one: ``url:``)."""

    # Written for the plugin contract's version 2 (the translation kit's names it imports are
    # in version 1 too).
    plugin_api_version = 2
    capabilities = frozenset({Capability.CHAT})
    default_url = "https://api.anthropic.com"
    options_type = AnthropicOptions
    chat_parameters = CHAT_PARAMETERS

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(model, session)
        options: AnthropicOptions = self.options
        root = _api_root(self.url)
        self.messages_url = f"{root}/v1/messages"
        self.count_url = f"{root}/v1/messages/count_tokens"
        profile = profile_of(self.upstream_model)
        self.settings = Settings(
            model_name=model.name, upstream_model=self.upstream_model,
            max_tokens=options.max_tokens,
            prefill=profile.prefill if options.prefill is None else options.prefill,
            thinking=options.thinking or profile.thinking,
            sampling=profile.sampling if options.sampling is None else options.sampling,
            structured=options.structured_output or profile.structured, xhigh=profile.xhigh,
            budgets={**DEFAULT_BUDGETS, **options.thinking_budgets})
        headers = {"Content-Type": "application/json", "anthropic-version": options.version}
        if model.token:
            headers["x-api-key"] = model.token
        if options.betas:
            headers["anthropic-beta"] = ",".join(options.betas)
        headers.update(options.headers)
        self.headers = headers

    @property
    def accepts_continuation(self) -> bool:
        """Whether a conversation may end with an assistant turn that the model continues
        (assistant prefill): the core's mid-stream continuation may land here only if so."""
        return self.settings.prefill

    # --- upstream ----------------------------------------------------------------------

    def note_rate_limit(self, headers: Mapping[str, str]) -> None:
        """``anthropic-ratelimit-*-remaining: 0`` parks the model until that budget resets."""
        listener = self.rate_limit_listener
        if listener is None:
            return
        hint = rate_limit_hint(headers)
        if hint is not None and hint.remaining == 0 and hint.reset_after:
            listener(hint)

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        return error_from_response(status, body, headers, self.model.name)

    def _native_headers(self, client: Mapping[str, str], stream: bool) -> dict[str, str]:
        headers = dict(self.headers)
        version = client.get("anthropic-version")
        if version:
            headers["anthropic-version"] = version
        betas = [b for b in (headers.get("anthropic-beta"), client.get("anthropic-beta")) if b]
        if betas:
            headers["anthropic-beta"] = ",".join(betas)
        if stream:
            headers["Accept"] = "text/event-stream"
        return headers

    async def _json(self, resp: UpstreamResponse) -> dict[str, Any]:
        try:
            data = orjson.loads(await resp.read())
        except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream answer is not valid JSON "
                                f"({type(exc).__name__})") from None
        finally:
            resp.release()
        if not isinstance(data, dict):
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream answer is not a JSON object")
        if data.get("type") == "error":  # an error envelope inside a 200 answer
            raise error_from_event(data)
        return data

    async def _events(self, resp: UpstreamResponse
                      ) -> AsyncGenerator[dict[str, Any], None]:
        """The stream's events as JSON objects; a cut raises PROTOCOL."""
        events = iter_sse(resp.content)
        try:
            async with contextlib.aclosing(events) as sse:
                async for event in sse:
                    if not event.data.strip():
                        continue
                    try:
                        data = orjson.loads(event.data)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(ErrorKind.PROTOCOL, "the upstream sent a stream "
                                            "event that is not JSON") from None
                    if not isinstance(data, dict):
                        raise UpstreamError(ErrorKind.PROTOCOL, "the upstream sent a stream "
                                            "event that is not an object")
                    data.setdefault("type", event.event)
                    yield data
        except (aiohttp.ClientError, ValueError) as exc:
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream stream broke "
                                f"({type(exc).__name__})") from None

    def _body(self, body: Mapping[str, Any], raw: bytes) -> bytes:
        if body.get("model") == self.upstream_model:
            return raw  # the client's own bytes, untouched
        return orjson.dumps({**body, "model": self.upstream_model})

    # --- OpenAI chat, translated ---------------------------------------------------------

    def _plan(self, request: ChatRequest, *, stream: bool) -> Plan:
        return messages_body(request.body, self.settings, stream=stream)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        plan = self._plan(request, stream=False)
        resp = await self.send("POST", self.messages_url, data=orjson.dumps(plan.body),
                               headers=self.headers)
        message = await self._json(resp)
        return ChatResponse(chat_completion(message, self.model.name, plan))

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        plan = self._plan(request, stream=True)
        resp = await self.send("POST", self.messages_url, data=orjson.dumps(plan.body),
                               headers={**self.headers, "Accept": "text/event-stream"})
        translator = ChunkTranslator(self.model.name, plan,
                                     include_usage=request.include_usage)
        try:
            async with contextlib.aclosing(self._events(resp)) as events:
                async for event in events:
                    for chunk in translator.feed(event):
                        yield chunk
                    if translator.done:
                        break
            if not translator.done:
                raise UpstreamError(ErrorKind.PROTOCOL,
                                    "the upstream stream ended before message_stop")
        finally:
            end_response(resp, complete=translator.done)

    # --- the Messages API, natively (the /v1/messages front door) ----------------------

    async def messages(self, body: Mapping[str, Any], raw: bytes,
                       headers: Mapping[str, str]) -> dict[str, Any]:
        """One Messages call: the client's request (model swapped), the upstream's answer."""
        resp = await self.send("POST", self.messages_url, data=self._body(body, raw),
                               headers=self._native_headers(headers, stream=False))
        message = await self._json(resp)
        if message.get("type") != "message" or not isinstance(message.get("content"), list):
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream answer is not a message")
        return message

    async def messages_stream(self, body: Mapping[str, Any], raw: bytes,
                              headers: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        """The upstream's stream events as they come, ``error`` events raised. Nothing is
        yielded before the first content delta (``message_start`` and the first block's start
        wait for it), so a failure before any token still falls over invisibly."""
        resp = await self.send("POST", self.messages_url, data=self._body(body, raw),
                               headers=self._native_headers(headers, stream=True))
        held: list[dict[str, Any]] | None = []
        complete = False
        try:
            async with contextlib.aclosing(self._events(resp)) as events:
                async for event in events:
                    kind = event.get("type")
                    if kind == "error":
                        raise error_from_event(event)
                    if held is not None:
                        if kind == "ping":
                            continue
                        held.append(event)
                        if kind not in ("content_block_delta", "message_delta",
                                        "message_stop"):
                            continue
                        for waiting in held:
                            yield waiting
                        held = None
                    else:
                        yield event
                    if kind == "message_stop":
                        complete = True
                        break
            if not complete:
                raise UpstreamError(ErrorKind.PROTOCOL,
                                    "the upstream stream ended before message_stop")
        finally:
            end_response(resp, complete=complete)

    async def count_tokens(self, body: Mapping[str, Any], raw: bytes,
                           headers: Mapping[str, str]) -> dict[str, Any]:
        """``POST /v1/messages/count_tokens``: ``{"input_tokens": n}``."""
        resp = await self.send("POST", self.count_url, data=self._body(body, raw),
                               headers=self._native_headers(headers, stream=False))
        answer = await self._json(resp)
        if not isinstance(answer.get("input_tokens"), int):
            raise UpstreamError(ErrorKind.PROTOCOL, "the upstream count has no input_tokens")
        return answer
