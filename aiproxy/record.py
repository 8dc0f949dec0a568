"""The record of one request: filled in as it goes, settled once, read by the observers
(the access line, the request metrics, and any other registered in ``make_app``) when it ends.
"""

from __future__ import annotations

import attrs

__all__ = ["AttemptEntry", "Record"]


@attrs.frozen
class AttemptEntry:
    """One upstream attempt of a request: which model, when (wall clock), for how long, and
    how it ended (``answered``, or the upstream error kind, or ``cancelled``)."""

    model: str
    provider: str
    started: float
    duration: float
    outcome: str


@attrs.define(slots=True)
class Record:
    """What one request learned on its way; routing writes it, observers only read it."""

    request_id: str = ""
    started: float = 0.0  # wall clock (time.time()) when the request arrived
    # time.monotonic() at the same moment: later moments of the request are placed on the
    # wall clock as ``started`` plus monotonic time since, so a wall clock being slewed or
    # stepped meanwhile (NTP, a VM resumed) cannot put an attempt outside its request.
    clock: float = 0.0
    method: str = ""
    path: str = ""
    route: str = ""  # the route template ("/v1/chat/completions"), or "unmatched"
    status: int = 0  # the status the client got (499: it went away first)
    total_ms: float = 0.0
    requested: str | None = None  # the model or group the client named
    model: str | None = None  # the model that answered
    provider: str | None = None
    attempts: int | None = None
    tried: list[str] | None = None  # every model an attempt went to, in order
    key_name: str | None = None
    upstream_ms: float | None = None  # time spent in upstream attempts, to the answer's head
    tokens_in: int | None = None
    tokens_out: int | None = None
    tokens_cached: int | None = None  # of tokens_in, served from the upstream's prompt cache
    tokens_reasoning: int | None = None  # of tokens_out, spent on reasoning
    ttft_ms: float | None = None  # a stream's time to its first chunk, on the answering attempt
    hedges: int = 0  # extra attempts started beside a slow one
    continuations: int = 0  # broken streams continued on another candidate
    images: int | None = None  # images generated, for an image request
    # One entry per upstream attempt, in order: for traces (a child span each).
    attempt_log: list[AttemptEntry] = attrs.field(factory=list)
    stream: bool = False
    stream_error: str | None = None
    error_kind: str | None = None  # the final upstream error kind of a failed request
    client_gone: bool = False
    # USD at the configured prices, set by the usage ledger as it records the request (the
    # observers after it, the access line and traces, read it rather than price it again).
    cost_usd: float | None = None
