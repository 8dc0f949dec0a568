"""What each Claude model accepts, read from its id: the defaults of the plugin's options.

Anthropic's model pages are the source of every cut-off here:

- Prefill: "Prefilling assistant messages returns a 400 error on Claude 4.6 models"
  (https://platform.claude.com/docs/en/about-claude/models/migration-guide, "Prefill removal";
  https://platform.claude.com/docs/en/api/errors#prefill-not-supported). Older models accept an
  assistant turn at the end and continue it.
- Thinking: Claude 4.6 added adaptive thinking (``thinking: {"type": "adaptive"}`` with
  ``output_config.effort``) and deprecated ``budget_tokens``; Claude Opus 4.7, Mythos and the
  Claude 5 models take only the adaptive form; 4.5 and older only the budget form
  (https://platform.claude.com/docs/en/build-with-claude/adaptive-thinking,
  https://platform.claude.com/docs/en/build-with-claude/extended-thinking).
- Sampling: Claude Opus 4.7 and later refuse ``temperature``, ``top_p`` and ``top_k``
  ("`temperature` is deprecated for this model"; migration guide, "Migrating to Claude Opus 4.7").
- Structured outputs (``output_config.format``): the Claude 4.5 models and later
  (https://platform.claude.com/docs/en/build-with-claude/structured-outputs).
"""

from __future__ import annotations

import re

import attrs

__all__ = ["ModelProfile", "profile_of"]

_FAMILIES = ("haiku", "sonnet", "opus", "mythos", "fable")
# "claude-3-5-sonnet-20241022" (version before the family) or "claude-sonnet-4-5-20250929" /
# "claude-opus-5" (after it); an 8-digit date or "latest" may follow either form.
_BEFORE = re.compile(r"claude-(\d+)(?:[-.](\d))?-(" + "|".join(_FAMILIES) + r")\b")
_AFTER = re.compile(r"claude-(" + "|".join(_FAMILIES) + r")-(\d+)(?:[-.](\d{1,2}))?(?!\d)")


@attrs.frozen
class ModelProfile:
    """The defaults for one model id (every one can be overridden in ``options:``)."""

    version: tuple[int, int] | None  # (major, minor); None for an id we cannot read
    prefill: bool  # accepts a conversation that ends with an assistant turn (continuation)
    thinking: str  # "budget" (type enabled + budget_tokens) or "adaptive" (+ output_config.effort)
    sampling: bool  # accepts temperature / top_p / top_k
    structured: str  # "native" (output_config.format) or "tool" (a forced tool)
    xhigh: bool  # knows the "xhigh" effort level (Opus 4.7 and later)


def _version(model_id: str) -> tuple[int, int] | None:
    name = model_id.lower().rsplit("/", 1)[-1]
    if "mythos-preview" in name:
        return (4, 7)  # released beside Opus 4.7, and documented with it: adaptive only
    match = _AFTER.search(name)
    if match:
        return int(match.group(2)), int(match.group(3) or 0)
    match = _BEFORE.search(name)
    if match:
        return int(match.group(1)), int(match.group(2) or 0)
    return None


def profile_of(model_id: str) -> ModelProfile:
    """The profile of ``model_id``. An id without a Claude version (another vendor's model
    behind an Anthropic-compatible API) gets the most widely accepted forms and no prefill:
    a model not known to accept a continuation is never sent one."""
    version = _version(model_id)
    if version is None:
        return ModelProfile(None, prefill=False, thinking="budget", sampling=True,
                            structured="tool", xhigh=False)
    return ModelProfile(
        version,
        prefill=version < (4, 6),
        thinking="adaptive" if version >= (4, 6) else "budget",
        sampling=version < (4, 7),
        structured="native" if version >= (4, 5) else "tool",
        xhigh=version >= (4, 7),
    )
