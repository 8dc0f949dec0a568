"""The Responses API front door: requests (:mod:`.request`), their translation to chat and
back (:mod:`.convert`, :mod:`.events`), and the stored conversations (:mod:`.store`)."""

from __future__ import annotations

from aiproxy.frontdoor.responses.convert import Turn, chat_usage, from_chat, skeleton, to_chat
from aiproxy.frontdoor.responses.events import TERMINAL, ResponseEvents, translate_stream
from aiproxy.frontdoor.responses.request import ResponsesRequest, new_id, parse_request
from aiproxy.frontdoor.responses.store import (
    BrokenChain,
    MemoryResponseStore,
    ResponseStore,
    Stored,
    StoreUnavailable,
    make_store,
)

__all__ = ["TERMINAL", "BrokenChain", "MemoryResponseStore", "ResponseEvents", "ResponseStore",
           "ResponsesRequest", "StoreUnavailable", "Stored", "Turn", "chat_usage",
           "from_chat", "make_store", "new_id", "parse_request", "skeleton", "to_chat",
           "translate_stream"]
