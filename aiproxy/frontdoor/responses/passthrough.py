"""The body a Responses request passes through with, to an upstream serving the API itself.

The client's request goes as it came, except where the conversation lives here and not
upstream: then ``previous_response_id`` becomes the items it stands for. Items the upstream
made itself go back as they were (OpenAI takes ``response.output`` items as input:
https://platform.openai.com/docs/guides/conversation-state); items made by a translation go
in the plain input forms, without ids the upstream never issued.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aiproxy.frontdoor.responses.convert import Turn
from aiproxy.frontdoor.responses.store import Stored

__all__ = ["native_body"]


def native_body(turn: Turn, chain: Sequence[Stored], model: str,
                resolved: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The body for candidate ``model``; ``resolved`` are the ``item_reference`` ids found in
    the store, by id."""
    body = dict(turn.request.body)
    raw_input = body.get("input")
    new_input: Any = raw_input
    if isinstance(raw_input, list) and resolved:
        new_input = [_replayable(resolved[i["id"]], same_upstream=False)
                     if _is_reference(i) and i.get("id") in resolved else i for i in raw_input]
    last = chain[-1] if chain else None
    if last is None or (last.upstream_stored and last.origin == model):
        # The upstream holds the conversation (or there is none): its id is enough.
        if new_input is not raw_input:
            body["input"] = new_input
        return body
    body.pop("previous_response_id", None)
    items: list[dict[str, Any]] = []
    for record in chain:
        same = record.upstream_stored and record.origin == model
        for item in record.items():
            replay = _replayable(item, same_upstream=same)
            if replay is not None:
                items.append(replay)
    if isinstance(new_input, str):
        items.append({"role": "user", "content": new_input})
    elif isinstance(new_input, list):
        items += new_input
    body["input"] = items
    return body


def _is_reference(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == "item_reference"


def _replayable(item: Mapping[str, Any], *, same_upstream: bool) -> dict[str, Any] | None:
    """``item`` as input for the upstream, or None when it cannot take it back (reasoning
    another upstream produced means nothing to it)."""
    if same_upstream:
        return dict(item)
    kind = item.get("type")
    if kind == "message":
        parts = item.get("content") or []
        if item.get("role") == "assistant":
            text = "".join(p.get("text") or p.get("refusal") or "" for p in parts)
            return {"role": "assistant", "content": text}
        return {"role": item["role"], "content": parts}
    if kind == "function_call":
        return {"type": "function_call", "call_id": item["call_id"], "name": item["name"],
                "arguments": item["arguments"]}
    if kind == "function_call_output":
        return {"type": "function_call_output", "call_id": item["call_id"],
                "output": item["output"]}
    if kind == "reasoning":
        return None
    return {k: v for k, v in item.items() if k not in ("id", "status")}
