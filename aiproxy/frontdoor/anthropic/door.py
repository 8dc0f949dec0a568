"""The Messages door's calls into the core: each attempt goes to its candidate natively where
the provider speaks Messages (:class:`SpeaksMessages`), through the chat core otherwise, under
the same routing, limits, retries, failover and accounting as chat completions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiproxy.errors import from_upstream
from aiproxy.frontdoor.anthropic.native import SpeaksMessages
from aiproxy.frontdoor.anthropic.request import MessagesRequest, chat_request, native_body
from aiproxy.frontdoor.anthropic.response import EventTranslator, message_from_chat, openai_usage
from aiproxy.frontdoor.anthropic.stream import MessagesEvents
from aiproxy.frontdoor.anthropic.tokens import estimate_input_tokens
from aiproxy.keys import Grant
from aiproxy.observability import get_logger
from aiproxy.provider import Capability, ChatRequest, ErrorKind, UpstreamError
from aiproxy.record import Record
from aiproxy.routing import RoutedStream, Served
from aiproxy.routing.deadline import deadline
from aiproxy.routing.plan import Route
from aiproxy.routing.router import Router, estimate_tokens

__all__ = ["count_tokens", "create_message", "open_message_stream"]

log = get_logger("aiproxy.messages")


class _Forms:
    """The request in the two forms a candidate may take, each made once, when first needed."""

    def __init__(self, request: MessagesRequest) -> None:
        self.request = request
        self._native: tuple[Mapping[str, Any], bytes] | None = None
        self._chat: ChatRequest | None = None

    @property
    def native(self) -> tuple[Mapping[str, Any], bytes]:
        if self._native is None:
            self._native = native_body(self.request)
        return self._native

    @property
    def chat(self) -> ChatRequest:
        if self._chat is None:
            self._chat = chat_request(self.request)
        return self._chat


async def create_message(router: Router, record: Record, grant: Grant | None,
                         request: MessagesRequest) -> Served[dict[str, Any]]:
    """A whole Messages answer from the first candidate that gives one."""
    forms = _Forms(request)
    length = len(request.raw)

    async def call(route: Route) -> dict[str, Any]:
        provider = route.provider
        if isinstance(provider, SpeaksMessages):
            body, raw = forms.native
            return await provider.messages(body, raw, request.headers)
        response = await provider.chat(forms.chat)
        return message_from_chat(response.data, route.name)

    served = await router.serve(record, grant, request.model, Capability.CHAT, length,
                                estimate_tokens(length, request.body), call,
                                lambda message: openai_usage(message.get("usage")))
    served.result["model"] = served.route.name
    return served


async def _translated(chunks: AsyncIterator[dict[str, Any]], model: str,
                      prompt_estimate: int) -> AsyncIterator[dict[str, Any]]:
    """A chat-core stream as Messages events; closing this closes the provider's stream."""
    translator = EventTranslator(model)
    try:
        async for chunk in chunks:
            for event in translator.feed(chunk):
                yield event
        for event in translator.finish(prompt_estimate):
            yield event
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


async def open_message_stream(router: Router, record: Record, grant: Grant | None,
                              request: MessagesRequest) -> RoutedStream:
    """A Messages event stream, with its first event in hand (see ``Router.open_stream``)."""
    forms = _Forms(request)
    length = len(request.raw)

    def call(route: Route) -> AsyncIterator[dict[str, Any]]:
        provider = route.provider
        if isinstance(provider, SpeaksMessages):
            body, raw = forms.native
            return provider.messages_stream(body, raw, request.headers)
        return _translated(provider.stream(forms.chat), route.name, length // 4)

    return await router.open_stream(record, grant, request.model, Capability.CHAT, length,
                                    estimate_tokens(length, request.body), call,
                                    MessagesEvents())


# A count the upstream could not make for these reasons is the client's to fix; any other
# failure (limits, overload, our credentials) falls back to the estimate.
_CLIENT_ERRORS = frozenset({ErrorKind.BAD_REQUEST, ErrorKind.CONTEXT_LENGTH,
                            ErrorKind.CONTENT_FILTER})


async def count_tokens(router: Router, record: Record, grant: Grant | None,
                       request: MessagesRequest) -> tuple[dict[str, Any], bool]:
    """``({"input_tokens": n}, exact)`` for the model the request would go to first: counted
    by the upstream where it speaks Messages, else estimated. A count is not a generation: it
    takes nothing from the rate limits and is not retried elsewhere."""
    if grant is not None:
        grant.check(request.model)
    allowed = None if grant is None or grant.everything else grant.allows
    route = router.planner.plan(request.model, len(request.raw), Capability.CHAT, allowed)[0]
    record.model, record.provider = route.name, route.model.provider
    provider = route.provider
    if isinstance(provider, SpeaksMessages):
        body, raw = native_body(request)
        try:
            with deadline(route.timeouts.total):
                return await provider.count_tokens(body, raw, request.headers), True
        except TimeoutError:
            log.info("count_tokens_estimated", model=route.name, reason="timeout",
                     request_id=record.request_id)
        except UpstreamError as err:
            err.message = provider.redact(err.message)
            if err.kind in _CLIENT_ERRORS:
                raise from_upstream(err, route.name) from None
            log.info("count_tokens_estimated", model=route.name, reason=err.kind.value,
                     request_id=record.request_id)
    return {"input_tokens": estimate_input_tokens(request.body)}, False
