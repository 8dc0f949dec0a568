"""Errors the proxy answers, and their one mapping to the OpenAI error envelope."""

from __future__ import annotations

import re
from typing import Any

from aiproxy.provider import ErrorKind, UpstreamError
from aiproxy.secrets import Secrets

__all__ = ["MAX_RETRY_AFTER", "ProxyError", "Secrets", "bounded_retry_after", "error_body",
           "from_upstream", "sanitize", "shown"]

# The OpenAI ``type`` for each status the proxy answers, so SDKs raise the right exception.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ProxyError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "server_error" if status >= 500
                                       else "invalid_request_error")
        self.retry_after = retry_after
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# Of what a client chose (a model name, say), an echo or a log line shows at most this much.
SHOWN_MAX = 64


def shown(value: str) -> str:
    """``value`` as an error message or a log line may quote it: its repr, cut short, so a
    5 MiB model name costs no more than a short one."""
    if len(value) > SHOWN_MAX:
        return repr(value[:SHOWN_MAX]) + f"… ({len(value)} characters)"
    return repr(value)


# What of an upstream's error ``code`` and ``param`` a client may see: short identifiers only.
_SAFE_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_SAFE_PARAM = re.compile(r"[A-Za-z0-9_.\[\]-]{1,128}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9 _.:()/-]{1,64}")
_MESSAGE_MAX = 2048
# The longest an upstream's Retry-After (or rate-limit reset) is believed: a day, the longest
# quota window providers document. Past it, or not a finite number >= 0, it is ignored.
MAX_RETRY_AFTER = 86400.0


def bounded_retry_after(seconds: float | None) -> float | None:
    """``seconds`` as the proxy acts on it: ``None`` unless finite and >= 0, at most
    :data:`MAX_RETRY_AFTER` (``inf`` would break every request; 1e12 would park a model for
    millennia, stored in Redis across restarts)."""
    if seconds is None or not isinstance(seconds, int | float) or seconds != seconds:
        return None
    if seconds < 0 or seconds == float("inf"):
        return None
    return min(float(seconds), MAX_RETRY_AFTER)


def sanitize(err: UpstreamError, secrets: Secrets) -> UpstreamError:
    """The allow-listed, redacted form of an upstream error, as everything that leaves the
    proxy (bodies, stream events, logs) shows it: the message scrubbed of the model's
    credentials and bounded, ``code`` and ``param`` kept only when they are short
    identifiers holding no credential, ``provider_name`` likewise."""
    message = secrets.scrub(err.message)
    if len(message) > _MESSAGE_MAX:
        message = message[:_MESSAGE_MAX] + "…"
    err.message = message

    def safe(value: Any, pattern: re.Pattern[str]) -> str | None:
        if value is None:
            return None
        text = str(value)
        return text if pattern.fullmatch(text) and not secrets.holds(text) else None

    err.code = safe(err.code, _SAFE_CODE)
    err.param = safe(err.param, _SAFE_PARAM)
    err.provider_name = safe(err.provider_name, _SAFE_NAME)
    err.retry_after = bounded_retry_after(err.retry_after)
    return err


_UPSTREAM_TYPES = {
    ErrorKind.CONTENT_FILTER: "invalid_request_error",
    ErrorKind.CONTEXT_LENGTH: "invalid_request_error",
    ErrorKind.BAD_REQUEST: "invalid_request_error",
}


def from_upstream(err: UpstreamError, model: str) -> ProxyError:
    """The client's view of an upstream failure that no other candidate could mend."""
    if err.kind is ErrorKind.AUTH:
        # The upstream refused *our* credentials: the client can do nothing about it, and the
        # upstream's wording may quote the key.
        message = f"model {model!r}: the upstream provider rejected the proxy's credentials"
    else:
        message = f"model {model!r}: {err.message}"
        if err.provider_name:
            message += f" (provider: {err.provider_name})"
    code = err.code
    if code is None:
        code = {ErrorKind.RATE_LIMITED: "rate_limit_exceeded",
                ErrorKind.TIMEOUT: "upstream_timeout",
                ErrorKind.CONTENT_FILTER: "content_filter",
                ErrorKind.CONTEXT_LENGTH: "context_length_exceeded"}.get(err.kind)
    return ProxyError(err.status, message, code=code, param=err.param,
                      type=_UPSTREAM_TYPES.get(err.kind), retry_after=err.retry_after)
