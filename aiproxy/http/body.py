"""Request bodies: read with the size limit, decoded, and validated enough to route them."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from aiproxy.errors import ProxyError
from aiproxy.provider import ChatRequest

__all__ = ["parse_chat_request", "read_json", "type_name"]


async def read_json(request: web.Request) -> tuple[dict[str, Any], bytes]:
    """The body as a JSON object and its bytes; 400 naming what is wrong, 413 when too large."""
    raw = await request.read()  # aiohttp enforces client_max_size here (413)
    if not raw:
        raise ProxyError(400, "request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProxyError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProxyError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body, raw


# Optional fields and the JSON types they must have (bool is not a number here).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "temperature": (int, float),
    "top_p": (int, float),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "n": (int,),
    "seed": (int,),
    "stop": (str, list),
    "tools": (list,),
    "tool_choice": (str, dict),
    "response_format": (dict,),
    "stream_options": (dict,),
    "user": (str,),
    "logit_bias": (dict,),
    "parallel_tool_calls": (bool,),
    "logprobs": (bool,),
    "top_logprobs": (int,),
}


def type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def parse_chat_request(body: dict[str, Any], raw: bytes) -> ChatRequest:
    """Validate an OpenAI chat completion request enough to route it and fail early."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ProxyError(400, "'model' is required and must be a non-empty string",
                         param="model", code="invalid_request")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ProxyError(400, "'messages' is required and must be a non-empty array",
                         param="messages", code="invalid_request")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ProxyError(400, f"'messages[{i}]' must be an object, got "
                             f"{type_name(message)}", param=f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in (
                "system", "developer", "user", "assistant", "tool", "function"):
            raise ProxyError(400, f"'messages[{i}].role' must be one of system, developer, user, "
                             f"assistant, tool; got {role!r}", param=f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ProxyError(400, f"'messages[{i}].content' must be a string or an array, got "
                             f"{type_name(content)}", param=f"messages[{i}].content")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise ProxyError(400, f"'stream' must be a boolean, got {type_name(stream)}",
                         param="stream")
    for field in _FIELD_TYPES.keys() & body.keys():
        types = _FIELD_TYPES[field]
        value = body[field]
        if value is None:
            continue
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            wanted = " or ".join(type_name(t()) for t in types)
            raise ProxyError(400, f"'{field}' must be {wanted}, got {type_name(value)}",
                             param=field)
    return ChatRequest(body=body, raw=raw, stream=bool(stream))
