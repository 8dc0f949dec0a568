"""What a provider implements to be sent Messages requests as they are (no translation).

A provider plugin (the first-party ``anthropic`` one, or a third party's Claude on another
cloud) that has these three methods is given the client's Messages request for each attempt
the router makes on it; every other provider is given the chat-core translation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["SpeaksMessages"]


@runtime_checkable
class SpeaksMessages(Protocol):
    """``body`` is the client's request (its ``model`` the client's name: the provider puts
    its upstream id in), ``raw`` its bytes, ``headers`` its ``anthropic-version`` and
    ``anthropic-beta``. Failures raise ``UpstreamError`` as in ``chat``/``stream``."""

    async def messages(self, body: Mapping[str, Any], raw: bytes,
                       headers: Mapping[str, str]) -> dict[str, Any]:
        """The upstream's Message object."""

    def messages_stream(self, body: Mapping[str, Any], raw: bytes,
                        headers: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        """The upstream's stream events (``error`` events raised, nothing before the answer
        has begun), ending with ``message_stop``."""

    async def count_tokens(self, body: Mapping[str, Any], raw: bytes,
                           headers: Mapping[str, str]) -> dict[str, Any]:
        """The upstream's ``{"input_tokens": n}``."""
