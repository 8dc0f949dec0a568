"""The record of one request: filled in as it goes, settled once, read by the observers
(the access line, the request metrics) when it ends."""

from __future__ import annotations

import attrs

__all__ = ["Record"]


@attrs.define(slots=True)
class Record:
    """What one request learned on its way; routing writes it, observers only read it."""

    request_id: str = ""
    requested: str | None = None  # the model or group the client named
    model: str | None = None  # the model that answered
    provider: str | None = None
    attempts: int | None = None
    tried: list[str] | None = None  # every model an attempt went to, in order
    key_name: str | None = None
    upstream_ms: float | None = None  # time spent in upstream attempts, to the answer's head
    tokens_in: int | None = None
    tokens_out: int | None = None
    stream: bool = False
    stream_error: str | None = None
    error_kind: str | None = None  # the final upstream error kind of a failed request
    client_gone: bool = False
