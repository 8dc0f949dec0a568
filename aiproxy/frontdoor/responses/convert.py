"""A Responses request as a chat completion request, and a chat completion as a Response.

The Response object: https://platform.openai.com/docs/api-reference/responses/object (the
``openai`` SDK's ``types/responses/response.py``); chat: .../api-reference/chat/create.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import orjson

from aiproxy.frontdoor.responses.request import ResponsesRequest, new_id
from aiproxy.provider import ChatRequest

__all__ = ["Turn", "chat_usage", "from_chat", "logprobs_of", "next_drop", "output_text_part",
           "response_usage", "skeleton", "to_chat"]

# Finish reasons that leave a response incomplete, and the reason the Response gives.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


@attrs.frozen
class Turn:
    """One response being made: the request, the items the model sees (the conversation so
    far, then the new input), and the id and time the answer carries."""

    request: ResponsesRequest
    context: tuple[dict[str, Any], ...]
    id: str = attrs.field(factory=lambda: new_id("resp"))
    created_at: int = attrs.field(factory=lambda: int(time.time()))


def skeleton(turn: Turn, model: str, status: str = "in_progress") -> dict[str, Any]:
    """The Response object before any output: the request's settings echoed back, with the
    API's defaults where the client set nothing."""
    body = turn.request.body
    reasoning = body.get("reasoning") or {}
    return {
        "id": turn.id, "object": "response", "created_at": turn.created_at, "status": status,
        "background": False, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "model": model, "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": turn.request.previous_id,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": turn.request.store,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs"), "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled", "usage": None,
        "user": body.get("user"), "metadata": body.get("metadata") or {},
    }


# --- request: Responses -> chat -------------------------------------------------------------


def to_chat(turn: Turn, *, stream: bool, drop: int = 0) -> ChatRequest:
    """The chat completion request for ``turn``; ``drop`` leaves out that many of the oldest
    context items (``truncation: auto``)."""
    body = turn.request.body
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    for item in turn.context[drop:]:
        _add_item(messages, item)
    chat: dict[str, Any] = {"model": turn.request.model, "messages": messages}
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        # Chat has no allowed_tools everywhere: offer only the allowed tools, in its mode.
        allowed = {t.get("name") for t in choice["tools"] if isinstance(t, dict)}
        tools = [t for t in tools if t.get("name") in allowed]
        choice = choice["mode"]
    if tools:
        chat["tools"] = [_chat_tool(t) for t in tools if t.get("type") == "function"]
        if isinstance(choice, dict):
            chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        elif choice is not None:
            chat["tool_choice"] = choice
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    user = body.get("safety_identifier") or body.get("user")
    if user:
        chat["user"] = user
    if "message.output_text.logprobs" in (body.get("include") or ()):
        chat["logprobs"] = True
        if body.get("top_logprobs"):
            chat["top_logprobs"] = body["top_logprobs"]
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return ChatRequest(body=chat, raw=orjson.dumps(chat), stream=stream)


def next_drop(turn: Turn, dropped: int) -> int | None:
    """For ``truncation: auto`` after the upstream refused the context as too long: how many
    of the oldest items to leave out next (about half of what is left, cut where a user
    message starts, so no tool call loses its output), or None when only the new input is
    left. The reference's "dropping items from the beginning of the conversation"."""
    keep_from = len(turn.context) - len(turn.request.input)  # the new input always stays
    target = dropped + max(1, (keep_from - dropped) // 2)
    for index in range(target, keep_from + 1):
        item = turn.context[index] if index < len(turn.context) else None
        if index == keep_from or (item is not None and item.get("type") == "message"
                                  and item.get("role") == "user"):
            return index if index > dropped else None
    return None


def _chat_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict")
                if tool.get(k) is not None}
    return {"type": "function", "function": function}


def _text_of(parts: Sequence[Mapping[str, Any]]) -> str:
    return "".join(p.get("text") or p.get("refusal") or "" for p in parts)


def _chat_parts(parts: Sequence[Mapping[str, Any]]) -> str | list[dict[str, Any]]:
    """Input content parts as chat content: one string when it is all text."""
    if all(p.get("type") in ("input_text", "output_text", "text") for p in parts):
        return "\n".join(p["text"] for p in parts) if len(parts) != 1 else parts[0]["text"]
    out: list[dict[str, Any]] = []
    for part in parts:
        kind = part.get("type")
        if kind == "input_image":
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            out.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            file = {k: part[k] for k in ("file_data", "filename") if part.get(k) is not None}
            out.append({"type": "file", "file": file})
        else:
            out.append({"type": "text", "text": part.get("text", "")})
    return out


