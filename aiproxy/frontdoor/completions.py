"""Legacy text completions (``POST /v1/completions``), translated through chat where the
upstream does not serve them itself.

Reference: https://platform.openai.com/docs/api-reference/completions (the ``openai`` SDK's
``types/completion_create_params.py`` and ``types/completion.py``). Each prompt becomes one
user message; its answer is the completion's text (the prompt in front with ``echo``), ``n``
answers per prompt at index ``prompt * n + choice``, and ``logprobs: N`` the legacy
``tokens`` / ``token_logprobs`` / ``top_logprobs`` / ``text_offset`` arrays.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import attrs
import orjson

from aiproxy.errors import ProxyError
from aiproxy.provider import ChatRequest

__all__ = ["CompletionChunks", "CompletionRequest", "from_chat", "parse_completion_request",
           "to_chat", "translate_stream"]

# The reference's default when max_tokens is not given.
DEFAULT_MAX_TOKENS = 16
_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_PASSED = ("n", "stop", "temperature", "top_p", "presence_penalty", "frequency_penalty",
           "seed", "logit_bias", "user")
Prompt = str | list[int]


def _bad(message: str, param: str) -> ProxyError:
    return ProxyError(400, message, param=param, code="invalid_request")


@attrs.frozen
class CompletionRequest:
    """A validated legacy completion request; ``native_only`` says what only an upstream with
    the completions API itself can serve (token prompts, ``suffix``...)."""

    body: Mapping[str, Any]
    raw: bytes
    model: str
    prompts: tuple[Prompt, ...]
    stream: bool = False
    echo: bool = False
    n: int = 1
    logprobs: int | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    native_only: str | None = None

    @property
    def include_usage(self) -> bool:
        opts = self.body.get("stream_options")
        return bool(isinstance(opts, dict) and opts.get("include_usage"))


def _int(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"'{name}' must be an integer from {low} to {high}", name)
    return value


def _tokens(values: list[Any]) -> bool:
    """Token ids: integers from 0 to 2**32 - 1, as embeddings take them."""
    return all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**32
               for t in values)


def parse_completion_request(body: dict[str, Any], raw: bytes) -> CompletionRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("'model' is required and must be a non-empty string", "model")
    prompt = body.get("prompt")
    natives: list[str] = []
    if isinstance(prompt, str):
        prompts: tuple[Prompt, ...] = (prompt,)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = tuple(prompt)
    elif isinstance(prompt, list) and prompt and _tokens(prompt):
        prompts = (prompt,)
        natives.append("token prompts")
    elif isinstance(prompt, list) and prompt and all(
            isinstance(p, list) and p and _tokens(p) for p in prompt):
        prompts = tuple(prompt)
        natives.append("token prompts")
    else:
        raise _bad("'prompt' is required: a string, an array of strings, or token arrays",
                   "prompt")
    for name in _NUMBERS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value,
                                                                           int | float)):
            raise _bad(f"'{name}' must be a number", name)
    for name in ("stream", "echo"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise _bad(f"'{name}' must be a boolean", name)
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (
            isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))):
        raise _bad("'stop' must be a string or an array of at most 4 strings", "stop")
    max_tokens = _int(body, "max_tokens", 0, 2**31)
    n = _int(body, "n", 1, 128) or 1
    best_of = _int(body, "best_of", 1, 128)
    logprobs = _int(body, "logprobs", 0, 5)
    if best_of is not None and best_of < n:
        raise _bad("'best_of' must be at least 'n'", "best_of")
    if best_of is not None and best_of > n:
        natives.append("best_of greater than n")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise _bad("'suffix' must be a string", "suffix")
    if suffix:
        natives.append("suffix (insertion)")
    if max_tokens == 0:
        natives.append("max_tokens 0 (prompt scoring)")
    echo = bool(body.get("echo"))
    if echo and logprobs is not None:
        natives.append("echo with logprobs (the prompt's own logprobs)")
    return CompletionRequest(
        body=body, raw=raw, model=model, prompts=prompts, stream=bool(body.get("stream")),
        echo=echo, n=n, logprobs=logprobs,
        max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        native_only=natives[0] if natives else None)


def to_chat(request: CompletionRequest, prompt: str, *, stream: bool) -> ChatRequest:
    """The chat request that answers one prompt."""
    body = request.body
    chat: dict[str, Any] = {"model": request.model,
                            "messages": [{"role": "user", "content": prompt}],
                            "max_completion_tokens": request.max_tokens}
    for name in _PASSED:
        if body.get(name) is not None:
            chat[name] = body[name]
    if request.logprobs is not None:
        chat["logprobs"] = True
        if request.logprobs:
            chat["top_logprobs"] = request.logprobs
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return ChatRequest(body=chat, raw=orjson.dumps(chat), stream=stream)


def _legacy_logprobs(choice: Mapping[str, Any], offset: int) -> dict[str, Any] | None:
    """Chat logprobs as the legacy arrays; ``offset`` is where this text starts."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list):
        return None
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                           "text_offset": []}
    for entry in content:
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            continue
        out["tokens"].append(entry["token"])
        out["token_logprobs"].append(entry.get("logprob"))
        out["top_logprobs"].append({t["token"]: t.get("logprob")
                                    for t in entry.get("top_logprobs") or ()
                                    if isinstance(t, dict) and isinstance(t.get("token"), str)})
        out["text_offset"].append(offset)
        offset += len(entry["token"])
    return out


