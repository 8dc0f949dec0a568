"""The error vocabulary a plugin speaks to the core, and the helpers that build it.

A provider raises :class:`UpstreamError` for every failure; its :class:`ErrorKind` decides
whether the core retries, falls back or answers the client. A plugin's error table is an
:class:`ErrorTable`; :func:`classify` applies it to an :class:`UpstreamFailure` read from the
upstream's own error shape, and falls back to the usual HTTP status mapping.
"""

from __future__ import annotations

import email.utils
import enum
import re
import time
from collections.abc import Mapping
from typing import Any

import attrs
import orjson

__all__ = [
    "ErrorKind",
    "ErrorRule",
    "ErrorTable",
    "RateLimitHint",
    "UpstreamError",
    "UpstreamFailure",
    "bad_request",
    "classify",
    "error_from_status",
    "error_json",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "protocol_error",
]


class ErrorKind(enum.Enum):
    """Why an upstream call failed: the one vocabulary routing decides on."""

    RATE_LIMITED = "rate_limited"  # 429 or a quota: retry later / elsewhere
    OVERLOADED = "overloaded"  # 5xx, 503, 529: retry / fall back
    TIMEOUT = "timeout"  # connect, first token, idle or total bound passed
    CONNECTION = "connection"  # refused, reset, TLS, DNS
    PROTOCOL = "protocol"  # malformed answer, stream cut before its end
    BAD_REQUEST = "bad_request"  # 400/404/413/422: the client's fault, never retried
    AUTH = "auth"  # 401/403 from upstream: our credentials, never retried as-is
    CONTENT_FILTER = "content_filter"  # refused by the provider's safety system
    CONTEXT_LENGTH = "context_length"  # request too long for this model; a larger one may take it

    @property
    def retryable(self) -> bool:
        """True where the same request may succeed on a retry or another candidate."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED, ErrorKind.TIMEOUT, ErrorKind.CONNECTION,
     ErrorKind.PROTOCOL}
)


@attrs.frozen
class RateLimitHint:
    """What an upstream told us of its own limits: nothing left until ``reset_after`` seconds."""

    remaining: int | None = None
    reset_after: float | None = None


class UpstreamError(Exception):
    """An upstream call failed. Raised by providers; routing decides what the client sees.

    ``status`` is the HTTP status the client gets if this error is final (upstream 4xx keep
    theirs; 5xx, connection failures and timeouts become 502/504). ``message`` must never
    contain a token or a URL with credentials.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        provider_name: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status if status is not None else _DEFAULT_STATUS[kind]
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.upstream_status = upstream_status
        # Who failed behind an aggregator (OpenRouter's metadata.provider_name), for messages.
        self.provider_name = provider_name

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    @message.setter
    def message(self, value: str) -> None:
        # Kept in args too, so str(err) never shows what a redaction removed.
        self.args = (value,)

    def __repr__(self) -> str:
        return f"UpstreamError({self.kind.value}, {self.status}, {self.message!r})"


_DEFAULT_STATUS = {
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.OVERLOADED: 502,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.CONNECTION: 502,
    ErrorKind.PROTOCOL: 502,
    ErrorKind.BAD_REQUEST: 400,
    ErrorKind.AUTH: 502,  # our upstream credentials are wrong: not the client's fault
    ErrorKind.CONTENT_FILTER: 400,
    ErrorKind.CONTEXT_LENGTH: 400,
}


def bad_request(message: str, *, param: str | None = None,
                code: str | None = None) -> UpstreamError:
    """A request this provider cannot serve as sent: the client gets a 400 naming ``param``.

    Raised before any upstream call, it costs nothing and is never retried. An OpenAI parameter
    the provider lacks is refused by :meth:`aiproxy.kit.Parameters.check` instead, with the
    ``unsupported_parameter`` code.
    """
    return UpstreamError(ErrorKind.BAD_REQUEST, message, status=400, code=code, param=param)


