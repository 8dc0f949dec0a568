"""An estimate of a Messages request's input tokens, for models that cannot count them.

Rules (documented in ``docs/messages.md``): about 4 characters a token for text, tool inputs,
tool definitions and schemas (the rule the proxy's token limits use); 1,600 tokens an image
(Anthropic's figure for the ~1.15 megapixel size it scales larger images down to:
https://docs.anthropic.com/en/docs/build-with-claude/vision#evaluate-image-size); 2,000 tokens
a PDF page (its PDF guide gives 1,500 to 3,000 a page: .../pdf-support#estimate-your-costs),
pages counted in the document; 346 tokens of tool-use system prompt when tools are given
(.../tool-use/overview#pricing); and 4 tokens a message for its framing.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["estimate_input_tokens"]

IMAGE_TOKENS = 1600
PAGE_TOKENS = 2000
TOOLS_PROMPT_TOKENS = 346
MESSAGE_TOKENS = 4
_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def _pages(data: Any) -> int:
    try:
        raw = base64.b64decode(data) if isinstance(data, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    return max(1, len(_PAGE.findall(raw)))


def _chars(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(orjson.dumps(value))


def _block_tokens(block: Any) -> tuple[int, int]:
    """``(characters, fixed tokens)`` of one content block."""
    if not isinstance(block, Mapping):
        return 0, 0
    kind = block.get("type")
    if kind == "text":
        return _chars(block.get("text") or ""), 0
    if kind == "image":
        return 0, IMAGE_TOKENS
    if kind == "document":
        source = block.get("source")
        if isinstance(source, Mapping) and source.get("type") == "text":
            return _chars(source.get("data") or ""), 0
        if isinstance(source, Mapping) and source.get("type") == "base64":
            return 0, _pages(source.get("data")) * PAGE_TOKENS
        return 0, PAGE_TOKENS
    if kind == "tool_use":
        return _chars(block.get("name") or "") + _chars(block.get("input") or {}), 0
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            chars = fixed = 0
            for inner in content:
                c, f = _block_tokens(inner)
                chars, fixed = chars + c, fixed + f
            return chars, fixed
        return _chars(content or ""), 0
    if kind == "thinking":
        return _chars(block.get("thinking") or ""), 0
    return _chars(block), 0


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """The estimated ``input_tokens`` of ``body`` (system, messages, tools)."""
    chars = fixed = 0
    system = body.get("system")
    if isinstance(system, str):
        chars += len(system)
    elif isinstance(system, list):
        for block in system:
            c, f = _block_tokens(block)
            chars, fixed = chars + c, fixed + f
    for message in body.get("messages") or ():
        fixed += MESSAGE_TOKENS
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for block in content:
                c, f = _block_tokens(block)
                chars, fixed = chars + c, fixed + f
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        chars += len(orjson.dumps(tools))
        fixed += TOOLS_PROMPT_TOKENS
    return chars // 4 + fixed
