"""An offline provider for demos and tests: deterministic answers, no network, no key.

It echoes the last user message (or answers a fixed ``reply``), streams it word by word, counts
usage in words, and can simulate latency. Given ``tools`` it calls one; given a JSON
``response_format`` it answers JSON that fits the schema. ``config/demo.yaml`` runs on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import struct
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs
import orjson

from aiproxy.provider import (
    Capability,
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorKind,
    ImageRequest,
    ImageResponse,
    Provider,
    StreamChunks,
    UpstreamError,
)

__all__ = ["MAX_CHOICES", "MAX_EMBEDDING_DIMENSIONS", "MAX_EMBEDDING_INPUTS", "MockOptions",
           "MockProvider", "mock_png", "schema_instance"]

# Bounds on what a client can make the mock allocate; beyond them it answers 400.
#: text-embedding-3-large has 3072 dimensions; 8192 leaves room and stays small.
MAX_EMBEDDING_DIMENSIONS = 8192
#: OpenAI's limit on inputs in one embeddings request
#: (https://platform.openai.com/docs/api-reference/embeddings/create#embeddings-create-input).
MAX_EMBEDDING_INPUTS = 2048
#: inputs x dimensions: a million floats (~30 MB as Python objects) per answer.
MAX_EMBEDDING_VALUES = 1 << 20
#: OpenAI's limit on ``n`` chat choices.
MAX_CHOICES = 128
MAX_IMAGES = 10
# A schema instance: nesting (a recursive $ref with no way out stops here), values, string size.
MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_NODES = 10_000
MAX_SCHEMA_STRING = 10_000


def _non_negative(inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0")


def _dimensions_in_range(inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 1 <= value <= MAX_EMBEDDING_DIMENSIONS:
        raise ValueError(f"{attribute.name} must be from 1 to {MAX_EMBEDDING_DIMENSIONS}")


@attrs.frozen
class MockOptions:
    """``options:`` of a mock model."""

    reply: str | None = None  # fixed answer; default: "You said: <last user message>"
    latency: float = attrs.field(default=0.0, validator=_non_negative)  # before the answer
    chunk_delay: float = attrs.field(default=0.0, validator=_non_negative)  # between chunks
    dimensions: int = attrs.field(default=8, validator=_dimensions_in_range)  # embedding size


def _bad(message: str, param: str) -> UpstreamError:
    return UpstreamError(ErrorKind.BAD_REQUEST, message, param=param)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content
                        if isinstance(p, dict) and p.get("type") == "text")
    return ""


def mock_png(width: int = 2, height: int = 2, seed: bytes = b"") -> bytes:
    """A small valid PNG whose colour depends on ``seed``."""
    r, g, b = hashlib.sha256(seed).digest()[:3]
    row = b"\x00" + bytes((r, g, b)) * width
    raw = row * height

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


# --- The smallest JSON value a schema accepts ------------------------------------------------
# JSON Schema 2020-12 (https://json-schema.org/draft/2020-12/json-schema-validation), the subset
# OpenAI structured outputs use (https://platform.openai.com/docs/guides/structured-outputs).


class _Unsatisfiable(Exception):
    """This branch has no value the mock can build; an ``anyOf`` tries its next branch."""


class _TooLarge(Exception):
    """The instance would pass a bound: no branch is tried further."""


_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z", "date": "2024-01-01", "time": "00:00:00Z",
    "duration": "PT0S", "email": "user@example.com", "idn-email": "user@example.com",
    "hostname": "example.com", "idn-hostname": "example.com", "ipv4": "127.0.0.1",
    "ipv6": "::1", "uri": "https://example.com/", "iri": "https://example.com/",
    "uri-reference": "https://example.com/", "uuid": "00000000-0000-4000-8000-000000000000",
    "regex": ".*",
}


class _Builder:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.nodes = 0
        self.refs: list[Any] = []  # the $refs being built, outermost first

    def _spend(self, work: int) -> None:
        # One budget for values built and schema keys copied, failed anyOf branches included:
        # no schema can keep the event loop busy for long.
        self.nodes += work
        if self.nodes > MAX_SCHEMA_NODES:
            raise _TooLarge(f"building it takes more than {MAX_SCHEMA_NODES} steps")

    def _merge(self, base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
        """Both schemas at once, as ``allOf`` means: properties joined, required lists added."""
        self._spend(len(base) + len(extra))
        out = dict(base)
        for key, value in extra.items():
            old = out.get(key)
            if key == "properties" and isinstance(old, dict) and isinstance(value, dict):
                self._spend(len(old) + len(value))
                out[key] = {**old, **value}
            elif key == "required" and isinstance(old, list) and isinstance(value, list):
                self._spend(len(old) + len(value))
                out[key] = list(dict.fromkeys(v for v in (*old, *value) if isinstance(v, str)))
            else:
                out[key] = value
        return out

    def build(self, schema: Any, depth: int) -> Any:
        self._spend(1)
        if depth > MAX_SCHEMA_DEPTH:
            raise _Unsatisfiable(f"it nests deeper than {MAX_SCHEMA_DEPTH} levels")
        if schema is True:
            return None
        if not isinstance(schema, dict):
            raise _Unsatisfiable("a schema must be an object or true")
        if "$ref" in schema:
            ref = schema["$ref"]
            if ref in self.refs:
                # A model inside itself: only another anyOf branch (None, say) can end it.
                raise _Unsatisfiable(f"$ref {ref!r} contains itself with no way out")
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            self.refs.append(ref)
            try:
                return self.build(self._merge(self._resolve(ref), rest), depth + 1)
            finally:
                self.refs.pop()
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        if isinstance(schema.get("allOf"), list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                if isinstance(part, dict) and "$ref" in part:
                    part = self._merge(self._resolve(part["$ref"]), part)
                    part.pop("$ref")
                merged = self._merge(merged, part if isinstance(part, dict) else {})
            return self.build(merged, depth + 1)
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                return self._first_branch(schema, key, branches, depth)
        return self._typed(schema, depth)

    def _first_branch(self, schema: Mapping[str, Any], key: str, branches: list[Any],
                      depth: int) -> Any:
        # The first branch that can be built: Optional[X] gives an X, and a recursive model
        # reached through anyOf [Node, null] ends in null.
        rest = {k: v for k, v in schema.items() if k != key}
        error = _Unsatisfiable(f"no branch of {key} can be built")
        for branch in branches:
            try:
                return self.build(self._merge(rest, branch) if isinstance(branch, dict) else branch,
                                  depth + 1)
            except _Unsatisfiable as exc:
                error = exc
        raise error

    def _resolve(self, ref: Any) -> dict[str, Any]:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise _Unsatisfiable(f"only local $ref ('#/$defs/...') is supported, got {ref!r}")
        node: Any = self.root
        for token in (t for t in ref[1:].split("/") if t):
            token = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or token not in node:
                raise _Unsatisfiable(f"$ref {ref!r} points at nothing")
            node = node[token]
        if not isinstance(node, dict):
            raise _Unsatisfiable(f"$ref {ref!r} is not a schema object")
        return node

    def _typed(self, schema: Mapping[str, Any], depth: int) -> Any:
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = kinds[0] if kinds else "null"
        if kind is None:
            kind = ("object" if {"properties", "required", "additionalProperties"} & schema.keys()
                    else "array" if {"items", "prefixItems"} & schema.keys()
                    else "string" if {"minLength", "pattern", "format"} & schema.keys()
                    else None)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "string":
            return _string(schema)
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        if kind == "boolean":
            return False
        if kind in ("null", None):
            return None
        raise _Unsatisfiable(f"unknown type {kind!r}")

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        extra = schema.get("additionalProperties", True)
        out: dict[str, Any] = {}
        for name in schema.get("required") or ():
            if isinstance(name, str):
                out[name] = self.build(properties.get(name, extra), depth + 1)
        wanted = schema.get("minProperties", 0)
        for name, sub in properties.items():
            if not isinstance(wanted, int) or len(out) >= wanted:
                break
            if name not in out:
                out[name] = self.build(sub, depth + 1)
        if isinstance(wanted, int) and len(out) < wanted:
            raise _Unsatisfiable(f"minProperties {wanted} is more than its properties")
        return out

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        count = schema.get("minItems", 0)
        if not isinstance(count, int) or count < 0:
            raise _Unsatisfiable("minItems must be a non-negative integer")
        if count > MAX_SCHEMA_NODES:
            raise _TooLarge(f"minItems {count} is more than {MAX_SCHEMA_NODES}")
        items = schema.get("items", True)
        prefix = schema.get("prefixItems")
        if isinstance(items, list):  # the draft-4 tuple form
            prefix, items = items, schema.get("additionalItems", True)
        prefix = prefix if isinstance(prefix, list) else []
        out = [self.build(prefix[i] if i < len(prefix) else items, depth + 1)
               for i in range(count)]
        if not out and "contains" in schema:
            out.append(self.build(schema["contains"], depth + 1))
        return out


def _string(schema: Mapping[str, Any]) -> str:
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    low = low if isinstance(low, int) and not isinstance(low, bool) else 0
    high = high if isinstance(high, int) and not isinstance(high, bool) else None
    if low > MAX_SCHEMA_STRING:
        raise _TooLarge(f"minLength {low} is more than {MAX_SCHEMA_STRING}")
    fmt = schema.get("format")
    text = _FORMATS.get(fmt, "mock") if isinstance(fmt, str) else "mock"
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        # No regex inversion: the first of a few plain strings that the pattern matches.
        try:
            compiled = re.compile(pattern)
        except re.error:
            raise _Unsatisfiable(f"pattern {pattern!r} is not a regular expression") from None
        candidates = (text, "", "0", "a", "A", "0" * low, "a" * low)
        text = next((c for c in candidates if compiled.search(c)
                     and low <= len(c) <= (len(c) if high is None else high)), "")
        if not compiled.search(text):
            raise _Unsatisfiable(f"the mock finds no string matching {pattern!r}")
    elif fmt not in _FORMATS:
        text = (text[:high] if high is not None else text).ljust(low, "x")
    if len(text) < low or (high is not None and len(text) > high):
        raise _Unsatisfiable("the mock finds no string of the lengths asked")
    return text


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    def bound(key: str) -> float | None:
        value = schema.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    low, high = bound("minimum"), bound("maximum")
    low_x, high_x = bound("exclusiveMinimum"), bound("exclusiveMaximum")
    # exclusiveMinimum/Maximum are numbers since draft 6, booleans beside minimum in draft 4.
    if schema.get("exclusiveMinimum") is True:
        low, low_x = None, low
    if schema.get("exclusiveMaximum") is True:
        high, high_x = None, high
    step = bound("multipleOf")

    def fits(value: float) -> bool:
        return ((low is None or value >= low) and (low_x is None or value > low_x)
                and (high is None or value <= high) and (high_x is None or value < high_x))

    lower = max((v for v in (low, low_x) if v is not None), default=None)
    upper = min((v for v in (high, high_x) if v is not None), default=None)
    candidates: list[float] = [0]
    candidates += [v for v in (low, high) if v is not None]
    candidates += [v + 1 for v in (low_x,) if v is not None]
    candidates += [v - 1 for v in (high_x,) if v is not None]
    if lower is not None and upper is not None:
        candidates.append((lower + upper) / 2)  # a narrow open interval: its middle
    try:
        for value in candidates:
            if integer:
                value = math.ceil(value)
            if step is not None and step > 0:
                value = math.ceil(value / step) * step
            if fits(value):
                return int(value) if integer or float(value).is_integer() else value
    except (OverflowError, ValueError):
        pass
    raise _Unsatisfiable("the mock finds no number within its bounds")


def schema_instance(schema: Any, param: str) -> Any:
    """A small JSON value valid under ``schema``: required properties, ``minItems`` items,
    enums' and anyOf's first, ``$ref`` into ``$defs``. A schema the mock cannot satisfy, or one
    whose instance passes the bounds above, is a 400 naming ``param``."""
    try:
        return _Builder(schema).build(schema, 0)
    except (_Unsatisfiable, _TooLarge) as exc:
        raise _bad(f"the mock provider cannot build a value for '{param}': {exc}",
                   param) from None


# --- The provider ----------------------------------------------------------------------------


@attrs.frozen
class _ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@attrs.frozen
class _Answer:
    text: str | None
    call: _ToolCall | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int  # of one choice
    n: int


def _positive_int(body: Mapping[str, Any], key: str, high: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (
            high is not None and value > high):
        bound = f"from 1 to {high}" if high is not None else "of at least 1"
        raise _bad(f"'{key}' must be an integer {bound}", key)
    return value


def _name(tool: Any) -> str | None:
    """``function.name`` of a tool or a named tool_choice."""
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def _chosen_tool(body: Mapping[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """The function to call per ``tool_choice``
    (https://platform.openai.com/docs/api-reference/chat/create#chat-create-tool_choice):
    ``none`` calls nothing; ``auto`` (the default) the first function, except right after a
    ``tool`` message; ``required`` the first function; a named one that function."""
    tools = [(i, t["function"]) for i, t in enumerate(body.get("tools") or ())
             if isinstance(t, dict) and t.get("type") == "function"
             and isinstance(t.get("function"), dict)]
    for i, function in tools:
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise _bad(f"'tools[{i}].function.name' must be a non-empty string",
                       f"tools[{i}].function.name")
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    forced = choice == "required"
    if isinstance(choice, dict):
        if choice.get("type") == "function":
            names = {_name(choice)}
            forced = True
        elif choice.get("type") == "allowed_tools":
            allowed = choice.get("allowed_tools")
            allowed = allowed if isinstance(allowed, dict) else {}
            names = {_name(t) for t in allowed.get("tools") or ()}
            forced = allowed.get("mode") == "required"
        else:
            raise _bad(f"tool_choice type {choice.get('type')!r} is not supported by the mock "
                       "provider", "tool_choice")
        tools = [(i, f) for i, f in tools if f["name"] in names]
        if not tools:
            raise _bad("tool_choice names no function in 'tools'", "tool_choice")
    elif choice not in (None, "auto", "required"):
        raise _bad("'tool_choice' must be none, auto, required or a function", "tool_choice")
    messages = body.get("messages") or []
    if not forced and messages and isinstance(messages[-1], dict) and \
            messages[-1].get("role") == "tool":
        return None  # the tool has answered: now the model answers in text
    return tools[0]


def _json_reply(body: Mapping[str, Any], text: str) -> str | None:
    """The answer for a JSON ``response_format``, or None for plain text."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return orjson.dumps({"text": text}).decode()
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise _bad("'response_format.json_schema' must be an object",
                       "response_format.json_schema")
        schema = spec.get("schema", {"type": "object"})
        return orjson.dumps(schema_instance(schema, "response_format.json_schema.schema")
                            ).decode()
    raise _bad(f"response_format type {fmt['type']!r} is not one of text, json_object, "
               "json_schema", "response_format.type")


class MockProvider(Provider):
    capabilities = frozenset({Capability.CHAT, Capability.EMBEDDINGS, Capability.IMAGES})
    plugin_api_version = 2
    requires_token = False  # offline: no upstream

    @property
    def accepts_continuation(self) -> bool:
        return True  # it continues a trailing assistant turn
    default_url = "mock://local"
    options_type = MockOptions

    def _answer(self, body: Mapping[str, Any], completion: str, *,
                continuing: bool = False) -> _Answer:
        options: MockOptions = self.options
        n = _positive_int(body, "n", MAX_CHOICES) or 1
        limit = _positive_int(body, "max_tokens")
        limit = _positive_int(body, "max_completion_tokens") or limit
        messages = body.get("messages") or []
        prompt = sum(len(_text_of(m.get("content")).split()) for m in messages
                     if isinstance(m, dict))
        chosen = _chosen_tool(body)
        if chosen is not None:
            i, function = chosen
            # A function without parameters takes none: its arguments are "{}".
            schema = function.get("parameters") or {"type": "object", "properties": {}}
            arguments = orjson.dumps(
                schema_instance(schema, f"tools[{i}].function.parameters")).decode()
            digest = hashlib.sha256(f"{completion}:{function['name']}".encode()).hexdigest()
            call = _ToolCall(f"call_{digest[:24]}", function["name"], arguments)
            return _Answer(None, call, "tool_calls", prompt, max(1, len(arguments.split())), n)
        if options.reply is not None:
            text = options.reply
        else:
            last = next((_text_of(m.get("content")) for m in reversed(messages)
                         if isinstance(m, dict) and m.get("role") == "user"), "")
            text = f"You said: {last}"
        text = _json_reply(body, text) or text
        if continuing:
            # A continuation: the answer goes on from the trailing assistant turn, which holds
            # the start of this very answer (what the client already has).
            prefix = _text_of(messages[-1].get("content")) if messages else ""
            text = text[len(prefix):] if text.startswith(prefix) else text
        # Words stand for tokens: an answer longer than the limit is cut, as upstreams do. The
        # answer never grows with the limit, so a huge one costs nothing.
        words, finish = text.split(" "), "stop"
        if limit is not None and len(words) > limit:
            text, finish = " ".join(words[:limit]), "length"
        return _Answer(text, None, finish, prompt, len(text.split()), n)

    @staticmethod
    def _completion_id(body: Mapping[str, Any]) -> str:
        digest = hashlib.sha256(repr(body.get("messages")).encode()).hexdigest()[:24]
        return f"chatcmpl-mock-{digest}"

    @staticmethod
    def _usage(answer: _Answer) -> dict[str, int]:
        completion = answer.completion_tokens * answer.n
        return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": completion,
                "total_tokens": answer.prompt_tokens + completion}

    async def chat(self, request: ChatRequest) -> ChatResponse:
        options: MockOptions = self.options
        completion_id = self._completion_id(request.body)
        answer = self._answer(request.body, completion_id)
        if options.latency:
            await asyncio.sleep(options.latency)
        message: dict[str, Any] = {"role": "assistant", "content": answer.text}
        if answer.call is not None:
            message["tool_calls"] = [{"id": answer.call.id, "type": "function", "function": {
                "name": answer.call.name, "arguments": answer.call.arguments}}]
        return ChatResponse({
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model.name,
            "choices": [{"index": i, "message": message, "finish_reason": answer.finish_reason,
                         "logprobs": None} for i in range(answer.n)],
            "usage": self._usage(answer),
        })

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        options: MockOptions = self.options
        completion_id = self._completion_id(request.body)
        answer = self._answer(request.body, completion_id, continuing=request.continuation)
        if options.latency:
            await asyncio.sleep(options.latency)
        chunks = StreamChunks(self.model.name, id=completion_id)
        for index in range(answer.n):
            for i, delta in enumerate(self._deltas(answer)):
                if options.chunk_delay and (i or index):
                    await asyncio.sleep(options.chunk_delay)
                yield chunks.chunk(delta, index=index)
            yield chunks.chunk({}, answer.finish_reason, index=index)
        if request.include_usage:
            yield chunks.usage(self._usage(answer))

    @staticmethod
    def _deltas(answer: _Answer) -> list[dict[str, Any]]:
        """One choice's deltas: the role, then the text word by word, or a tool call whose
        arguments come in pieces (OpenAI's streamed tool-call shape:
        https://platform.openai.com/docs/guides/function-calling#streaming)."""
        call = answer.call
        if call is None:
            words = (answer.text or "").split(" ")
            return [{"role": "assistant", "content": ""},
                    *({"content": word if i == 0 else " " + word} for i, word in enumerate(words))]
        opening = {"role": "assistant", "content": None, "tool_calls": [{
            "index": 0, "id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": ""}}]}
        pieces = [call.arguments[i:i + 16] for i in range(0, len(call.arguments), 16)]
        return [opening, *({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                           for piece in pieces)]

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        options: MockOptions = self.options
        raw_input = request.body.get("input")
        inputs = [raw_input] if isinstance(raw_input, str) else list(raw_input or [])
        dims = _positive_int(request.body, "dimensions", MAX_EMBEDDING_DIMENSIONS) \
            or options.dimensions
        if len(inputs) > MAX_EMBEDDING_INPUTS:
            raise _bad(f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items", "input")
        if len(inputs) * dims > MAX_EMBEDDING_VALUES:
            raise _bad(f"inputs x dimensions must be at most {MAX_EMBEDDING_VALUES} in one "
                       "request to the mock provider", "dimensions")
        data = []
        for i, item in enumerate(inputs):
            digest = hashlib.sha256(str(item).encode()).digest()
            vector = [((digest[j % 32] / 255.0) * 2 - 1) for j in range(dims)]
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            data.append({"object": "embedding", "index": i,
                         "embedding": [v / norm for v in vector]})
        tokens = sum(len(str(item).split()) for item in inputs)
        return EmbeddingsResponse({"object": "list", "data": data, "model": self.model.name,
                                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def images(self, request: ImageRequest) -> ImageResponse:
        n = _positive_int(request.body, "n", MAX_IMAGES) or 1
        prompt = str(request.body.get("prompt", ""))
        return ImageResponse(tuple((mock_png(seed=f"{prompt}:{i}".encode()), "image/png")
                                   for i in range(n)))