def protocol_error(message: str) -> UpstreamError:
    """An answer or stream that breaks the upstream's own format: retryable, like a 502."""
    return UpstreamError(ErrorKind.PROTOCOL, message)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _parse_duration(value: str) -> float | None:
    """OpenAI/Groq reset durations: ``1s``, ``6m0s``, ``2m59.56s``, ``20ms``, or plain seconds."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    total, number, i = 0.0, "", 0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if value.startswith("ms", i) else ch
        if unit not in units or not number:
            return None
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    return None if number else total


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHint | None:
    """Read ``x-ratelimit-remaining-*`` / ``x-ratelimit-reset-*`` (OpenAI, Groq, OpenRouter).

    OpenRouter sends ``x-ratelimit-reset`` as a Unix time in milliseconds; OpenAI and Groq send
    durations such as ``6m0s``. Only an exhausted budget (remaining 0) yields a reset.
    """
    remaining: int | None = None
    reset: float | None = None
    for kind in ("requests", "tokens", ""):
        suffix = f"-{kind}" if kind else ""
        raw = headers.get(f"x-ratelimit-remaining{suffix}")
        if raw is None:
            continue
        try:
            left = int(float(raw))
        except ValueError:
            continue
        remaining = left if remaining is None else min(remaining, left)
        if left > 0:
            continue
        raw_reset = headers.get(f"x-ratelimit-reset{suffix}")
        if raw_reset is None:
            continue
        seconds = _parse_duration(raw_reset)
        if seconds is not None and seconds > 1e11:  # epoch milliseconds
            seconds = max(0.0, seconds / 1000 - time.time())
        elif seconds is not None and seconds > 1e9:  # epoch seconds
            seconds = max(0.0, seconds - time.time())
        if seconds is not None:
            reset = seconds if reset is None else max(reset, seconds)
    if remaining is None:
        return None
    return RateLimitHint(remaining=remaining, reset_after=reset if remaining == 0 else None)


def _context_wording(text: str) -> bool:
    return ("context_length" in text or "context length" in text or "too many tokens" in text
            or "maximum context" in text or "context window" in text)


def error_from_status(
    status: int,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    code: str | None = None,
    param: str | None = None,
    provider_name: str | None = None,
) -> UpstreamError:
    """The usual mapping of an upstream HTTP error status to an :class:`UpstreamError`."""
    text = f"{message} {code or ''}".lower()
    retry_after = parse_retry_after((headers or {}).get("retry-after"))
    if "context_length" in text or "context length" in text or "too many tokens" in text \
            or "maximum context" in text:
        kind, out = ErrorKind.CONTEXT_LENGTH, 400
        code = code or "context_length_exceeded"
    elif "content_filter" in text or "content management policy" in text \
            or "content_policy" in text:
        kind, out = ErrorKind.CONTENT_FILTER, 400
        code = code or "content_filter"
    elif status == 429:
        kind, out = ErrorKind.RATE_LIMITED, 429
        if retry_after is None and headers:
            hint = parse_rate_limit_headers(headers)
            retry_after = hint.reset_after if hint else None
    elif status in (401, 403):
        kind, out = ErrorKind.AUTH, 502
    elif status == 408:
        kind, out = ErrorKind.TIMEOUT, 504
    elif 400 <= status < 500:
        kind, out = ErrorKind.BAD_REQUEST, status
    else:
        kind, out = ErrorKind.OVERLOADED, 502
    return UpstreamError(kind, message, status=out, code=code, param=param,
                         retry_after=retry_after, upstream_status=status,
                         provider_name=provider_name)


# --- One error table per plugin ---------------------------------------------------------------


def error_json(body: bytes) -> Any:
    """An error body's JSON, or ``None`` when it is empty or not JSON (HTML from a proxy)."""
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


@attrs.frozen
class UpstreamFailure:
    """What an upstream said about a failure, read from its own error shape: the one input of
    :func:`classify`.

    ``status`` is the HTTP status (200 for an error inside an answer or a stream); ``codes`` are
    the upstream's own error codes and reasons, most telling first (Gemini's ``status`` and its
    ``ErrorInfo`` reasons, Cloudflare's numeric codes as strings). The first one is the ``code``
    the client sees unless a rule says otherwise. ``retry_after`` is a wait the body gave
    (Gemini's ``RetryInfo``); a ``Retry-After`` header is read from ``headers``.
    """

    status: int
    message: str
    codes: tuple[str, ...] = ()
    param: str | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class ErrorRule:
    """One line of an :class:`ErrorTable`: the kind, and the client's code and status if they
    are not the usual ones for the kind."""

    kind: ErrorKind
    code: str | None = None
    status: int | None = None


