"""GigaChat's dialect of the OpenAI API, both ways: requests, answers, stream events, errors.

GigaChat speaks nearly OpenAI's Chat Completions, except for tools: they are the older OpenAI
``functions``/``function_call`` shape, with ``arguments`` a JSON object instead of a string, one
call per message, results sent back as role ``function``, and a ``functions_state_id`` to send
back with the call. References:

* chat: https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/post-chat
* functions: https://developers.sber.ru/docs/ru/gigachat/api/function-calling and
  https://developers.sber.ru/docs/ru/gigachat/guides/functions/function-calling-modes
* streaming: https://developers.sber.ru/docs/en/gigachat/api/response-token-streaming
* errors: https://developers.sber.ru/docs/ru/gigachat/api/errors-description
* structured output (``response_format``) and reasoning (``reasoning_effort``), which the chat
  reference does not list yet: the official SDK, https://github.com/ai-forever/gigachat
  (``src/gigachat/models/chat.py``, ``models/response_format.py``), and the request it records
  against the live API (``tests/integration/cassettes/test_chat_response_format_json_schema``)
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from aiproxy.provider import (
    ErrorKind,
    ErrorRule,
    ErrorTable,
    FunctionTool,
    Message,
    Parameters,
    UpstreamError,
    bad_request,
    function_tools,
    max_tokens_of,
    messages_of,
    openai_finish_reason,
    openai_usage,
    text_of,
    tool_call_id,
    tool_choice_of,
)

__all__ = ["CHAT_PARAMETERS", "EMBEDDING_PARAMETERS", "ERRORS", "GREEDY_TEMPERATURE",
           "PROVIDER", "call_id", "chat_body", "finish_reason", "state_of", "usage"]

PROVIDER = "GigaChat"

# What post-chat has room for. GigaChat's own fields beside OpenAI's are passed on as sent.
CHAT_PARAMETERS = Parameters(
    PROVIDER,
    supported={"temperature", "top_p", "max_tokens", "max_completion_tokens", "tools",
               "tool_choice", "functions", "function_call", "response_format",
               "reasoning_effort"},
    ignored={"seed", "user", "metadata", "store", "parallel_tool_calls", "service_tier",
             "prediction", "safety_identifier", "prompt_cache_key", "prompt_cache_options",
             "prompt_cache_retention"},
    extensions={"repetition_penalty", "update_interval", "profanity_check"},
    notes={
        "seed": "GigaChat takes no seed",
        "parallel_tool_calls": "GigaChat calls one function per answer",
        "n": "GigaChat returns one choice per request",
        "stop": "GigaChat has no stop sequences",
        "frequency_penalty": "use repetition_penalty",
        "presence_penalty": "use repetition_penalty",
        "logprobs": "GigaChat returns no log probabilities",
        "top_logprobs": "GigaChat returns no log probabilities",
        "logit_bias": "GigaChat has no logit bias",
        "audio": "GigaChat answers in text only",
        "modalities": "GigaChat answers in text only",
        "web_search_options": "GigaChat has no web search option",
    },
)
EMBEDDING_PARAMETERS = Parameters(
    PROVIDER, supported={"encoding_format"}, ignored={"user"},
    notes={"dimensions": "GigaChat embeddings have a fixed size"}, api="embeddings")

# GigaChat answers {"status": 401, "message": "..."}; errors-description lists the statuses.
ERRORS = ErrorTable(statuses={
    # The model's token budget is used up: another model or account may still serve.
    402: ErrorRule(ErrorKind.RATE_LIMITED, status=429),
    # "Payload too large": the prompt exceeds the model's context window.
    413: ErrorKind.CONTEXT_LENGTH,
})

# post-chat, temperature: "from 0 to 0.001" resets temperature and top_p to the most
# deterministic answer, and 0 itself is refused (exclusiveMinimum). Half-way, clear of both ends.
GREEDY_TEMPERATURE = 0.0005

_REASONING_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
                      "xhigh": "high", "max": "high"}

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "function_call": "tool_calls",
    "blacklist": "content_filter",  # GigaChat's own moderation refused the topic
}

# Sent as the client set them: GigaChat's own fields, and the sampling ones it shares.
_PASSED = ("temperature", "top_p", "repetition_penalty", "update_interval", "profanity_check")


# --- OpenAI request -> GigaChat request ------------------------------------------------------


def _function_result(msg: Message) -> str:
    # GigaChat wants "a valid JSON object" as a function result (post-chat, role function);
    # OpenAI tools may answer anything, so other results are wrapped as {"result": ...}.
    text = text_of(msg.content, msg.where, provider=PROVIDER, joiner="\n")
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return orjson.dumps({"result": text}).decode()
    return text if isinstance(parsed, dict) else orjson.dumps({"result": parsed}).decode()


def _function_message(msg: Message, names: Mapping[str, str]) -> dict[str, Any]:
    name = msg.name or names.get(msg.tool_call_id or "")
    if not name:
        raise bad_request(f"{msg.where}: a tool result must answer a tool call of an earlier "
                          "assistant message", param=f"{msg.where}.tool_call_id")
    return {"role": "function", "name": name, "content": _function_result(msg)}


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OpenAI messages → GigaChat messages."""
    messages = messages_of(body, provider=PROVIDER,
                           roles=("system", "user", "assistant", "tool", "function"))
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id → function name, for role "function" messages
    i = 0
    while i < len(messages):
        msg = messages[i]
        i += 1
        if msg.role in ("tool", "function"):
            out.append(_function_message(msg, names))
            continue
        content = text_of(msg.content, msg.where, provider=PROVIDER, joiner="\n")
        if not msg.tool_calls:
            out.append({"role": msg.role, "content": content})
            continue
        # GigaChat makes one call per message. Parallel calls (from another model, before a
        # fallback) become alternating call/result pairs, the order GigaChat's history has.
        results = []
        while i < len(messages) and messages[i].role in ("tool", "function"):
            results.append(messages[i])
            i += 1
        by_call: dict[str, Message] = {}
        for result in results:
            by_call.setdefault(result.tool_call_id or "", result)
        placed: set[int] = set()
        for j, call in enumerate(msg.tool_calls):
            assistant: dict[str, Any] = {
                "role": "assistant", "content": content if j == 0 else "",
                "function_call": {"name": call.name, "arguments": call.arguments_object()}}
            state = state_of(call.id)
            if state is not None:
                # The answer's functions_state_id, kept in the call id (see call_id).
                assistant["functions_state_id"] = state
            out.append(assistant)
            if call.id:
                names[call.id] = call.name
                answer = by_call.get(call.id)
                if answer is not None:
                    out.append(_function_message(answer, names))
                    placed.add(answer.index)
        out += [_function_message(r, names) for r in results if r.index not in placed]
    return out


