"""A Responses API create request: validated, its input normalised into items with ids.

Reference: https://platform.openai.com/docs/api-reference/responses/create (the ``openai``
SDK's ``types/responses/response_create_params.py`` and ``response_input_item_param.py`` are
the field-by-field form). What only an upstream with the Responses API itself can serve (hosted
tools, file ids, stored prompts...) is noted as :attr:`ResponsesRequest.native_only`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from aiproxy.errors import ProxyError

__all__ = ["ResponsesRequest", "new_id", "parse_request"]

# Item types the chat translation understands; any other one passes through or is refused.
_TRANSLATED_ITEMS = frozenset({"message", "function_call", "function_call_output", "reasoning",
                               "item_reference"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_FORMATS = frozenset({"text", "json_object", "json_schema"})
_TOOL_CHOICES = frozenset({"none", "auto", "required"})
# Numbers and the JSON types they must have (bool is not a number here).
_NUMBERS: dict[str, tuple[type, ...]] = {"temperature": (int, float), "top_p": (int, float),
                                         "max_output_tokens": (int,), "top_logprobs": (int,)}
# Chat's bound on output tokens: a number the limiter reserves by.
MAX_OUTPUT_TOKENS = 2**31 - 1
_BOOLS = ("stream", "store", "parallel_tool_calls", "background")
_STRINGS = ("instructions", "previous_response_id", "user", "safety_identifier",
            "prompt_cache_key", "service_tier")


def new_id(prefix: str) -> str:
    """An id in OpenAI's form: a type prefix (``resp``, ``msg``, ``fc``...) and 48 hex digits."""
    return f"{prefix}_{uuid.uuid4().hex}{uuid.uuid4().hex[:16]}"


@attrs.frozen
class ResponsesRequest:
    """A validated create request. ``input`` holds the new items as stored and listed by
    ``input_items`` (every item with an id); ``native_only`` says why only an upstream
    serving the Responses API itself can answer it (None: any chat model can)."""

    body: Mapping[str, Any]
    raw: bytes
    model: str
    input: tuple[dict[str, Any], ...]
    stream: bool = False
    store: bool = True
    previous_id: str | None = None
    native_only: str | None = None

    @property
    def truncation(self) -> bool:
        """True when the client allows dropping the oldest items to fit the context."""
        return self.body.get("truncation") == "auto"


