"""Anthropic's errors and rate-limit headers in the core's vocabulary.

- Error shapes and statuses: https://docs.anthropic.com/en/api/errors (``{"type": "error",
  "error": {"type", "message"}, "request_id"}``; 400 invalid_request_error, 401
  authentication_error, 402 billing_error, 403 permission_error, 404 not_found_error, 413
  request_too_large, 429 rate_limit_error, 500 api_error, 504 timeout_error, 529
  overloaded_error; an ``error`` event may arrive inside a stream that began with 200).
- Rate-limit headers: https://docs.anthropic.com/en/api/rate-limits#response-headers
  (``retry-after`` in seconds on a 429; ``anthropic-ratelimit-{requests,tokens,input-tokens,
  output-tokens}-{limit,remaining,reset}``, the reset an RFC 3339 time).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from aiproxy.provider import ErrorKind, RateLimitHint, UpstreamError, parse_retry_after

__all__ = ["error_from_event", "error_from_response", "rate_limit_hint"]

_BUDGETS = ("requests", "tokens", "input-tokens", "output-tokens")

# Mid-stream error types (https://docs.anthropic.com/en/api/messages-streaming#error-events):
# all of them break an answer that was under way, so each is retryable elsewhere.
_EVENT_KINDS = {
    "overloaded_error": ErrorKind.OVERLOADED,
    "api_error": ErrorKind.OVERLOADED,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "timeout_error": ErrorKind.TIMEOUT,
}


def _reset_seconds(value: str, now: float) -> float | None:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def rate_limit_hint(headers: Mapping[str, str], now: float | None = None) -> RateLimitHint | None:
    """The tightest ``anthropic-ratelimit-*`` budget: its remaining count, and when it is
    exhausted (remaining 0), the seconds until the latest exhausted budget resets."""
    clock = time.time() if now is None else now
    remaining: int | None = None
    reset: float | None = None
    for budget in _BUDGETS:
        raw = headers.get(f"anthropic-ratelimit-{budget}-remaining")
        if raw is None:
            continue
        try:
            left = int(raw)
        except ValueError:
            continue
        remaining = left if remaining is None else min(remaining, left)
        if left > 0:
            continue
        when = headers.get(f"anthropic-ratelimit-{budget}-reset")
        seconds = _reset_seconds(when, clock) if when else None
        if seconds is not None:
            reset = seconds if reset is None else max(reset, seconds)
    if remaining is None:
        return None
    return RateLimitHint(remaining=remaining, reset_after=reset if remaining == 0 else None)


def _envelope(body: bytes) -> tuple[str, str]:
    """``(error.type, error.message)`` of an Anthropic error body; empty strings if absent."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return "", ""
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict):
        return str(err.get("type") or ""), str(err.get("message") or "")
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return "", parsed["message"]
    return "", ""


def _too_long(message: str) -> bool:
    # "prompt is too long: 210123 tokens > 200000 maximum"; also the input+max_tokens form.
    text = message.lower()
    return "prompt is too long" in text or "exceed context limit" in text \
        or "context window" in text


def error_from_response(status: int, body: bytes, headers: Mapping[str, str],
                        model: str) -> UpstreamError:
    """An Anthropic error answer as an :class:`UpstreamError`."""
    kind_name, message = _envelope(body)
    message = message or f"upstream answered HTTP {status}"
    code: str | None = kind_name or None
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status == 429 or kind_name == "rate_limit_error":
        if retry_after is None:
            hint = rate_limit_hint(headers)
            retry_after = hint.reset_after if hint else None
        return UpstreamError(ErrorKind.RATE_LIMITED, message, status=429,
                             code="rate_limit_exceeded", retry_after=retry_after,
                             upstream_status=status)
    if status == 413 or kind_name == "request_too_large":
        # Over Anthropic's request size (32 MB): a candidate that takes more may serve it.
        return UpstreamError(ErrorKind.CONTEXT_LENGTH, message, status=413,
                             code="request_too_large", upstream_status=status)
    if status in (401, 402, 403) or kind_name in ("authentication_error", "permission_error",
                                                  "billing_error"):
        # Our key, our account: nothing the client can mend, another candidate may serve.
        return UpstreamError(ErrorKind.AUTH, message, code=code, upstream_status=status)
    if status == 529 or kind_name == "overloaded_error" or status >= 500:
        kind = ErrorKind.TIMEOUT if status == 504 or kind_name == "timeout_error" \
            else ErrorKind.OVERLOADED
        return UpstreamError(kind, message, code=code, retry_after=retry_after,
                             upstream_status=status)
    if _too_long(message):
        return UpstreamError(ErrorKind.CONTEXT_LENGTH, message, status=400,
                             code="context_length_exceeded", upstream_status=status)
    if "prefill" in message.lower():
        # https://docs.anthropic.com/en/api/errors#prefill-not-supported
        return UpstreamError(ErrorKind.BAD_REQUEST, f"{model}: {message}", status=400,
                             code="prefill_not_supported", upstream_status=status)
    out = status if 400 <= status < 500 else 400
    return UpstreamError(ErrorKind.BAD_REQUEST, message, status=out, code=code,
                         upstream_status=status)


def error_from_event(event: Mapping[str, Any]) -> UpstreamError:
    """A mid-stream ``error`` event: the answer under way is broken (retryable)."""
    err = event.get("error")
    kind_name = str(err.get("type") or "") if isinstance(err, dict) else ""
    message = str(err.get("message") or "") if isinstance(err, dict) else ""
    kind = _EVENT_KINDS.get(kind_name, ErrorKind.PROTOCOL)
    text = f"the upstream stream failed: {message or kind_name or 'error event'}"
    return UpstreamError(kind, text, code=kind_name or None)
