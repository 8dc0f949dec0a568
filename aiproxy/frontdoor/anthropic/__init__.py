"""The Anthropic Messages API in front of every provider (``/v1/messages``).

``request.py`` validates Messages requests and translates them to the chat core;
``response.py`` turns chat answers and streams into Messages ones; ``stream.py`` is the lens
the router reads Messages streams through; ``native.py`` what a provider implements to be sent
Messages requests untranslated; ``tokens.py`` the token estimate; ``door.py`` the router calls.
"""

from __future__ import annotations

from aiproxy.frontdoor.anthropic.door import count_tokens, create_message, open_message_stream
from aiproxy.frontdoor.anthropic.native import SpeaksMessages
from aiproxy.frontdoor.anthropic.request import (
    MessagesRequest,
    parse_count_request,
    parse_messages_request,
)

__all__ = ["MessagesRequest", "SpeaksMessages", "count_tokens", "create_message",
           "open_message_stream", "parse_count_request", "parse_messages_request"]