def _rule(value: ErrorKind | ErrorRule) -> ErrorRule:
    return value if isinstance(value, ErrorRule) else ErrorRule(value)


def _rules(table: Mapping[Any, ErrorKind | ErrorRule]) -> dict[Any, ErrorRule]:
    return {key: _rule(value) for key, value in table.items()}


@attrs.frozen
class ErrorTable:
    """How one upstream's failures map to error kinds, where the HTTP status alone misleads.

    ``codes``: the upstream's own error codes (``RESOURCE_EXHAUSTED``, ``"3036"``);
    ``statuses``: HTTP statuses this upstream uses its own way (Cohere's 402 is a quota);
    ``context_length``: its wording for a prompt too long for the model, beside the usual
    phrases ("context length", "too many tokens", ...). Everything else takes the usual mapping
    of :func:`error_from_status`.
    """

    codes: Mapping[str, ErrorRule] = attrs.field(factory=dict, converter=_rules)
    statuses: Mapping[int, ErrorRule] = attrs.field(factory=dict, converter=_rules)
    context_length: re.Pattern[str] | None = None


def _client_status(rule: ErrorRule, upstream: int) -> int:
    if rule.status is not None:
        return rule.status
    if rule.kind is ErrorKind.BAD_REQUEST:
        return upstream if 400 <= upstream < 500 else 400  # a 404 stays a 404
    return _DEFAULT_STATUS[rule.kind]


_CLIENT_CODES = {ErrorKind.CONTEXT_LENGTH: "context_length_exceeded",
                 ErrorKind.CONTENT_FILTER: "content_filter"}


def classify(failure: UpstreamFailure, table: ErrorTable | None = None, *,
             provider_name: str | None = None) -> UpstreamError:
    """The :class:`UpstreamError` for ``failure``, in this order: the table's rule for the
    first of its ``codes`` it knows; a 429 (a rate, even when it says "too many tokens"); the
    context-length wording; the table's rule for the status; the usual status mapping, where a
    504 is a ``TIMEOUT``. A context-length or content-filter error always carries OpenAI's code
    for it (``context_length_exceeded``, ``content_filter``), which clients and routing read.
    """
    table = table or _NO_TABLE
    headers = failure.headers
    status = failure.status
    rule = next((table.codes[c] for c in failure.codes if c in table.codes), None)
    if rule is None and status == 429:
        rule = ErrorRule(ErrorKind.RATE_LIMITED)
    if rule is None and (_context_wording(failure.message.lower()) or (
            table.context_length is not None and table.context_length.search(failure.message))):
        rule = ErrorRule(ErrorKind.CONTEXT_LENGTH)
    if rule is None:
        rule = table.statuses.get(status)
    if rule is None and status == 504:
        rule = ErrorRule(ErrorKind.TIMEOUT)
    code = failure.codes[0] if failure.codes else None
    if rule is None:
        err = error_from_status(status, failure.message, headers=headers, code=code,
                                param=failure.param, provider_name=provider_name)
        if failure.retry_after is not None:
            err.retry_after = failure.retry_after
        return err
    retry_after = failure.retry_after
    if retry_after is None:
        retry_after = parse_retry_after(headers.get("retry-after"))
    if retry_after is None and rule.kind is ErrorKind.RATE_LIMITED:
        hint = parse_rate_limit_headers(headers)
        retry_after = hint.reset_after if hint else None
    return UpstreamError(rule.kind, failure.message, status=_client_status(rule, status),
                         code=rule.code or _CLIENT_CODES.get(rule.kind, code),
                         param=failure.param, retry_after=retry_after, upstream_status=status,
                         provider_name=provider_name)


_NO_TABLE = ErrorTable()
