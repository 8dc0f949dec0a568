"""A Gemini ``GenerateContentResponse`` (or stream event, or error) in OpenAI's terms.

- GenerateContentResponse, Candidate, UsageMetadata, LogprobsResult:
  https://ai.google.dev/api/generate-content
- Errors, a google.rpc.Status: https://ai.google.dev/gemini-api/docs/troubleshooting
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiproxy.provider import (
    ErrorKind,
    ErrorTable,
    UpstreamError,
    UpstreamFailure,
    error_json,
    openai_finish_reason,
    openai_tool_call,
    openai_usage,
    parse_retry_after,
    protocol_error,
    token_count,
)

__all__ = ["ERRORS", "candidate_index", "check_blocked", "failure", "finish_reason", "logprobs",
           "read_parts", "usage"]

# Candidate.FinishReason -> OpenAI finish_reason; anything else (OTHER, LANGUAGE,
# MALFORMED_FUNCTION_CALL, ...) is reported as "stop".
_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                     "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"),
                    "content_filter"),
}

# Statuses per https://ai.google.dev/gemini-api/docs/troubleshooting. A bad key is a 400
# INVALID_ARGUMENT with reason API_KEY_INVALID; an unusable account (billing, region) is
# FAILED_PRECONDITION: both are ours to fix, not the client's.
ERRORS = ErrorTable(
    codes={
        "RESOURCE_EXHAUSTED": ErrorKind.RATE_LIMITED,
        "API_KEY_INVALID": ErrorKind.AUTH,
        "UNAUTHENTICATED": ErrorKind.AUTH,
        "PERMISSION_DENIED": ErrorKind.AUTH,
        "FAILED_PRECONDITION": ErrorKind.AUTH,
        "DEADLINE_EXCEEDED": ErrorKind.TIMEOUT,
        "UNAVAILABLE": ErrorKind.OVERLOADED,
        "INTERNAL": ErrorKind.OVERLOADED,
    },
    # Gemini's wording for an over-long prompt, e.g. "The input token count (1200000) exceeds
    # the maximum number of tokens allowed (1048576)."
    context_length=re.compile(r"token count.*exceed|maximum number of tokens|context "
                              r"(length|window)|too many tokens", re.IGNORECASE | re.DOTALL),
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")  # google.protobuf.Duration in JSON: "37s"


def failure(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
    """Gemini's error, ``{"error": {"code", "message", "status", "details"}}``, read.

    The codes are the status (``RESOURCE_EXHAUSTED``), then the ``ErrorInfo`` reasons
    (``API_KEY_INVALID``); the wait is ``Retry-After``, else the ``RetryInfo`` detail.
    """
    parsed = error_json(body)
    if isinstance(parsed, list) and parsed:  # the non-SSE stream wraps it in an array
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or f"Gemini answered HTTP {status}")
    codes = [error["status"]] if isinstance(error.get("status"), str) else []
    retry_after = parse_retry_after(headers.get("retry-after"))
    for detail in error.get("details") or []:
        kind = str(detail.get("@type", "")) if isinstance(detail, dict) else ""
        if kind.endswith("google.rpc.RetryInfo") and retry_after is None:
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            retry_after = float(match.group(1)) if match else None
        elif kind.endswith("google.rpc.ErrorInfo") and isinstance(detail.get("reason"), str):
            codes.append(detail["reason"])
    return UpstreamFailure(status, message, tuple(codes), retry_after=retry_after,
                           headers=headers)


def check_blocked(data: Mapping[str, Any]) -> None:
    """A prompt Gemini blocked (``promptFeedback.blockReason``) is a content-filter error."""
    feedback = data.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if reason:
        raise UpstreamError(ErrorKind.CONTENT_FILTER,
                            f"Gemini blocked the prompt (blockReason: {reason})",
                            code="content_filter")


def read_parts(candidate: Any) -> tuple[str, list[dict[str, Any]]]:
    """A candidate's answer text (thoughts left out) and its function calls, as OpenAI ones."""
    if not isinstance(candidate, dict):
        raise protocol_error("Gemini: a candidate is not an object")
    content = candidate.get("content") or {}
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts or [], list):
        raise protocol_error("Gemini: candidate content parts are not an array")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts or []:
        if not isinstance(part, dict):
            raise protocol_error("Gemini: a content part is not an object")
        call = part.get("functionCall")
        if isinstance(call, dict):
            if not isinstance(call.get("name"), str):
                raise protocol_error("Gemini: a functionCall has no name")
            extra: dict[str, Any] = {}
            signature = part.get("thoughtSignature")
            if isinstance(signature, str) and signature:
                # Where Google's own OpenAI-compatible endpoint puts it, so a client that
                # sends the message back as it got it returns the signature too.
                extra["extra_content"] = {"google": {"thought_signature": signature}}
            # FunctionCall.id is optional.
            calls.append(openai_tool_call(call["name"], call.get("args"), id=call.get("id"),
                                          **extra))
        elif isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
        # Other parts (thoughts, inlineData, executableCode...) have no OpenAI counterpart.
    return "".join(texts), calls


