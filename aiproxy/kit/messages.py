"""Reading the ``messages`` of an OpenAI chat request: roles, content parts, tool calls.

Each helper checks the shape once, the same way for every provider, and refuses what a
provider cannot take with a 400 whose ``param`` is the path of the offending field
(``messages[2].content[0]``). Shapes: https://platform.openai.com/docs/api-reference/chat/create
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping
from typing import Any

import attrs
import orjson

from aiproxy.kit.errors import bad_request

__all__ = [
    "ROLES",
    "DataURL",
    "Message",
    "Part",
    "ToolCall",
    "data_url",
    "messages_of",
    "parts_of",
    "text_of",
]

#: The roles of OpenAI chat messages, after ``developer`` (OpenAI's newer name for system on
#: reasoning models) is read as ``system``. ``function`` is the legacy tool result.
ROLES = frozenset({"system", "user", "assistant", "tool", "function"})


@attrs.frozen
class Part:
    """One content part: ``kind`` is OpenAI's ``type`` (``text``, ``refusal``, ``image_url``,
    ``input_audio``, ``file``); ``text`` is set for text and refusal, ``url`` for an image's
    URL or a file's ``file_data`` (a data URL, or a URL), ``detail`` for an image's detail,
    ``audio`` for input audio as ``(base64 data, format)``."""

    kind: str
    where: str
    text: str | None = None
    url: str | None = None
    detail: str | None = None
    audio: tuple[str, str] | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict)


def _part(raw: Any, where: str, provider: str) -> Part:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind in ("text", "refusal") and isinstance(raw.get(kind), str):
        return Part(kind, where, text=raw[kind], raw=raw)
    if kind == "image_url" and isinstance(raw.get("image_url"), dict) \
            and isinstance(raw["image_url"].get("url"), str):
        detail = raw["image_url"].get("detail")
        return Part(kind, where, url=raw["image_url"]["url"],
                    detail=detail if isinstance(detail, str) else None, raw=raw)
    if kind == "input_audio" and isinstance(raw.get("input_audio"), dict):
        audio = raw["input_audio"]
        if isinstance(audio.get("data"), str) and isinstance(audio.get("format"), str):
            return Part(kind, where, audio=(audio["data"], audio["format"]), raw=raw)
    if kind == "file" and isinstance(raw.get("file"), dict) \
            and isinstance(raw["file"].get("file_data"), str):
        return Part(kind, where, url=raw["file"]["file_data"], raw=raw)
    if kind == "file" and isinstance(raw.get("file"), dict) and raw["file"].get("file_id"):
        raise bad_request(f"{where}: {provider} cannot read OpenAI file ids; send the file "
                          "as file_data", param=where)
    raise bad_request(f"{where}: content part type {kind!r} is malformed or not supported by "
                      f"{provider}", param=where)


def parts_of(content: Any, where: str, *, provider: str,
             kinds: Collection[str] = ("text", "refusal", "image_url", "input_audio", "file"),
             ) -> list[Part]:
    """``content`` as parts: a string is one text part, ``None`` none. A part whose kind is not
    in ``kinds`` (what the provider takes in this place) is a 400 naming it."""
    if content is None:
        return []
    if isinstance(content, str):
        return [Part("text", f"{where}.content", text=content)]
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or an array of parts",
                          param=f"{where}.content")
    parts = [_part(raw, f"{where}.content[{j}]", provider) for j, raw in enumerate(content)]
    for part in parts:
        if part.kind not in kinds:
            raise bad_request(f"{part.where}: {provider} takes {', '.join(kinds)} parts here, "
                              f"not {part.kind!r}", param=part.where)
    return parts


def text_of(content: Any, where: str, *, provider: str, joiner: str = "") -> str:
    """The text of content that may hold only text (a system, assistant or tool message): text
    and refusal parts joined by ``joiner``; any other part is a 400."""
    parts = parts_of(content, where, provider=provider, kinds=("text", "refusal"))
    return joiner.join(part.text or "" for part in parts)


@attrs.frozen
class DataURL:
    """A ``data:<media type>;base64,<data>`` URL: ``data`` is the base64 text, as sent."""

    media_type: str
    data: str

    def decode(self) -> bytes | None:
        """The bytes, or ``None`` when ``data`` is not valid base64."""
        try:
            return base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            return None


def data_url(url: Any) -> DataURL | None:
    """``url`` as a :class:`DataURL`, or ``None`` when it is not a base64 data URL."""
    if not isinstance(url, str) or url[:5].lower() != "data:":
        return None
    header, sep, data = url[5:].partition(",")
    params = header.split(";")
    if not sep or not params[0] or "base64" not in params[1:]:
        return None
    return DataURL(params[0], data)


@attrs.frozen
class ToolCall:
    """A function tool call of an assistant message: ``arguments`` is its JSON text (OpenAI
    sends a string; an object some clients send is encoded)."""

    id: str | None
    name: str
    arguments: str
    where: str
    raw: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def arguments_param(self) -> str:
        """The path of the arguments, for errors."""
        legacy = self.where.endswith(".function_call")
        return f"{self.where}.arguments" if legacy else f"{self.where}.function.arguments"

    def arguments_object(self) -> dict[str, Any]:
        """The arguments as a JSON object (what Gemini and GigaChat take); a 400 otherwise."""
        param = self.arguments_param
        if not self.arguments.strip():
            return {}
        try:
            value = orjson.loads(self.arguments)
        except orjson.JSONDecodeError:
            raise bad_request(f"{param}: tool call arguments are not valid JSON",
                              param=param) from None
        if not isinstance(value, dict):
            raise bad_request(f"{param}: tool call arguments must be a JSON object",
                              param=param)
        return value


def _tool_call(raw: Any, where: str, provider: str) -> ToolCall:
    fn = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(fn, dict) or raw.get("type", "function") != "function" \
            or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise bad_request(f"{where}: {provider} takes function tool calls only, each with a "
                          "function name", param=where)
    args = fn.get("arguments")
    arguments = args if isinstance(args, str) else orjson.dumps(args or {}).decode()
    call_id = raw.get("id")
    return ToolCall(call_id if isinstance(call_id, str) and call_id else None, fn["name"],
                    arguments, where, raw)


@attrs.frozen
class Message:
    """One message: ``role`` with ``developer`` read as ``system``; ``content`` as sent (use
    :func:`parts_of` / :func:`text_of`); ``tool_calls`` checked, the legacy ``function_call``
    of an assistant message included."""

    index: int
    role: str
    content: Any
    tool_calls: tuple[ToolCall, ...]
    raw: Mapping[str, Any]

    @property
    def where(self) -> str:
        return f"messages[{self.index}]"

    @property
    def tool_call_id(self) -> str | None:
        """The call a ``tool`` message answers."""
        value = self.raw.get("tool_call_id")
        return value if isinstance(value, str) and value else None

    @property
    def name(self) -> str | None:
        value = self.raw.get("name")
        return value if isinstance(value, str) and value else None


def messages_of(body: Mapping[str, Any], *, provider: str,
                roles: Collection[str] = ("system", "user", "assistant", "tool")
                ) -> list[Message]:
    """The request's messages, checked: a non-empty array of objects whose roles are in
    ``roles`` (what the provider takes; ``developer`` counts as ``system``)."""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty array", param="messages")
    out = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request(f"{where} must be an object", param=where)
        role = msg.get("role")
        role = "system" if role == "developer" else role
        if not isinstance(role, str) or role not in roles:
            raise bad_request(f"{where}.role: role {msg.get('role')!r} is not supported by "
                              f"{provider} (it takes {', '.join(sorted(roles))})",
                              param=f"{where}.role")
        calls: tuple[ToolCall, ...] = ()
        if role == "assistant":
            raw_calls = msg.get("tool_calls")
            if raw_calls and not isinstance(raw_calls, list):
                raise bad_request(f"{where}.tool_calls must be an array",
                                  param=f"{where}.tool_calls")
            calls = tuple(_tool_call(c, f"{where}.tool_calls[{j}]", provider)
                          for j, c in enumerate(raw_calls or ()))
            if not calls and isinstance(msg.get("function_call"), dict):
                # OpenAI's legacy shape: one call, without an id.
                calls = (_tool_call({"function": msg["function_call"]},
                                    f"{where}.function_call", provider),)
        out.append(Message(i, role, msg.get("content"), calls, msg))
    return out
