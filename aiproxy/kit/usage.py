"""One way to report token usage, whatever the upstream counted.

Token limits are settled with ``usage``, so it must add up: ``prompt_tokens +
completion_tokens == total_tokens``. OpenAI's shape:
https://platform.openai.com/docs/api-reference/chat/object#chat/object-usage
"""

from __future__ import annotations

from typing import Any

__all__ = ["openai_usage", "token_count"]


def token_count(value: Any) -> int | None:
    """A token count as an int: upstreams send ints, some floats (Cohere's ``37.0``); anything
    else (a bool, a string, a negative number) is no count at all."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


def openai_usage(prompt: Any, completion: Any, *, total: Any = None, cached: Any = None,
          reasoning: Any = None) -> dict[str, Any]:
    """OpenAI ``usage`` from an upstream's counts (ints, floats or missing).

    ``total`` is the upstream's own total, if it gives one: should it exceed prompt plus
    completion (a part we do not know of, such as tool-use tokens), the rest is counted as
    prompt, so a budget never undercounts. ``cached`` (prompt tokens read from a cache, part of
    the prompt) and ``reasoning`` (thinking, part of the completion) are reported as
    ``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``
    when the upstream reports them.
    """
    prompt_tokens = token_count(prompt) or 0
    completion_tokens = token_count(completion) or 0
    prompt_tokens += max(0, (token_count(total) or 0) - prompt_tokens - completion_tokens)
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens,
                           "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}
    cached_tokens = token_count(cached)
    if cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    reasoning_tokens = token_count(reasoning)
    if reasoning_tokens is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return out
