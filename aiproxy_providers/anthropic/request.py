"""An OpenAI chat completion request as an Anthropic Messages request.

Every mapping follows Anthropic's reference:

- Messages: https://docs.anthropic.com/en/api/messages (``system`` at the top level; turns
  alternate, and consecutive same-role turns are combined; ``max_tokens`` is required)
- Images and PDFs: https://docs.anthropic.com/en/docs/build-with-claude/vision (``image``
  blocks with a ``base64`` or ``url`` source), .../pdf-support (``document`` blocks)
- Tools: https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use
  (``tools[].input_schema``; ``tool_choice`` ``auto`` / ``any`` / ``tool`` / ``none`` with
  ``disable_parallel_tool_use``; results as ``tool_result`` blocks in the next user turn)
- Extended thinking: https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking
  (``budget_tokens`` >= 1024 and below ``max_tokens``; thinking blocks, with their signatures,
  sent back unchanged in a tool-use loop; temperature and top_k cannot be changed with
  thinking, top_p only between 0.95 and 1), and adaptive thinking with ``output_config.effort``
- Prompt caching: https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching
  (``cache_control`` on system blocks, message blocks and tools)
- Structured outputs: https://docs.anthropic.com/en/docs/build-with-claude/structured-outputs
  (``output_config.format: {"type": "json_schema", "schema"}``); for older models a forced
  tool (https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use#json-mode)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from aiproxy.provider import ErrorKind, Parameters, UpstreamError

from .content import (
    assistant_blocks,
    bad_request,
    cached,
    message_cache,
    text_blocks,
    tool_result,
    user_blocks,
)

__all__ = ["CHAT_PARAMETERS", "THINKING_MIN", "Plan", "Settings", "messages_body"]

#: The smallest thinking budget Anthropic accepts.
THINKING_MIN = 1024
# The effort names of adaptive thinking for OpenAI's reasoning_effort values.
_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
            "xhigh": "xhigh"}


@attrs.frozen
class Settings:
    """What the translation needs to know of the model (its options over its profile)."""

    model_name: str
    upstream_model: str
    max_tokens: int
    prefill: bool
    thinking: str  # "budget" or "adaptive"
    sampling: bool
    structured: str  # "native" or "tool"
    xhigh: bool
    budgets: Mapping[str, int]


@attrs.frozen
class Plan:
    """The translated request, and what the answer's translation must know of it."""

    body: dict[str, Any]
    json_tool: str | None = None  # the forced tool whose input is the answer's JSON content
    trimmed_prefill: bool = False  # the prefill lost trailing whitespace: trim the answer's


# ---------------------------------------------------------------------------- messages


