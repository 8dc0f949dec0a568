"""The lens through which the router reads a Messages event stream (see ``StreamLens``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiproxy.frontdoor.anthropic.response import openai_usage

__all__ = ["MessagesEvents"]


class MessagesEvents:
    """Renames the model in ``message_start``; keeps the usage (``message_start``, then the
    cumulative ``message_delta`` counts) and how much was relayed (text, tool input, thinking).

    A stream that breaks before its ``message_delta`` settles at the input tokens Anthropic
    reported and the larger of the output count so far and what was relayed (~4 characters
    a token)."""

    __slots__ = ("_final", "_usage", "relayed_chars")

    def __init__(self) -> None:
        self._usage: dict[str, Any] | None = None
        self._final = False
        self.relayed_chars = 0

    @property
    def usage(self) -> Mapping[str, Any] | None:
        usage = openai_usage(self._usage)
        if usage is None or self._final:
            return usage
        relayed = self.relayed_chars // 4
        if relayed > usage["completion_tokens"]:
            usage["total_tokens"] += relayed - usage["completion_tokens"]
            usage["completion_tokens"] = relayed
        return usage

    @usage.setter
    def usage(self, value: Mapping[str, Any] | None) -> None:
        self._usage = dict(value) if value is not None else None

    def rewrite(self, chunk: dict[str, Any], model: str) -> bool:
        kind = chunk.get("type")
        if kind == "content_block_delta":
            delta = chunk.get("delta")
            if isinstance(delta, dict):
                for key in ("text", "partial_json", "thinking"):
                    value = delta.get(key)
                    if isinstance(value, str):
                        self.relayed_chars += len(value)
                        break
        elif kind == "message_start":
            message = chunk.get("message")
            if isinstance(message, dict):
                message["model"] = model
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self._usage = dict(usage)
        elif kind == "message_delta":
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                merged = self._usage or {}
                merged.update({k: v for k, v in usage.items() if v is not None})
                self._usage = merged
                self._final = True
        return True
