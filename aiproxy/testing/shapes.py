"""What the OpenAI shapes must look like: completions, chunks, usage, tool calls."""

from __future__ import annotations

from typing import Any

import orjson

from aiproxy.testing.adapter import TEXT, USAGE, ToolCall
from aiproxy.testing.world import expect

__all__ = ["check_chunks", "check_completion", "check_tool_call", "check_tool_chunks",
           "check_usage"]


def check_usage(usage: Any, exact: bool, where: str) -> None:
    expect(isinstance(usage, dict), f"{where}: usage is {usage!r}, not an object")
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    for key in keys:
        value = usage.get(key)
        expect(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
               f"{where}: usage.{key} is {value!r}, not a non-negative int")
    got = tuple(usage[k] for k in keys)
    if exact:
        want = (USAGE.prompt_tokens, USAGE.completion_tokens, USAGE.total_tokens)
        expect(got == want, f"{where}: usage {got} does not match the upstream's {want}")
    else:
        expect(got[2] == got[0] + got[1], f"{where}: total_tokens is not prompt + completion")


def check_completion(data: Any, exact_usage: bool, *, text: str | None = TEXT,
                     finish: str = "stop") -> dict[str, Any]:
    """A ``chat.completion`` with one choice; ``text`` None: any content. Its message."""
    expect(isinstance(data, dict), "chat() answered no dict")
    expect(data.get("object") == "chat.completion", f"object is {data.get('object')!r}")
    expect(isinstance(data.get("id"), str) and data["id"], "id is not a non-empty string")
    expect(type(data.get("created")) is int, f"created is {data.get('created')!r}, not an int")
    expect(isinstance(data.get("model"), str), "model is not a string")
    choices = data.get("choices")
    expect(isinstance(choices, list) and len(choices) == 1, f"choices is {choices!r}")
    choice = choices[0]
    expect(isinstance(choice, dict) and choice.get("index") == 0, "choices[0].index is not 0")
    message = choice.get("message")
    expect(isinstance(message, dict) and message.get("role") == "assistant",
           f"choices[0].message.role is not 'assistant' ({message!r})")
    if text is not None:
        expect(message.get("content") == text,
               f"content {message.get('content')!r} is not the upstream's {text!r}")
    expect(choice.get("finish_reason") == finish,
           f"finish_reason is {choice.get('finish_reason')!r}, expected {finish!r}")
    check_usage(data.get("usage"), exact_usage, "usage")
    return dict(message)


def check_tool_call(message: dict[str, Any], call: ToolCall | None,
                    names: tuple[str, ...]) -> dict[str, Any]:
    """The message's one tool call: ``call``'s name and arguments (``None``: any function of
    ``names`` with object arguments). Returns the call as the client got it."""
    calls: Any = message.get("tool_calls")
    expect(isinstance(calls, list) and len(calls) == 1,
           f"message.tool_calls is {calls!r}, expected one call")
    got = calls[0]
    expect(isinstance(got, dict) and got.get("type") == "function",
           f"the tool call's type is not 'function' ({got!r})")
    expect(isinstance(got.get("id"), str) and got["id"],
           "the tool call has no id (the client needs one for its tool message)")
    function = got.get("function")
    expect(isinstance(function, dict), f"the tool call has no function object ({got!r})")
    _check_function(function.get("name"), function.get("arguments"), call, names)
    content = message.get("content")
    expect(content is None or isinstance(content, str),
           f"content beside tool_calls is {content!r}, not a string or null")
    return dict(got)


def _check_function(name: Any, arguments: Any, call: ToolCall | None,
                    names: tuple[str, ...]) -> None:
    expect(name == call.name if call else name in names,
           f"the called function is {name!r}, expected {call.name if call else names!r}")
    expect(isinstance(arguments, str),
           f"function.arguments is {arguments!r}: OpenAI sends a JSON string, not an object")
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    if call is not None:
        expect(parsed == dict(call.arguments),
               f"function.arguments {arguments!r} is not {call.arguments_json!r}")
    else:
        expect(isinstance(parsed, dict), f"function.arguments {arguments!r} is not a JSON "
               "object")


def _check_stream_basics(chunks: list[dict[str, Any]]) -> None:
    expect(chunks, "the stream yielded no chunk")
    for i, chunk in enumerate(chunks):
        expect(isinstance(chunk, dict) and chunk.get("object") == "chat.completion.chunk",
               f"chunk {i}: object is not 'chat.completion.chunk' ({chunk!r})")
        expect(isinstance(chunk.get("choices"), list), f"chunk {i}: choices is not a list")
    ids = {(c.get("id"), c.get("created"), c.get("model")) for c in chunks}
    expect(len(ids) == 1, f"id/created/model differ between chunks: {sorted(map(str, ids))}")
    first = chunks[0]
    expect(isinstance(first.get("id"), str) and first["id"], "id is not a non-empty string")
    expect(type(first.get("created")) is int, "created is not an int")
    expect(isinstance(first.get("model"), str), "model is not a string")
    expect(first["choices"] and first["choices"][0].get("delta", {}).get("role") == "assistant",
           f"the first chunk does not carry delta.role='assistant' ({first!r})")