def _usage(answers: Sequence[Mapping[str, Any] | None]) -> dict[str, int] | None:
    usages = [u for u in answers if isinstance(u, Mapping)]
    if not usages:
        return None
    prompt = sum(u.get("prompt_tokens") or 0 for u in usages)
    completion = sum(u.get("completion_tokens") or 0 for u in usages)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def from_chat(request: CompletionRequest, answers: Sequence[Mapping[str, Any]],
              model: str) -> dict[str, Any]:
    """The ``text_completion`` for one chat answer per prompt."""
    choices = []
    for p, (prompt, data) in enumerate(zip(request.prompts, answers, strict=True)):
        head = prompt if request.echo and isinstance(prompt, str) else ""
        for c, choice in enumerate(data.get("choices") or ()):
            message = choice.get("message") or {}
            text = message.get("content") or ""
            logprobs = (_legacy_logprobs(choice, len(head)) if request.logprobs is not None
                        else None)
            choices.append({"text": head + text, "index": p * request.n + c,
                            "logprobs": logprobs, "finish_reason": choice.get("finish_reason")})
    answer: dict[str, Any] = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                              "created": int(time.time()), "model": model, "choices": choices}
    usage = _usage([a.get("usage") for a in answers])
    if usage is not None:
        answer["usage"] = usage
    return answer


async def translate_stream(request: CompletionRequest,
                           open_chat: Callable[[ChatRequest], AsyncIterator[dict[str, Any]]],
                           model: str) -> AsyncIterator[dict[str, Any]]:
    """The ``text_completion`` chunks of the prompts' chat streams, one prompt after the
    other, then one usage chunk (``choices: []``) for them all."""
    base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": model}
    usages: list[Mapping[str, Any] | None] = []
    for p, prompt in enumerate(request.prompts):
        assert isinstance(prompt, str)  # token prompts are served only where passed through
        chunks = open_chat(to_chat(request, prompt, stream=True))
        offsets: dict[int, int] = {}  # choice index -> text length sent so far
        usage = None
        try:
            async for chunk in chunks:
                usage = chunk.get("usage") or usage
                out = []
                for choice in chunk.get("choices") or ():
                    index = p * request.n + int(choice.get("index") or 0)
                    text = (choice.get("delta") or {}).get("content") or ""
                    finish = choice.get("finish_reason")
                    if index not in offsets:
                        offsets[index] = 0
                        if request.echo:
                            text = prompt + text
                    if not text and not finish:
                        continue
                    logprobs = (_legacy_logprobs(choice, offsets[index])
                                if request.logprobs is not None else None)
                    offsets[index] += len(text)
                    out.append({"text": text, "index": index, "logprobs": logprobs,
                                "finish_reason": finish})
                if out:
                    yield {**base, "choices": out}
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        usages.append(usage)
    usage = _usage(usages)
    if usage is not None:
        yield {**base, "choices": [], "usage": usage}


class CompletionChunks:
    """The lens of ``text_completion`` streams (translated or passed through): the model that
    answers, usage kept from a client that did not ask for it, the text relayed."""

    __slots__ = ("relayed_chars", "usage", "wants_usage")

    def __init__(self, *, wants_usage: bool) -> None:
        self.wants_usage = wants_usage
        self.usage: Mapping[str, Any] | None = None
        self.relayed_chars = 0

    def rewrite(self, chunk: dict[str, Any], model: str) -> bool:
        chunk["model"] = model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            text = choice.get("text") if isinstance(choice, dict) else None
            if isinstance(text, str):
                self.relayed_chars += len(text)
        if not self.wants_usage and "usage" in chunk:
            del chunk["usage"]
            return bool(chunk.get("choices"))
        return True
