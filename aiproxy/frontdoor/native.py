"""What a provider offers when its upstream speaks a front door's API itself.

A plugin opts in structurally: no import of this module is needed, only the attributes and
methods below (the OpenAI-compatible plugin has them). The front door asks
:func:`native_responses` / :func:`native_completions` per candidate, so the same request is
passed through to one model and translated through chat for the next.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, runtime_checkable

from aiproxy.provider import Provider

__all__ = ["NativeCompletions", "NativeResponses", "native_completions", "native_responses"]


@runtime_checkable
class NativeResponses(Protocol):
    """An upstream serving ``/v1/responses``. ``body`` is the client's request with the model
    still the client's name (the provider sends its own upstream id)."""

    serves_responses_api: bool

    async def responses(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The upstream's Response object."""

    def responses_stream(self, body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The upstream's stream events, up to and including the terminal one
        (``response.completed`` / ``.incomplete`` / ``.failed``); an ``error`` event or a
        stream cut before a terminal event raises :class:`~aiproxy.provider.UpstreamError`."""

    async def delete_response(self, response_id: str) -> None:
        """Delete a response the upstream stored."""


@runtime_checkable
class NativeCompletions(Protocol):
    """An upstream serving the legacy ``/v1/completions``."""

    serves_completions_api: bool

    async def completions(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The upstream's ``text_completion`` object."""

    def completions_stream(self, body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The upstream's ``text_completion`` chunks, without the final ``[DONE]``."""


def native_responses(provider: Provider) -> NativeResponses | None:
    """``provider`` when its model is set to pass Responses requests through, else None."""
    if getattr(provider, "serves_responses_api", False) and isinstance(provider,
                                                                        NativeResponses):
        return provider
    return None


def native_completions(provider: Provider) -> NativeCompletions | None:
    """``provider`` when its model is set to pass legacy completions through, else None."""
    if getattr(provider, "serves_completions_api", False) and isinstance(provider,
                                                                          NativeCompletions):
        return provider
    return None