def _conversation(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(system blocks, turns)``: system/developer messages lifted to ``system``, the rest
    as alternating turns (consecutive same-role messages merged, tool results in user turns)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role")
        if role in ("system", "developer"):
            blocks = text_blocks(message.get("content"), where)
            message_cache(message, blocks)
            system += blocks
            continue
        if role == "user":
            blocks = user_blocks(message.get("content"), where)
        elif role == "assistant":
            blocks = assistant_blocks(message, where)
        elif role == "tool":
            blocks = [tool_result(message, where)]
            role = "user"
        else:
            raise bad_request(f"{where}.role {role!r} is not supported by Anthropic (use tools "
                              "instead of the deprecated functions)", f"{where}.role")
        message_cache(message, blocks)
        if not blocks:
            continue  # Anthropic refuses empty content; an empty message says nothing
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise bad_request("messages must hold at least one user or assistant message",
                          "messages")
    return system, turns


def _compact(turns: list[dict[str, Any]]) -> None:
    """A turn of one plain text block is sent as a string (the shorthand of the API)."""
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text" and len(content[0]) == 2:
            turn["content"] = content[0]["text"]


def _trim_prefill(turns: list[dict[str, Any]], settings: Settings) -> bool:
    """A conversation ending with an assistant turn is a prefill (a continuation): refused
    up front for a model that does not accept one; its text loses trailing whitespace, which
    Anthropic refuses ("final assistant content cannot end with trailing whitespace")."""
    last = turns[-1]
    if last["role"] != "assistant":
        return False
    if not settings.prefill:
        raise UpstreamError(ErrorKind.BAD_REQUEST, f"model {settings.model_name!r} does not "
                            "accept an assistant prefill: the conversation must end with a "
                            "user message", status=400, code="prefill_not_supported",
                            param="messages")
    trimmed = False
    content = last["content"]
    while content and content[-1]["type"] == "text":
        text = content[-1]["text"].rstrip()
        trimmed = trimmed or text != content[-1]["text"]
        if text:
            content[-1]["text"] = text
            break
        content.pop()
    if not content:
        turns.pop()
        if not turns:
            raise bad_request("messages must hold at least one user message", "messages")
    return trimmed


# ------------------------------------------------------------------------------- tools


def _tools(tools: Any, settings: Settings) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise bad_request("tools must be a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or \
                not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"tools[{i}] must be a function tool with a name", f"tools[{i}]")
        spec: dict[str, Any] = {"name": function["name"],
                                "input_schema": function.get("parameters")
                                or {"type": "object", "properties": {}}}
        if function.get("description"):
            spec["description"] = function["description"]
        if function.get("strict") and settings.structured == "native":
            spec["strict"] = True  # strict tool use comes with structured outputs
        out.append(cached(tool, spec))
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"),
                                                 str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise bad_request("tool_choice must be auto, none, required or a named function",
                          "tool_choice")
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default is auto
    return out


# ------------------------------------------------------------------------------ params

#: What happens to each OpenAI parameter (the kit's one declaration, printed in
#: docs/providers/anthropic.md): translated, dropped, or refused with 400 unsupported_parameter.
CHAT_PARAMETERS = Parameters(
    "Anthropic",
    supported={"temperature", "top_p", "max_completion_tokens", "max_tokens", "stop",
               "response_format", "tools", "tool_choice", "parallel_tool_calls",
               "reasoning_effort", "user"},
    ignored={"metadata", "store", "seed", "service_tier", "safety_identifier",
             "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention"},
    notes={
        "metadata": "OpenAI's stored-completion tags; user goes to metadata.user_id",
        "seed": "Anthropic has no seed",
        "prompt_cache_key": "Anthropic caches by cache_control breakpoints, passed through",
        "n": "Anthropic answers one choice",
        "logprobs": "Anthropic returns no log probabilities",
        "top_logprobs": "Anthropic returns no log probabilities",
        "presence_penalty": "Anthropic has no presence penalty",
        "frequency_penalty": "Anthropic has no frequency penalty",
        "logit_bias": "Anthropic has no logit bias",
        "audio": "Anthropic answers in text only",
        "modalities": "Anthropic answers in text only",
        "functions": "use tools instead of the deprecated functions",
        "function_call": "use tool_choice instead of the deprecated function_call",
        "web_search_options": "use the Messages API's web search tool on /v1/messages",
        "prediction": "Anthropic has no predicted outputs",
        "verbosity": "use reasoning_effort",
    },
    # Anthropic's own fields an OpenAI client may send: top_k, and a thinking object.
    extensions={"top_k", "thinking"},
)


def _thinking(body: Mapping[str, Any], settings: Settings, turns: list[dict[str, Any]],
              out: dict[str, Any], limit: int | None) -> bool:
    """Set ``thinking`` (and ``output_config.effort``) from ``reasoning_effort``, or pass a
    client's own Anthropic ``thinking`` object through; True when thinking is on."""
    own = body.get("thinking")
    if isinstance(own, dict):
        out["thinking"] = own
        return own.get("type") in ("enabled", "adaptive")
    effort = body.get("reasoning_effort")
    if effort is None or effort == "none":
        return False
    if effort not in _EFFORTS:
        raise bad_request("reasoning_effort must be none, minimal, low, medium, high or xhigh",
                          "reasoning_effort")
    if _loop_without_thinking(turns):
        # A tool-use loop whose assistant turn lost its thinking blocks (a client that does
        # not keep thinking_blocks) would be refused with thinking on: answer without it.
        return False
    if turns[-1]["role"] == "assistant":
        # A prefill (a continuation) cannot be combined with thinking
        # (https://docs.anthropic.com/en/docs/build-with-claude/prompt-engineering/prefill-claudes-response):
        # the continuation goes on without it.
        return False
    budget = settings.budgets.get(effort, THINKING_MIN)
    if settings.thinking == "adaptive":
        level = _EFFORTS[effort]
        if level == "xhigh" and not settings.xhigh:
            level = "high"
        out["thinking"] = {"type": "adaptive"}
        out.setdefault("output_config", {})["effort"] = level
    else:
        if limit is not None:
            budget = min(budget, limit - 1)
            if budget < THINKING_MIN:
                raise bad_request(f"reasoning_effort needs max_tokens above {THINKING_MIN} on "
                                  "Anthropic (thinking has a budget of at least "
                                  f"{THINKING_MIN} tokens within max_tokens)", "max_tokens")
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if limit is None:
        out["max_tokens"] = settings.max_tokens + budget
    return True


def _loop_without_thinking(turns: list[dict[str, Any]]) -> bool:
    """The conversation ends in a tool-use loop (an assistant turn that called tools, then
    their results) whose assistant turn carries no thinking block."""
    if len(turns) < 2 or turns[-1]["role"] != "user":
        return False
    assistant = turns[-2]
    content = assistant["content"]
    if assistant["role"] != "assistant" or not isinstance(content, list):
        return False
    calls = any(b.get("type") == "tool_use" for b in content)
    return calls and not any(b.get("type") in ("thinking", "redacted_thinking")
                             for b in content)


def _sampling(body: Mapping[str, Any], settings: Settings, thinking: bool,
              out: dict[str, Any]) -> None:
    if not settings.sampling:
        return  # the model refuses them: dropped (documented), not an error for the client
    temperature = body.get("temperature")
    if temperature is not None and not thinking:
        out["temperature"] = min(float(temperature), 1.0)  # Anthropic's range is 0-1
    top_p = body.get("top_p")
    if top_p is not None and (not thinking or 0.95 <= top_p <= 1):
        out["top_p"] = top_p
    top_k = body.get("top_k")
    if isinstance(top_k, int) and not isinstance(top_k, bool) and not thinking:
        out["top_k"] = top_k


def _response_format(body: Mapping[str, Any], settings: Settings, out: dict[str, Any],
                     thinking: bool) -> str | None:
    """Structured output: ``output_config.format`` where the model has it, else a forced tool
    whose input is the answer (its name is returned)."""
    spec = body.get("response_format")
    if not isinstance(spec, dict) or spec.get("type") in (None, "text"):
        return None
    kind = spec.get("type")
    if kind == "json_schema":
        inner = spec.get("json_schema")
        if not isinstance(inner, dict) or not isinstance(inner.get("schema"), dict):
            raise bad_request("response_format.json_schema.schema must be an object",
                              "response_format")
        schema = inner["schema"]
        name = inner.get("name") if isinstance(inner.get("name"), str) else "json_output"
        if settings.structured == "native":
            out.setdefault("output_config", {})["format"] = {"type": "json_schema",
                                                             "schema": schema}
            return None
    elif kind == "json_object":
        schema, name = {"type": "object"}, "json_output"
    else:
        raise bad_request("response_format.type must be text, json_object or json_schema",
                          "response_format")
    if out.get("tools") or thinking:
        raise bad_request("response_format with tools or reasoning_effort needs a model "
                          "with structured outputs (options.structured_output: native)",
                          "response_format")
    out["tools"] = [{"name": name, "description": "Answer with the requested JSON.",
                     "input_schema": schema}]
    out["tool_choice"] = {"type": "tool", "name": name}
    return name


def messages_body(body: Mapping[str, Any], settings: Settings, *, stream: bool) -> Plan:
    """The Messages request for the OpenAI request ``body``."""
    CHAT_PARAMETERS.check(body)
    system, turns = _conversation(list(body["messages"]))
    trimmed = _trim_prefill(turns, settings)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    out: dict[str, Any] = {"model": settings.upstream_model,
                           "max_tokens": limit or settings.max_tokens}
    if system:
        plain = all(len(b) == 2 for b in system)
        out["system"] = "\n\n".join(b["text"] for b in system) if plain else system
    out["messages"] = turns
    tools = body.get("tools")
    if tools:
        out["tools"] = _tools(tools, settings)
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    thinking = _thinking(body, settings, turns, out, limit if isinstance(limit, int) else None)
    _sampling(body, settings, thinking, out)
    json_tool = _response_format(body, settings, out, thinking)
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if stream:
        out["stream"] = True
    _compact(turns)
    return Plan(out, json_tool=json_tool, trimmed_prefill=trimmed)