def _bad(message: str, param: str | None = None) -> ProxyError:
    return ProxyError(400, message, param=param, code="invalid_request")


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def parse_request(body: dict[str, Any], raw: bytes) -> ResponsesRequest:
    """Validate ``body`` enough to route and translate it; 400 naming the field otherwise."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("'model' is required and must be a non-empty string", "model")
    _check_scalars(body)
    if body.get("background"):
        raise _bad("background responses are not supported by this proxy; send the request "
                   "without 'background' (streaming keeps long answers alive)", "background")
    natives: list[str] = []
    raw_input = body.get("input")
    if raw_input is None:
        if body.get("prompt") is None:
            raise _bad("'input' is required: a string or an array of input items", "input")
        items: list[dict[str, Any]] = []
    elif isinstance(raw_input, str):
        items = [_message({"role": "user", "content": raw_input}, "input")]
    elif isinstance(raw_input, list):
        items = [_item(item, f"input[{i}]", natives) for i, item in enumerate(raw_input)]
    else:
        raise _bad(f"'input' must be a string or an array, got {_kind(raw_input)}", "input")
    if body.get("prompt") is not None:
        natives.append("stored prompts ('prompt')")
    if body.get("conversation") is not None:
        natives.append("conversations ('conversation')")
    _check_tools(body, natives)
    _check_text(body)
    _check_metadata(body.get("metadata"))
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise _bad(f"'reasoning' must be an object, got {_kind(reasoning)}", "reasoning")
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise _bad("'truncation' must be 'auto' or 'disabled'", "truncation")
    include = body.get("include")
    if include is not None and not (isinstance(include, list)
                                    and all(isinstance(x, str) for x in include)):
        raise _bad("'include' must be an array of strings", "include")
    return ResponsesRequest(
        body=body, raw=raw, model=model, input=tuple(items),
        stream=bool(body.get("stream")), store=body.get("store") is not False,
        previous_id=body.get("previous_response_id") or None,
        native_only=natives[0] if natives else None)


def _check_scalars(body: Mapping[str, Any]) -> None:
    for name, types in _NUMBERS.items():
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            wanted = "an integer" if types == (int,) else "a number"
            raise _bad(f"'{name}' must be {wanted}, got {_kind(value)}", name)
    tokens = body.get("max_output_tokens")
    if isinstance(tokens, int) and not 1 <= tokens <= MAX_OUTPUT_TOKENS:
        raise _bad(f"'max_output_tokens' must be from 1 to {MAX_OUTPUT_TOKENS}",
                   "max_output_tokens")
    for name in _BOOLS:
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise _bad(f"'{name}' must be a boolean, got {_kind(body[name])}", name)
    for name in _STRINGS:
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _bad(f"'{name}' must be a string, got {_kind(body[name])}", name)


def _item(item: Any, where: str, natives: list[str]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _bad(f"'{where}' must be an object, got {_kind(item)}", where)
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = "message"  # an "easy" input message: {role, content}
    if not isinstance(kind, str):
        raise _bad(f"'{where}.type' is required (message, function_call, "
                   "function_call_output, reasoning, item_reference...)", f"{where}.type")
    if kind == "message":
        return _message(item, where, natives)
    if kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            if not isinstance(item.get(name), str):
                raise _bad(f"'{where}.{name}' must be a string", f"{where}.{name}")
        return {**item, "id": item.get("id") or new_id("fc"),
                "status": item.get("status") or "completed"}
    if kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise _bad(f"'{where}.call_id' must be a string", f"{where}.call_id")
        output = item.get("output")
        if isinstance(output, list):
            _parts(output, f"{where}.output", natives, assistant=False)
        elif not isinstance(output, str):
            raise _bad(f"'{where}.output' must be a string or an array of content parts",
                       f"{where}.output")
        return {**item, "id": item.get("id") or new_id("fco"),
                "status": item.get("status") or "completed"}
    if kind == "reasoning":
        if not isinstance(item.get("summary", []), list):
            raise _bad(f"'{where}.summary' must be an array", f"{where}.summary")
        return {**item, "id": item.get("id") or new_id("rs")}
    if kind == "item_reference":
        if not isinstance(item.get("id"), str):
            raise _bad(f"'{where}.id' must be a string", f"{where}.id")
        return dict(item)
    natives.append(f"input items of type {kind!r}")
    return dict(item)


def _message(item: dict[str, Any], where: str,
             natives: list[str] | None = None) -> dict[str, Any]:
    role = item.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise _bad(f"'{where}.role' must be one of user, assistant, system, developer; got "
                   f"{role!r}", f"{where}.role")
    assistant = role == "assistant"
    content = item.get("content")
    if isinstance(content, str):
        part = ({"type": "output_text", "text": content, "annotations": []} if assistant
                else {"type": "input_text", "text": content})
        parts = [part]
    elif isinstance(content, list):
        parts = _parts(content, f"{where}.content", natives if natives is not None else [],
                       assistant=assistant)
    else:
        raise _bad(f"'{where}.content' must be a string or an array of content parts",
                   f"{where}.content")
    return {**item, "type": "message", "role": role, "content": parts,
            "id": item.get("id") or new_id("msg"), "status": item.get("status") or "completed"}


def _parts(parts: list[Any], where: str, natives: list[str], *,
           assistant: bool) -> list[dict[str, Any]]:
    for i, part in enumerate(parts):
        at = f"{where}[{i}]"
        if not isinstance(part, dict):
            raise _bad(f"'{at}' must be an object, got {_kind(part)}", at)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            if not isinstance(part.get("text"), str):
                raise _bad(f"'{at}.text' must be a string", f"{at}.text")
        elif kind == "refusal" and assistant:
            if not isinstance(part.get("refusal"), str):
                raise _bad(f"'{at}.refusal' must be a string", f"{at}.refusal")
        elif kind == "input_image" and not assistant:
            url = part.get("image_url")
            if url is None and part.get("file_id") is not None:
                natives.append("images by file_id")
            elif not isinstance(url, str) or not url:
                raise _bad(f"'{at}.image_url' must be a URL or a data: URL", f"{at}.image_url")
        elif kind == "input_file" and not assistant:
            if part.get("file_data") is None:
                natives.append("files by file_id or file_url")
        elif kind == "input_audio" and not assistant:
            natives.append("audio input")
        else:
            raise _bad(f"'{at}.type' {kind!r} is not a content part of "
                       f"{'an assistant' if assistant else 'an input'} message", f"{at}.type")
    return list(parts)


def _check_tools(body: Mapping[str, Any], natives: list[str]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad(f"'tools' must be an array, got {_kind(tools)}", "tools")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise _bad(f"'tools[{i}]' must be an object with a 'type'", f"tools[{i}]")
            if tool["type"] != "function":
                natives.append(f"tools of type {tool['type']!r}")
            elif not isinstance(tool.get("name"), str) or not tool["name"]:
                raise _bad(f"'tools[{i}].name' is required for a function tool",
                           f"tools[{i}].name")
            elif tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
                raise _bad(f"'tools[{i}].parameters' must be a JSON schema object",
                           f"tools[{i}].parameters")
    choice = body.get("tool_choice")
    if choice is None or (isinstance(choice, str) and choice in _TOOL_CHOICES):
        return
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise _bad("'tool_choice' must be none, auto, required or an object", "tool_choice")
    if choice["type"] == "function":
        if not isinstance(choice.get("name"), str):
            raise _bad("'tool_choice.name' is required for a function choice", "tool_choice")
    elif choice["type"] == "allowed_tools":
        if choice.get("mode") not in ("auto", "required") or not isinstance(
                choice.get("tools"), list):
            raise _bad("'tool_choice' allowed_tools needs mode auto or required and a tools "
                       "array", "tool_choice")
    else:
        natives.append(f"tool_choice of type {choice['type']!r}")


def _check_text(body: Mapping[str, Any]) -> None:
    text = body.get("text")
    if text is None:
        return
    if not isinstance(text, dict):
        raise _bad(f"'text' must be an object, got {_kind(text)}", "text")
    fmt = text.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str) or (
            fmt["type"] not in _FORMATS):
        raise _bad("'text.format.type' must be text, json_object or json_schema",
                   "text.format")
    if fmt["type"] == "json_schema" and not (isinstance(fmt.get("name"), str)
                                             and isinstance(fmt.get("schema"), dict)):
        raise _bad("'text.format' json_schema needs a 'name' and a 'schema' object",
                   "text.format")


def _check_metadata(metadata: Any) -> None:
    """At most 16 pairs, keys up to 64 characters, string values up to 512 (the reference's
    bounds)."""
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise _bad("'metadata' must be an object of at most 16 key-value pairs", "metadata")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise _bad("'metadata' keys are at most 64 characters and values strings of at "
                       "most 512", "metadata")
