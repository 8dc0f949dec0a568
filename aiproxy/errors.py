"""Errors the proxy answers, and their one mapping to the OpenAI error envelope."""

from __future__ import annotations

from typing import Any

from aiproxy.provider import ErrorKind, UpstreamError

__all__ = ["ProxyError", "error_body", "from_upstream"]

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