def _finishes(chunks: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    finishes: list[tuple[int, Any]] = []
    for i, chunk in enumerate(chunks):
        for choice in chunk["choices"]:
            expect(isinstance(choice.get("delta"), dict),
                   f"chunk {i}: a choice has no delta object")
            expect(not finishes, f"chunk {i}: a choice after the finish_reason")
            if choice.get("finish_reason") is not None:
                finishes.append((i, choice["finish_reason"]))
    return finishes


def _check_stream_end(chunks: list[dict[str, Any]], finish: str, *, include_usage: bool,
                      exact: bool) -> None:
    finishes = _finishes(chunks)
    expect(len(finishes) == 1, f"expected exactly one finish_reason, got {finishes}")
    expect(finishes[0][1] == finish,
           f"finish_reason is {finishes[0][1]!r}, expected {finish!r}")
    with_usage = [i for i, c in enumerate(chunks) if c.get("usage") is not None]
    if include_usage:
        last = chunks[-1]
        expect(with_usage == [len(chunks) - 1] and last["choices"] == [],
               "include_usage: expected the last chunk alone to carry usage, with choices []"
               f" (usage in chunks {with_usage})")
        check_usage(last["usage"], exact, "the usage chunk")
    else:
        expect(not with_usage, f"usage was not asked for, but chunks {with_usage} carry it")


def check_chunks(chunks: list[dict[str, Any]], *, include_usage: bool, exact: bool) -> None:
    """A text stream: one id, the role first, the canonical text, one finish, the usage."""
    _check_stream_basics(chunks)
    text = "".join(choice["delta"]["content"] for chunk in chunks
                   for choice in chunk["choices"]
                   if isinstance(choice.get("delta"), dict)
                   and isinstance(choice["delta"].get("content"), str))
    expect(text == TEXT, f"the streamed text {text!r} is not the upstream's {TEXT!r}")
    _check_stream_end(chunks, "stop", include_usage=include_usage, exact=exact)


def check_tool_chunks(chunks: list[dict[str, Any]], call: ToolCall | None,
                      names: tuple[str, ...], *, exact: bool) -> None:
    """A streamed tool call, assembled as the openai SDK does: ``tool_calls`` deltas by
    ``index``; the first delta of an index brings ``id``, ``type`` and ``function.name``,
    later ones only more ``function.arguments``
    (https://platform.openai.com/docs/api-reference/chat-streaming/streaming)."""
    _check_stream_basics(chunks)
    calls: dict[int, dict[str, Any]] = {}
    for i, chunk in enumerate(chunks):
        for choice in chunk["choices"]:
            deltas = (choice.get("delta") or {}).get("tool_calls")
            if deltas is None:
                continue
            expect(isinstance(deltas, list), f"chunk {i}: delta.tool_calls is not a list")
            for delta in deltas:
                _assemble(calls, delta, i)
    expect(list(calls) == [0], f"the stream assembles to tool calls at indexes "
           f"{sorted(calls)}, expected one call at index 0 (a fragment of a call must keep "
           "its call's index, not start a new one)")
    got = calls[0]
    expect(got["id"], "the streamed tool call has no id")
    _check_function(got["name"], got["arguments"], call, names)
    _check_stream_end(chunks, "tool_calls", include_usage=True, exact=exact)


def _assemble(calls: dict[int, dict[str, Any]], delta: Any, at: int) -> None:
    expect(isinstance(delta, dict) and isinstance(delta.get("index"), int),
           f"chunk {at}: a tool_calls delta without an integer index ({delta!r})")
    index = delta["index"]
    function = delta.get("function") or {}
    fragment = function.get("arguments")
    expect(fragment is None or isinstance(fragment, str),
           f"chunk {at}: function.arguments is {fragment!r}, not a string fragment")
    if index not in calls:
        expect(isinstance(delta.get("id"), str) and delta["id"]
               and delta.get("type") == "function" and function.get("name"),
               f"chunk {at}: the first delta of tool call {index} lacks its id, type "
               f"'function' or function.name ({delta!r})")
        calls[index] = {"id": delta["id"], "name": function["name"],
                        "arguments": fragment or ""}
        return
    known = calls[index]
    # Later deltas may repeat the id and name (some upstreams do) but never change them.
    expect(delta.get("id") in (None, known["id"]),
           f"chunk {at}: tool call {index} changes its id to {delta.get('id')!r}")
    expect(function.get("name") in (None, "", known["name"]),
           f"chunk {at}: tool call {index} changes its name to {function.get('name')!r}")
    known["arguments"] += fragment or ""
