"""OpenAI message content as Anthropic content blocks (text, images, documents, tool calls
and results, thinking blocks sent back, ``cache_control`` kept).

- Images: https://docs.anthropic.com/en/docs/build-with-claude/vision (``base64`` and ``url``
  sources); PDFs: https://docs.anthropic.com/en/docs/build-with-claude/pdf-support
- Tool use: https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use
- Prompt caching: https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from aiproxy.provider import ErrorKind, UpstreamError

__all__ = ["assistant_blocks", "bad_request", "cached", "message_cache", "text_blocks",
           "tool_result", "user_blocks"]


def bad_request(message: str, param: str | None = None) -> UpstreamError:
    return UpstreamError(ErrorKind.BAD_REQUEST, message, status=400, param=param,
                         code="invalid_request")


def cached(part: Mapping[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    control = part.get("cache_control")
    if isinstance(control, dict):
        block["cache_control"] = control
    return block


def _data_url(url: str, where: str) -> tuple[str, str]:
    """``(media_type, base64 data)`` of a ``data:<type>;base64,<data>`` URL."""
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise bad_request(f"{where}: a data: URL must be base64-encoded", where)
    return head[5:-7], data


def _image(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise bad_request(f"{where}.image_url.url must be a string", where)
    if url.startswith("data:"):
        media_type, data = _data_url(url, where)
        source: dict[str, Any] = {"type": "base64", "media_type": media_type, "data": data}
    else:
        source = {"type": "url", "url": url}
    return cached(part, {"type": "image", "source": source})


def _file(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    spec = part.get("file")
    data = spec.get("file_data") if isinstance(spec, dict) else None
    if not isinstance(data, str) or not data.startswith("data:"):
        raise bad_request(f"{where}: Anthropic takes files as file_data data: URLs "
                          "(an OpenAI file_id means nothing to it)", where)
    media_type, encoded = _data_url(data, where)
    block: dict[str, Any] = {"type": "document", "source": {
        "type": "base64", "media_type": media_type, "data": encoded}}
    if isinstance(spec, dict) and isinstance(spec.get("filename"), str):
        block["title"] = spec["filename"]
    return cached(part, block)


def user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or a list of parts",
                          f"{where}.content")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append(cached(part, {"type": "text", "text": part["text"]}))
        elif kind == "image_url":
            blocks.append(_image(part, at))
        elif kind == "file":
            blocks.append(_file(part, at))
        else:
            raise bad_request(f"{at}: part type {kind!r} is not supported by Anthropic "
                              "(text, image_url and file are)", at)
    return blocks


def text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """System, assistant and tool content as text blocks (``refusal`` parts are text too)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or a list of parts",
                          f"{where}.content")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        text = part.get(kind) if kind in ("text", "refusal") else None
        if not isinstance(text, str):
            raise bad_request(f"{where}.content[{j}] must be a text part",
                              f"{where}.content[{j}]")
        if text:
            blocks.append(cached(part, {"type": "text", "text": text}))
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
            or not isinstance(call.get("id"), str):
        raise bad_request(f"{where} must be a function call with an id and a name", where)
    name = function["name"]
    args = function.get("arguments")
    if isinstance(args, str):
        try:
            args = orjson.loads(args) if args.strip() else {}
        except orjson.JSONDecodeError:
            raise bad_request(f"{where}.function.arguments is not valid JSON", where) from None
    if not isinstance(args, dict):
        raise bad_request(f"{where}.function.arguments must be a JSON object", where)
    return cached(call, {"type": "tool_use", "id": call["id"], "name": name, "input": args})


def assistant_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    # Thinking blocks an earlier Claude answer carried (thinking_blocks, with signatures) go
    # back first and unchanged: a tool-use loop with thinking needs them.
    for block in message.get("thinking_blocks") or ():
        if isinstance(block, dict) and block.get("type") in ("thinking", "redacted_thinking"):
            blocks.append(dict(block))
    blocks += text_blocks(message.get("content"), where)
    for k, call in enumerate(message.get("tool_calls") or ()):
        blocks.append(_tool_use(call, f"{where}.tool_calls[{k}]"))
    return blocks


def tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(f"{where}.tool_call_id is required", f"{where}.tool_call_id")
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, str):
        block["content"] = content
    else:
        block["content"] = user_blocks(content, where)  # text and images are allowed here
    return cached(message, block)


def message_cache(message: Mapping[str, Any], blocks: list[dict[str, Any]]) -> None:
    """A ``cache_control`` on the message itself marks its last block (a cache breakpoint)."""
    control = message.get("cache_control")
    if isinstance(control, dict) and blocks:
        blocks[-1]["cache_control"] = control