def _add_item(messages: list[dict[str, Any]], item: Mapping[str, Any]) -> None:
    kind = item.get("type")
    if kind == "message":
        role = item["role"]
        if role == "assistant":
            messages.append({"role": "assistant", "content": _text_of(item["content"])})
        else:
            # "developer" is OpenAI's newer name for "system"; every chat upstream knows system.
            messages.append({"role": "user" if role == "user" else "system",
                             "content": _chat_parts(item["content"])})
    elif kind == "function_call":
        call = {"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)  # parallel calls: one assistant message
        elif last is not None and last["role"] == "assistant" and last.get("content"):
            last["tool_calls"] = [call]  # the text the model said before calling
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item["output"]
        content = output if isinstance(output, str) else _chat_parts(output)
        messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": content})
    # Reasoning items are the upstream's own state: chat takes none back, so they are dropped.


# --- answer: chat -> Response ---------------------------------------------------------------


def from_chat(turn: Turn, data: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The Response for a chat completion ``data`` answered by ``model``."""
    response = skeleton(turn, model, "completed")
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    incomplete = INCOMPLETE.get(finish or "")
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        output.append(reasoning_item(new_id("rs"), reasoning, "completed"))
    text, refusal = message.get("content"), message.get("refusal")
    if isinstance(refusal, str) and refusal:
        output.append(message_item(new_id("msg"), {"type": "refusal", "refusal": refusal},
                                   "completed"))
    elif isinstance(text, str) and (text or not message.get("tool_calls")):
        part = output_text_part(text, logprobs_of(choice))
        output.append(message_item(new_id("msg"), part,
                                   "incomplete" if incomplete else "completed"))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(function_call_item(new_id("fc"), call.get("id") or new_id("call"),
                                         function.get("name") or "",
                                         function.get("arguments") or "", "completed"))
    response["output"] = output
    finish_response(response, incomplete, response_usage(data.get("usage")))
    return response


def finish_response(response: dict[str, Any], incomplete: str | None,
                    usage: dict[str, Any] | None) -> None:
    """Mark ``response`` completed (or incomplete, for ``incomplete``'s reason) with usage."""
    if incomplete:
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": incomplete}
    else:
        response["status"] = "completed"
        response["completed_at"] = int(time.time())
    response["usage"] = usage


def message_item(item_id: str, part: dict[str, Any] | None, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [part] if part is not None else []}


def output_text_part(text: str, logprobs: list[dict[str, Any]] | None = None
                     ) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str,
                       status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def reasoning_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """The upstream's reasoning text, as the ``reasoning_text`` content of a reasoning item
    (chat upstreams give the reasoning itself, not a summary of it)."""
    content = [] if text is None else [{"type": "reasoning_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content,
            "status": status}


def logprobs_of(choice: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Chat ``choice.logprobs.content`` as Responses ``logprobs`` (token, logprob, bytes,
    top_logprobs)."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    out = []
    for entry in content or ():
        if isinstance(entry, dict) and isinstance(entry.get("token"), str):
            out.append({"token": entry["token"], "logprob": entry.get("logprob", 0.0),
                        "bytes": entry.get("bytes") or list(entry["token"].encode()),
                        "top_logprobs": [
                            {"token": t.get("token"), "logprob": t.get("logprob"),
                             "bytes": t.get("bytes") or list(str(t.get("token")).encode())}
                            for t in entry.get("top_logprobs") or () if isinstance(t, dict)]})
    return out


# --- usage, both ways -----------------------------------------------------------------------


def response_usage(usage: Any) -> dict[str, Any] | None:
    """Chat usage as Responses usage (input/output tokens with their cached and reasoning
    details)."""
    if not isinstance(usage, Mapping):
        return None
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": usage.get("total_tokens") or prompt + completion}


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """Responses usage in the chat shape the router settles with."""
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": usage.get("total_tokens")}
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens")
    if isinstance(cached, int):
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens")
    if isinstance(reasoning, int):
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out
