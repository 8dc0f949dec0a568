"""Request bodies: read with the size limit, decoded, and validated enough to route them."""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from typing import Any, TypeGuard

import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError

from aiproxy.errors import ProxyError, shown
from aiproxy.provider import ChatRequest, has_unicode_escape

__all__ = ["BODY_TIMEOUT", "parse_chat_request", "read_json", "type_name"]


BODY_TIMEOUT = web.AppKey("body_timeout", float)


async def read_json(request: web.Request) -> tuple[dict[str, Any], bytes]:
    """The body as a JSON object and its bytes; 400 naming what is wrong, 413 when too large
    (after decompression too), 408 when it does not arrive within the body timeout."""
    try:
        content = request.content
        if content.is_eof():
            # The whole body came with the headers (the common case): nothing to wait for,
            # so no timer to arm and cancel, and it is taken at once (``request.read()``
            # would loop over ``readany``). Past the size limit it is the 413 aiohttp's
            # ``read`` answers. (The body is read once: ``request.read()`` after this is
            # empty; no handler reads it again.)
            raw = content.read_nowait()
            if request.client_max_size and len(raw) > request.client_max_size:
                raise web.HTTPRequestEntityTooLarge(request.client_max_size, len(raw))
        else:
            async with asyncio.timeout(request.app.get(BODY_TIMEOUT)):
                raw = await request.read()
    except TimeoutError:
        raise ProxyError(408, "the request body did not arrive in time",
                         code="request_timeout") from None
    except web.HTTPRequestEntityTooLarge:
        raise
    except (RequestPayloadError, ContentEncodingError, zlib.error, EOFError) as exc:
        raise ProxyError(400, "the request body could not be decoded "
                         f"({request.headers.get('Content-Encoding', 'identity')}: "
                         f"{type(exc).__name__})", code="invalid_body") from None
    if not raw:
        raise ProxyError(400, "request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProxyError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProxyError(400, f"request body must be a JSON object, got {type(body).__name__}")
    if _may_repeat_keys(raw):
        _refuse_duplicate_keys(raw)
    if _integral_numbers(body):
        raw = orjson.dumps(body)  # the upstream reads the integers the proxy validated
    return body, raw


# JSON has numbers, not integers: to JSON Schema, and so to the OpenAPI document, 100.0 is the
# integer 100 (https://json-schema.org/draft/2020-12/json-schema-core#section-4.2.2), and
# clients that compute a value in floating point send it so. Where an integer belongs, an
# integral float is taken as that integer, before any validation reads it; past 2**53 a float
# no longer holds the number written (orjson reads -9223372036854775809 as -2.0**63), so such a
# float stays a float and is refused where an integer belongs.
_EXACT = 2**53
_INTEGERS = frozenset({"max_tokens", "max_completion_tokens", "max_output_tokens", "n", "seed",
                       "top_logprobs", "dimensions", "top_k", "best_of", "logprobs"})
_TOKEN_ARRAYS = frozenset({"input", "prompt"})  # embeddings and completions take token ids


def _is_integral(value: Any) -> TypeGuard[float]:
    return type(value) is float and value.is_integer() and abs(value) <= _EXACT


def _integral(value: Any) -> Any:
    return int(value) if _is_integral(value) else value


def _integral_numbers(body: dict[str, Any]) -> bool:
    """Turn integral floats where integers belong into ints, in place; True if any was."""
    changed = False
    for key in _INTEGERS.intersection(body):
        value = body[key]
        if _is_integral(value):
            body[key] = int(value)
            changed = True
    for key in _TOKEN_ARRAYS.intersection(body):
        value = body[key]
        if type(value) is not list or not value or type(value[0]) is str:
            continue  # text, the common case, is not scanned
        for i, item in enumerate(value):
            if _is_integral(item):
                value[i] = int(item)
                changed = True
            elif type(item) is list and any(_is_integral(t) for t in item):
                value[i] = [_integral(t) for t in item]
                changed = True
    return changed


# Keys the proxy decides by (routing, permissions, limits, streaming). Where one may appear
# twice, or a key is spelled with \u escapes, the body is checked for duplicate keys: the
# proxy (orjson keeps the last) and an upstream (some keep the first) must never read
# different values of what the proxy decided on.
_WATCHED_KEYS = ("model", "stream", "max_tokens", "max_completion_tokens", "n", "stream_options",
                 "messages", "input", "dimensions", "prompt")
# The same keys as a prefix tree ("m" then odel|essages|ax_..., "s" then tream...): at each
# quote the pattern tests one branch a first letter, not ten alternatives (~20% faster on
# bodies full of quotes). tests/test_hardening.py checks it finds exactly these.
_WATCHED = re.compile(rb'"(?:m(?:odel|essages|ax_(?:tokens|completion_tokens))|'
                      rb's(?:tream(?:_options)?)|n|input|dimensions|prompt)"')


def _may_repeat_keys(raw: bytes) -> bool:
    # A \u escape may spell a key another way ("mod\u0065l"); bodies with escapes (prompts in
    # non-Latin scripts sent ASCII-only) are simply checked (~6 ms a MiB). One pass of the
    # pattern finds every watched key (about 3x faster than counting each in turn).
    if has_unicode_escape(raw):
        return True
    found = _WATCHED.findall(raw)
    return len(found) != len(set(found))


def _refuse_duplicate_keys(raw: bytes) -> None:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise ProxyError(400, f"request body repeats the key {shown(key)} in one object",
                                 code="duplicate_key", param=key[:64])
            seen[key] = value
        return seen

    json.loads(raw, object_pairs_hook=pairs)


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


# Integer fields with the range the proxy lets through (the upstream may narrow it): a number
# the proxy reserves tokens by, or that makes it allocate, is bounded here.
_INT_RANGES: dict[str, tuple[int, int]] = {
    "max_tokens": (1, 2**31 - 1),
    "max_completion_tokens": (1, 2**31 - 1),
    "n": (1, 128),
    "top_logprobs": (0, 20),
    "seed": (-(2**63), 2**63 - 1),
}


def type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


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
        if type(message) is dict and len(message) == 2:
            # The common message, a role and its text: checked in one test.
            role = message.get("role")
            if type(role) is str and role in _ROLES and type(message.get("content")) is str:
                continue
        if not isinstance(message, dict):
            raise ProxyError(400, f"'messages[{i}]' must be an object, got "
                             f"{type_name(message)}", param=f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise ProxyError(400, f"'messages[{i}].role' must be one of system, developer, user, "
                             f"assistant, tool; got {role!r}", param=f"messages[{i}].role")
        content = message.get("content")
        if type(content) is not str:  # the common case, text, needs no more checks
            if content is not None and not isinstance(content, str | list):
                raise ProxyError(400, f"'messages[{i}].content' must be a string or an array, "
                                 f"got {type_name(content)}", param=f"messages[{i}].content")
            if isinstance(content, list):
                _objects(content, f"messages[{i}].content")
        if len(message) == 1 or (len(message) == 2 and "content" in message):
            continue  # a role (checked above) and content: nothing else to check
        for field in ("name", "tool_call_id"):
            value = message.get(field)
            if value is not None and not isinstance(value, str):
                raise ProxyError(400, f"'messages[{i}].{field}' must be a string, got "
                                 f"{type_name(value)}", param=f"messages[{i}].{field}")
        calls = message.get("tool_calls")
        if calls is not None:
            _objects(calls, f"messages[{i}].tool_calls")
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
        bounds = _INT_RANGES.get(field)
        if bounds is not None and isinstance(value, int) and not bounds[0] <= value <= bounds[1]:
            raise ProxyError(400, f"'{field}' must be from {bounds[0]} to {bounds[1]}",
                             param=field)
    _check_members(body)
    return ChatRequest(body=body, raw=raw, stream=bool(stream))


def _objects(value: Any, where: str) -> None:
    """``value`` must be an array of objects (content parts, tool calls, tools)."""
    if not isinstance(value, list):
        raise ProxyError(400, f"'{where}' must be an array, got {type_name(value)}", param=where)
    for j, item in enumerate(value):
        if not isinstance(item, dict):
            raise ProxyError(400, f"'{where}[{j}]' must be an object, got {type_name(item)}",
                             param=f"{where}[{j}]")


def _check_members(body: dict[str, Any]) -> None:
    """What the document says of the members of ``tools``, ``stop`` and ``stream_options``."""
    tools = body.get("tools")
    if isinstance(tools, list):
        _objects(tools, "tools")
    stop = body.get("stop")
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise ProxyError(400, "'stop' must be a string or an array of strings", param="stop")
    options = body.get("stream_options")
    usage = options.get("include_usage") if isinstance(options, dict) else None
    if usage is not None and not isinstance(usage, bool):
        raise ProxyError(400, f"'stream_options.include_usage' must be a boolean, got "
                         f"{type_name(usage)}", param="stream_options.include_usage")
