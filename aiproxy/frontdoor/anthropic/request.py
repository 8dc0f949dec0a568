"""Messages API requests: validated enough to route them, and translated to the chat core.

The request shape is Anthropic's: https://docs.anthropic.com/en/api/messages (``model``,
``max_tokens``, ``messages`` of ``user``/``assistant`` turns whose content is a string or
blocks — ``text``, ``image``, ``document``, ``tool_use``, ``tool_result``, ``thinking`` —,
``system``, ``tools``, ``tool_choice``, ``stop_sequences``, ``temperature``, ``top_p``,
``top_k``, ``thinking``, ``metadata.user_id``, ``output_config.format``, ``stream``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import orjson

from aiproxy.errors import ProxyError
from aiproxy.provider import ChatRequest, ErrorKind, UpstreamError

__all__ = ["MessagesRequest", "chat_request", "native_body", "parse_count_request",
           "parse_messages_request"]


@attrs.frozen
class MessagesRequest:
    """A validated Messages (or count_tokens) request and the client's Anthropic headers."""

    body: Mapping[str, Any]
    raw: bytes
    stream: bool
    headers: Mapping[str, str]  # anthropic-version / anthropic-beta, for a native upstream

    @property
    def model(self) -> str:
        return str(self.body["model"])


def _invalid(message: str) -> ProxyError:
    return ProxyError(400, message, type="invalid_request_error", code="invalid_request")


# The bound on output tokens the chat API has too: a number the limiter reserves by.
MAX_TOKENS = 2**31 - 1


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


_FIELDS: dict[str, tuple[type, ...]] = {
    "system": (str, list), "tools": (list,), "tool_choice": (dict,),
    "stop_sequences": (list,), "temperature": (int, float), "top_p": (int, float),
    "top_k": (int,), "thinking": (dict,), "metadata": (dict,), "stream": (bool,),
    "output_config": (dict,),
}


def _check_messages(body: Mapping[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: a non-empty array is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"messages.{i}: must be an object, got {_kind(message)}")
        if message.get("role") not in ("user", "assistant"):
            raise _invalid(f"messages.{i}.role: must be 'user' or 'assistant', got "
                           f"{message.get('role')!r}")
        content = message.get("content")
        if isinstance(content, list):
            for j, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise _invalid(f"messages.{i}.content.{j}: must be a content block with "
                                   "a type")
        elif not isinstance(content, str):
            raise _invalid(f"messages.{i}.content: must be a string or an array of blocks, "
                           f"got {_kind(content)}")


def _check_common(body: Mapping[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("model: a non-empty string is required")
    _check_messages(body)
    for field in _FIELDS.keys() & body.keys():
        value, types = body[field], _FIELDS[field]
        if value is None:
            continue
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            wanted = " or ".join(_kind(t()) for t in types)
            raise _invalid(f"{field}: must be {wanted}, got {_kind(value)}")
    _check_members(body)


def _check_members(body: Mapping[str, Any]) -> None:
    """The members the document types: system blocks, tools, stop sequences."""
    system = body.get("system")
    if isinstance(system, list):
        for j, block in enumerate(system):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise _invalid(f"system.{j}: must be a content block with a type")
    tools = body.get("tools")
    if isinstance(tools, list):
        for j, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _invalid(f"tools.{j}: must be an object, got {_kind(tool)}")
    stops = body.get("stop_sequences")
    if isinstance(stops, list) and not all(isinstance(stop, str) for stop in stops):
        raise _invalid("stop_sequences: must be an array of strings")
    top_k = body.get("top_k")
    if isinstance(top_k, int) and not 0 <= top_k <= MAX_TOKENS:
        raise _invalid(f"top_k: must be from 0 to {MAX_TOKENS}")


def _client_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in ("anthropic-version", "anthropic-beta")
            if headers.get(name)}


def parse_messages_request(body: dict[str, Any], raw: bytes,
                           headers: Mapping[str, str]) -> MessagesRequest:
    """A ``POST /v1/messages`` body, or the 400 naming what is wrong (in Anthropic's terms)."""
    _check_common(body)
    max_tokens = body.get("max_tokens")
    if (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
            or not 0 <= max_tokens <= MAX_TOKENS):
        raise _invalid(f"max_tokens: an integer from 0 to {MAX_TOKENS} is required")
    return MessagesRequest(body, raw, bool(body.get("stream")), _client_headers(headers))


def parse_count_request(body: dict[str, Any], raw: bytes,
                        headers: Mapping[str, str]) -> MessagesRequest:
    """A ``POST /v1/messages/count_tokens`` body (no ``max_tokens``)."""
    _check_common(body)
    return MessagesRequest(body, raw, False, _client_headers(headers))


def native_body(request: MessagesRequest) -> tuple[Mapping[str, Any], bytes]:
    """The body for an upstream that speaks Messages: the client's bytes, except that thinking
    blocks without a signature (written by a non-Anthropic model earlier in the conversation,
    which Anthropic would refuse) are left out."""
    messages = request.body["messages"]
    if not any(isinstance(m.get("content"), list) and any(
            b.get("type") == "thinking" and not b.get("signature") for b in m["content"])
            for m in messages):
        return request.body, request.raw
    cleaned = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            kept = [b for b in content if b.get("type") != "thinking" or b.get("signature")]
            message = {**message, "content": kept or [{"type": "text", "text": "."}]}
        cleaned.append(message)
    body = {**request.body, "messages": cleaned}
    return body, orjson.dumps(body)


# ------------------------------------------------------------------ Messages → chat core


def _refuse(message: str) -> UpstreamError:
    """A request this (non-Anthropic) candidate cannot serve as asked: the client's 400."""
    return UpstreamError(ErrorKind.BAD_REQUEST, message, status=400, code="invalid_request")


def _text(content: Any, where: str) -> str:
    """The text of ``system`` or of a tool result: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or ():
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text") or ""))
        elif isinstance(block, dict) and block.get("type") != "image":
            raise _refuse(f"{where}: block type {block.get('type')!r} can only go to "
                          "Anthropic models")
    return "\n\n".join(parts) if where == "system" else "".join(parts)


def _source(block: Mapping[str, Any]) -> dict[str, Any]:
    source = block.get("source")
    return source if isinstance(source, dict) else {}


def _image(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = _source(block)
    kind = source.get("type")
    if kind == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif kind == "url":
        url = str(source.get("url"))
    else:
        raise _refuse(f"{where}: image source {kind!r} can only go to Anthropic models "
                      "(base64 and url can go anywhere)")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = _source(block)
    kind = source.get("type")
    if kind == "text":
        return {"type": "text", "text": str(source.get("data") or "")}
    if kind == "content":
        return {"type": "text", "text": _text(source.get("content"), where)}
    if kind == "base64":
        file: dict[str, Any] = {
            "file_data": f"data:{source.get('media_type')};base64,{source.get('data')}"}
        if isinstance(block.get("title"), str):
            file["filename"] = block["title"]
        return {"type": "file", "file": file}
    raise _refuse(f"{where}: document source {kind!r} can only go to Anthropic models")


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    """A user turn as chat messages: its tool results as ``tool`` messages (first, as the chat
    API wants them right after the calls), then the rest as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at, kind = f"{where}.content.{j}", block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text") or "")})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "document":
            parts.append(_document(block, at))
        elif kind == "tool_result":
            result = block.get("content")
            text = _text(result, at)
            if block.get("is_error"):
                text = f"Error: {text}"  # the chat API has no error flag; the model reads it
            out.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id")),
                        "content": text})
            if isinstance(result, list):  # images a tool returned follow as user content
                parts += [_image(b, at) for b in result if b.get("type") == "image"]
        else:
            raise _refuse(f"{at}: block type {kind!r} can only go to Anthropic models")
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts)
                    if only_text and len(parts) == 1 else parts})
    return out