def _function(tool: FunctionTool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description:
        out["description"] = tool.description
    # GigaChat expects a parameters schema even for a function without arguments.
    out["parameters"] = tool.parameters or {"type": "object", "properties": {}}
    return out


def _functions(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """``tools``/``tool_choice`` (or legacy ``functions``/``function_call``) → GigaChat's."""
    tools = function_tools(body, provider=PROVIDER, legacy=True)
    choice = tool_choice_of(body, tools, provider=PROVIDER, legacy=True)
    if not tools:
        return [], None
    functions = [_function(tool) for tool in tools]
    if choice is None or choice.mode == "auto":
        # OpenAI's default with tools is auto; say so rather than rely on GigaChat's default.
        return functions, "auto"
    if choice.mode == "none":
        return functions, "none"
    if choice.mode == "required":
        # GigaChat can force a named function only; with one tool that is the same thing.
        if len(functions) == 1:
            return functions, {"name": functions[0]["name"]}
        raise bad_request("GigaChat cannot require \"some\" tool: name one ({\"type\": "
                          "\"function\", \"function\": {\"name\": ...}})", param="tool_choice")
    return functions, {"name": choice.name}


# GigaChat answers a function call with a `functions_state_id` and wants it back on that
# assistant message in the next request (post-chat, messages[].functions_state_id). OpenAI
# clients keep nothing but the tool call's id across turns, so the state travels inside it:
# "call_gsu" + the UUID's 32 hex digits (40 characters, the most OpenAI accepts in a tool call id,
# so the history can still fall back to an OpenAI model), or, for a state that is not a UUID in
# canonical form, "call_gsb" + its UTF-8 in unpadded base64url. Both use only [A-Za-z0-9_-].
_STATE_UUID = "call_gsu"
_STATE_TEXT = "call_gsb"
_HEX32 = frozenset("0123456789abcdef")


def call_id(state: Any) -> str:
    """The OpenAI tool call id for a GigaChat function call (which has no id of its own)."""
    if not isinstance(state, str) or not state:
        return tool_call_id()
    try:
        if str(uuid.UUID(state)) == state:
            return _STATE_UUID + uuid.UUID(state).hex
    except ValueError:
        pass
    return _STATE_TEXT + base64.urlsafe_b64encode(state.encode()).decode().rstrip("=")


def state_of(call_id: Any) -> str | None:
    """The ``functions_state_id`` a tool call id made by :func:`call_id` carries, if any."""
    if not isinstance(call_id, str):
        return None
    body = call_id[len(_STATE_UUID):]
    if call_id.startswith(_STATE_UUID) and len(body) == 32 and set(body) <= _HEX32:
        return str(uuid.UUID(hex=body))
    if call_id.startswith(_STATE_TEXT):
        encoded = call_id[len(_STATE_TEXT):]
        try:
            state = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_",
                                     validate=True).decode()
        except ValueError:  # not base64url, or not UTF-8 (UnicodeDecodeError is a ValueError)
            return None
        return state or None
    return None


def _response_format(fmt: Any) -> dict[str, Any] | None:
    """OpenAI ``response_format`` → GigaChat's; None for plain text.

    GigaChat takes ``{"type": "json_schema", "schema": <JSON Schema>, "strict"?: bool}``
    (the schema at the top level, as the official SDK sends it: ai-forever/gigachat
    ``models/response_format.py``), where OpenAI nests ``{name, schema, strict}`` under
    ``json_schema``. OpenAI's ``name`` and ``description`` have no place there and are dropped.
    """
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise bad_request("response_format: expected an object", param="response_format")
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind != "json_schema":
        return fmt  # json_object and GigaChat's own types: as sent (GigaChat judges them)
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise bad_request("response_format: a json_schema needs json_schema.schema (an object)",
                          param="response_format.json_schema.schema")
    out: dict[str, Any] = {"type": "json_schema", "schema": schema}
    strict = spec.get("strict") if isinstance(spec, dict) else None
    if isinstance(strict, bool):
        out["strict"] = strict
    return out


def _reasoning_effort(effort: Any) -> str | None:
    """OpenAI ``reasoning_effort`` → GigaChat's ``reasoning_effort`` (low, medium, high).

    The v1 chat request takes ``reasoning_effort`` for reasoning models such as
    GigaChat-2-Reasoning (the official SDK's ``Chat.reasoning_effort``, ai-forever/gigachat
    ``models/chat.py``, and its reasoning example). OpenAI's ``minimal``, ``xhigh`` and ``max``
    go to the nearest level GigaChat has; ``none`` cannot be expressed (GigaChat documents no
    way to turn reasoning off), so it is refused rather than silently reasoning anyway.
    """
    if effort is None:
        return None
    mapped = _REASONING_EFFORTS.get(effort) if isinstance(effort, str) else None
    if mapped is None:
        raise bad_request(f"reasoning_effort {effort!r} is not supported by GigaChat: use low, "
                          "medium or high (minimal maps to low, xhigh and max to high)",
                          param="reasoning_effort")
    return mapped

def chat_body(body: Mapping[str, Any], model: str, *, stream: bool) -> dict[str, Any]:
    """The GigaChat request for an OpenAI one; 400 for what would change the answer."""
    CHAT_PARAMETERS.check(body)
    out: dict[str, Any] = {"model": model, "messages": _messages(body)}
    functions, function_call = _functions(body)
    if functions:
        out["functions"] = functions
    if function_call is not None:
        out["function_call"] = function_call
    for key in _PASSED:
        if body.get(key) is not None:
            out[key] = body[key]
    if out.get("temperature") == 0:
        # post-chat: temperature must be > 0 (0 is a 422); a value from 0 to 0.001 is its
        # documented switch to the most deterministic answer, which OpenAI's 0 asks for.
        out["temperature"] = GREEDY_TEMPERATURE
    effort = _reasoning_effort(body.get("reasoning_effort"))
    if effort is not None:
        out["reasoning_effort"] = effort
    max_tokens = max_tokens_of(body)
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    fmt = _response_format(body.get("response_format"))
    if fmt is not None:
        out["response_format"] = fmt
    if stream:
        out["stream"] = True
    return out


# --- GigaChat answer -> OpenAI answer --------------------------------------------------------


def finish_reason(raw: Any, called: bool) -> str:
    if raw == "error":
        # GigaChat gave up mid-answer; what it sent is incomplete, another attempt may succeed.
        raise UpstreamError(ErrorKind.OVERLOADED, "GigaChat ended the answer with an error")
    return openai_finish_reason(raw, _FINISH_REASONS, tool_calls=called)


def usage(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    return openai_usage(raw.get("prompt_tokens"), raw.get("completion_tokens"),
                        total=raw.get("total_tokens"), cached=raw.get("precached_prompt_tokens"))