def finish_reason(reason: Any, has_calls: bool) -> str:
    return openai_finish_reason(reason, _FINISH_REASONS, tool_calls=has_calls)


def candidate_index(candidate: dict[str, Any], position: int) -> int:
    index = candidate.get("index")
    return index if isinstance(index, int) else position


def usage(metadata: Any) -> dict[str, Any]:
    """UsageMetadata as OpenAI usage, with prompt + completion == total.

    totalTokenCount is the sum of promptTokenCount, toolUsePromptTokenCount (the results of
    Gemini's own tools, read as input), candidatesTokenCount and thoughtsTokenCount (thinking is
    billed as output) (https://ai.google.dev/api/generate-content#UsageMetadata). Should Gemini
    report a total above its parts, the rest is counted as prompt, so budgets never undercount.
    """
    meta = metadata if isinstance(metadata, dict) else {}
    thoughts = token_count(meta.get("thoughtsTokenCount"))
    return openai_usage(
        (token_count(meta.get("promptTokenCount")) or 0)
        + (token_count(meta.get("toolUsePromptTokenCount")) or 0),
        (token_count(meta.get("candidatesTokenCount")) or 0) + (thoughts or 0),
        total=meta.get("totalTokenCount"), cached=meta.get("cachedContentTokenCount"),
        reasoning=thoughts)


def _token_logprob(candidate: Mapping[str, Any]) -> dict[str, Any]:
    token = candidate.get("token")
    token = token if isinstance(token, str) else ""
    logprob = candidate.get("logProbability")
    return {"token": token,
            "logprob": float(logprob) if isinstance(logprob, int | float) else 0.0,
            "bytes": list(token.encode())}


def logprobs(candidate: Mapping[str, Any]) -> dict[str, Any] | None:
    """Candidate.logprobsResult as OpenAI ``choices[].logprobs`` (``content`` per token).

    chosenCandidates has one entry per decoding step and topCandidates the alternatives at the
    same step (https://ai.google.dev/api/generate-content#LogprobsResult).
    """
    result = candidate.get("logprobsResult")
    if not isinstance(result, dict):
        return None
    chosen = result.get("chosenCandidates")
    tops = result.get("topCandidates")
    tops = tops if isinstance(tops, list) else []
    content = []
    for step, pick in enumerate(chosen if isinstance(chosen, list) else []):
        if not isinstance(pick, dict):
            continue
        top = tops[step] if step < len(tops) and isinstance(tops[step], dict) else {}
        alternatives = top.get("candidates")
        content.append({**_token_logprob(pick), "top_logprobs": [
            _token_logprob(c) for c in (alternatives if isinstance(alternatives, list) else [])
            if isinstance(c, dict)]})
    return {"content": content, "refusal": None}