def _assistant(content: Any, where: str) -> dict[str, Any] | None:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block["type"]
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            calls.append({"id": str(block.get("id")), "type": "function", "function": {
                "name": str(block.get("name")),
                "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        # thinking blocks and Anthropic's server-tool blocks mean nothing to another model
        # (and some refuse reasoning in their input): left out.
    if not texts and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom") or \
                not isinstance(tool.get("name"), str):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _refuse(f"tools.{i}: tool type {kind!r} is one of Anthropic's own tools; "
                          "only custom tools can go to other models")
        function: dict[str, Any] = {"name": tool["name"], "parameters": tool.get(
            "input_schema") or {"type": "object", "properties": {}}}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Mapping[str, Any], out: dict[str, Any]) -> None:
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _refuse("tool_choice.type must be auto, any, tool or none")
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False


def _effort(body: Mapping[str, Any]) -> str | None:
    """``thinking`` as the chat core's ``reasoning_effort``: a budget below 4096 tokens is
    low, below 16384 medium, else high; adaptive thinking takes ``output_config.effort``."""
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    config = body.get("output_config")
    level = config.get("effort") if isinstance(config, dict) else None
    if kind == "enabled":
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else 0
        budget = budget if isinstance(budget, int) else 0
        return "low" if budget < 4096 else "medium" if budget < 16384 else "high"
    if kind == "adaptive" or (kind is None and isinstance(level, str)):
        return {"max": "xhigh"}.get(level, level) if isinstance(level, str) else "medium"
    return None


def chat_request(request: MessagesRequest) -> ChatRequest:
    """The chat-core request for a candidate that does not speak Messages. The usage of a
    stream is always asked for: a Messages stream reports it."""
    body = request.body
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text(system, "system")})
    for i, message in enumerate(body["messages"]):
        where = f"messages.{i}"
        if message["role"] == "user":
            messages += _user(message["content"], where)
        else:
            turn = _assistant(message["content"], where)
            if turn is not None:
                messages.append(turn)
    if body.get("max_tokens") == 0:
        raise _refuse("max_tokens: 0 (cache pre-warming) can only go to Anthropic models")
    if body.get("mcp_servers"):
        raise _refuse("mcp_servers: the MCP connector can only go to Anthropic models")
    out: dict[str, Any] = {"model": body["model"], "messages": messages,
                           "max_tokens": body["max_tokens"]}
    tools = body.get("tools")
    if tools:
        out["tools"] = _tools(tools)
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            _tool_choice(choice, out)
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    effort = _effort(body)
    if effort is not None:
        out["reasoning_effort"] = effort
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    config = body.get("output_config")
    schema_format = (config.get("format") if isinstance(config, dict) else None) \
        or body.get("output_format")
    if isinstance(schema_format, dict) and schema_format.get("type") == "json_schema":
        out["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": schema_format.get("schema") or {}}}
    if request.stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return ChatRequest(body=out, raw=orjson.dumps(out), stream=request.stream)
