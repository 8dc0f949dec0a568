"""Reading ``tools`` and ``tool_choice`` (and the legacy ``functions``/``function_call``).

Shapes: https://platform.openai.com/docs/api-reference/chat/create#chat-create-tools and
#chat-create-tool_choice. A plugin maps the checked values to its upstream's own fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from aiproxy.kit.errors import bad_request

__all__ = ["FunctionTool", "ToolChoice", "function_tools", "tool_choice_of"]


@attrs.frozen
class FunctionTool:
    """One function the model may call: ``parameters`` is its JSON Schema, as the client sent
    it; ``strict`` asks for arguments that follow it exactly."""

    name: str
    description: str | None
    parameters: Mapping[str, Any] | None
    strict: bool
    where: str


def _function(raw: Any, where: str, provider: str) -> FunctionTool:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise bad_request(f"{where}: a function needs a name", param=where)
    description = raw.get("description")
    parameters = raw.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise bad_request(f"{where}.parameters must be a JSON Schema object",
                          param=f"{where}.parameters")
    return FunctionTool(raw["name"], description if isinstance(description, str) else None,
                        parameters, raw.get("strict") is True, where)


def function_tools(body: Mapping[str, Any], *, provider: str,
                   legacy: bool = False) -> list[FunctionTool]:
    """The request's function tools; any other tool type is a 400. ``legacy``: the provider
    also takes OpenAI's deprecated ``functions`` (used when ``tools`` is absent)."""
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise bad_request("tools must be an array", param="tools")
        out = []
        for j, tool in enumerate(tools):
            where = f"tools[{j}]"
            if not isinstance(tool, dict) or tool.get("type") != "function":
                kind = tool.get("type") if isinstance(tool, dict) else None
                raise bad_request(f"{where}: {provider} takes function tools only, not "
                                  f"{kind!r}", param=where)
            out.append(_function(tool.get("function"), f"{where}.function", provider))
        return out
    functions = body.get("functions") if legacy else None
    if functions:
        if not isinstance(functions, list):
            raise bad_request("functions must be an array", param="functions")
        return [_function(fn, f"functions[{j}]", provider) for j, fn in enumerate(functions)]
    return []


@attrs.frozen
class ToolChoice:
    """What the client wants of tool use: ``auto`` (the model decides), ``none``, ``required``
    (some tool), or ``function`` (the one named ``name``)."""

    mode: Literal["auto", "none", "required", "function"]
    name: str | None = None


def tool_choice_of(body: Mapping[str, Any], tools: Sequence[FunctionTool], *, provider: str,
                   legacy: bool = False) -> ToolChoice | None:
    """The request's ``tool_choice`` (``legacy``: or its ``function_call``), checked; ``None``
    when the client left it to the default. ``required`` or a named function without any
    tool is a 400, as OpenAI answers it."""
    raw = body.get("tool_choice")
    param = "tool_choice"
    if raw is None and legacy and body.get("function_call") is not None:
        raw, param = body["function_call"], "function_call"
    if raw is None:
        return None
    choice: ToolChoice | None = None
    if raw in ("auto", "none", "required"):
        choice = ToolChoice(raw)
    elif isinstance(raw, dict):
        # {"type": "function", "function": {"name"}}; the legacy function_call is {"name"}.
        fn = raw.get("function") if raw.get("type") == "function" else raw if legacy else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]:
            choice = ToolChoice("function", fn["name"])
    if choice is None:
        raise bad_request(f"{param} {raw!r} is not supported by {provider}", param=param)
    if choice.mode in ("required", "function") and not tools:
        raise bad_request(f"{param} {choice.mode!r} requires tools", param=param)
    return choice
