"""What a provider does with each OpenAI request parameter: translated, dropped, or refused.

A plugin declares a :class:`Parameters` per API (``Provider.chat_parameters``,
``Provider.embedding_parameters``). :meth:`Parameters.check` refuses every OpenAI parameter the
provider does not declare with the same 400 on every provider (code ``unsupported_parameter``,
as OpenAI's own API answers it), and ``docs/providers/*.md`` print the declaration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from aiproxy.kit.errors import UpstreamError, bad_request

__all__ = [
    "OPENAI_CHAT_PARAMETERS",
    "OPENAI_EMBEDDING_PARAMETERS",
    "Parameters",
    "is_default",
]

#: Every request field of Chat Completions
#: (https://platform.openai.com/docs/api-reference/chat/create; the ``openai`` SDK's
#: ``CompletionCreateParams``, which tests/test_kit.py compares this with).
OPENAI_CHAT_PARAMETERS = frozenset({
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "messages", "metadata", "modalities", "model",
    "moderation", "n", "parallel_tool_calls", "prediction", "presence_penalty",
    "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
    "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
    "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
    "verbosity", "web_search_options",
})

#: Every request field of Embeddings (https://platform.openai.com/docs/api-reference/embeddings).
OPENAI_EMBEDDING_PARAMETERS = frozenset({"dimensions", "encoding_format", "input", "model",
                                         "user"})

# What every provider takes: the request itself. ``stream_options.include_usage`` is honoured
# by the kit's StreamAssembler for every provider.
_ALWAYS = {"chat": frozenset({"messages", "model", "stream", "stream_options"}),
           "embeddings": frozenset({"input", "model"})}
_APIS = {"chat": OPENAI_CHAT_PARAMETERS, "embeddings": OPENAI_EMBEDDING_PARAMETERS}

# Values that ask for nothing beyond OpenAI's own default: a client (LangChain, many SDK
# wrappers) that sends them to every model gets the same answer from a provider that lacks the
# parameter, so they are as good as absent. ``null`` always is.
_DEFAULTS: Mapping[str, tuple[Any, ...]] = {
    "frequency_penalty": (0,), "presence_penalty": (0,), "n": (1,), "temperature": (1,),
    "top_p": (1,), "logprobs": (False,), "top_logprobs": (0,), "logit_bias": ({},),
    "stop": ([],), "modalities": (["text"],), "parallel_tool_calls": (True,), "store": (False,),
    "tools": ([],), "functions": ([],), "tool_choice": ("none", "auto"),
    "response_format": ({"type": "text"},), "metadata": ({},), "verbosity": ("medium",),
    "service_tier": ("auto", "default"), "user": ("",),
}


def _same(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return value is default
    if isinstance(default, int | float):
        return isinstance(value, int | float) and value == default
    return type(value) is type(default) and bool(value == default)


def is_default(name: str, value: Any) -> bool:
    """True if ``value`` of OpenAI parameter ``name`` asks for no more than leaving it out."""
    return value is None or any(_same(value, d) for d in _DEFAULTS.get(name, ()))


def _names(value: Iterable[str]) -> frozenset[str]:
    return frozenset([value] if isinstance(value, str) else value)


@attrs.frozen
class Parameters:
    """One provider's declaration for one OpenAI API (``api``: ``chat`` or ``embeddings``).

    - ``supported``: translated or forwarded (``messages``, ``model``, ``stream`` and
      ``stream_options`` for chat, ``input`` and ``model`` for embeddings go without saying);
    - ``ignored``: dropped, because they change nothing the provider does (``user``,
      ``store``, ``metadata``...) or its documentation says it decides them itself;
    - every other OpenAI parameter is refused with a 400 (unless its value is OpenAI's default,
      see :func:`is_default`);
    - ``notes[name]`` says why a parameter is refused or dropped, or what to use instead;
    - ``extensions``: fields beyond OpenAI's that the provider reads (Gemini's ``top_k``). Fields
      that are neither OpenAI's nor declared are left alone: a client's ``extra_body`` for
      another provider must not break a fallback to this one.

    ``provider`` names the upstream in messages ("Gemini", "Workers AI (native models)").
    """

    provider: str
    supported: frozenset[str] = attrs.field(converter=_names)
    ignored: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    notes: Mapping[str, str] = attrs.field(factory=dict)
    extensions: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    api: Literal["chat", "embeddings"] = "chat"

    def __attrs_post_init__(self) -> None:
        # A typo in a declaration would refuse or drop the wrong parameter: fail at import.
        known = _APIS[self.api]
        for field, names in (("supported", self.supported), ("ignored", self.ignored),
                             ("notes", frozenset(self.notes))):
            unknown = names - known
            if unknown:
                raise ValueError(f"{self.provider}: {field}: not {self.api} parameters of the "
                                 f"OpenAI API: {', '.join(sorted(unknown))}")
        both = self.supported & self.ignored
        if both:
            raise ValueError(f"{self.provider}: both supported and ignored: "
                             f"{', '.join(sorted(both))}")
        noted = frozenset(self.notes) & (self.supported | _ALWAYS[self.api])
        if noted:
            raise ValueError(f"{self.provider}: notes are for refused or ignored parameters, "
                             f"not {', '.join(sorted(noted))}")
        if self.extensions & known:
            raise ValueError(f"{self.provider}: extensions: these are OpenAI parameters: "
                             f"{', '.join(sorted(self.extensions & known))}")

    @property
    def taken(self) -> frozenset[str]:
        """Every OpenAI parameter this provider translates or forwards."""
        return self.supported | _ALWAYS[self.api]

    @property
    def refused(self) -> frozenset[str]:
        """Every OpenAI parameter this provider refuses (when set to more than its default)."""
        return _APIS[self.api] - self.taken - self.ignored

    def error(self, name: str) -> UpstreamError:
        """The 400 for OpenAI parameter ``name``, in the one shape every provider answers."""
        note = self.notes.get(name)
        return bad_request(f"Unsupported parameter: '{name}' is not supported by "
                           f"{self.provider}" + (f" ({note})." if note else "."),
                           param=name, code="unsupported_parameter")

    def check(self, body: Mapping[str, Any]) -> None:
        """Raise :meth:`error` for the first parameter of ``body`` this provider refuses."""
        refused = self.refused
        for name, value in body.items():
            if name in refused and not is_default(name, value):
                raise self.error(name)

    def markdown(self) -> str:
        """The declaration as the table ``docs/providers/*.md`` print (tests keep them equal)."""
        rows = ["| OpenAI parameter | What happens |", "| --- | --- |"]
        for name in sorted(_APIS[self.api]):
            if name in self.taken:
                what = "translated"
            elif name in self.ignored:
                note = self.notes.get(name)
                what = "dropped" + (f": {note}" if note else "")
            else:
                note = self.notes.get(name)
                what = "refused with 400 `unsupported_parameter`" + (f": {note}" if note else "")
            rows.append(f"| `{name}` | {what} |")
        if self.extensions:
            rows.append("")
            rows.append("Also read, beyond the OpenAI API: "
                        + ", ".join(f"`{name}`" for name in sorted(self.extensions)) + ".")
        return "\n".join(rows)
