"""Structured logs (structlog, JSON by default), the access line, and request ids."""

from __future__ import annotations

import asyncio
import atexit
import datetime
import itertools
import logging
import os
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

__all__ = ["access_line", "configure_logging", "flush_logs", "flush_logs_forever",
           "get_logger", "new_request_id", "valid_request_id"]


class _Sink:
    """A byte buffer in front of the log stream. Lines are not flushed one by one (a syscall
    per request adds up under load, and ``PYTHONUNBUFFERED`` makes every write one): the app
    flushes every half second, at 64 KiB, and at exit, so a line is at most that late."""

    LIMIT = 64 * 1024

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, line: bytes) -> None:
        self.parts.append(line)
        self.size += len(line)
        if self.size >= self.LIMIT:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        data = b"".join(self.parts)
        self.parts.clear()
        self.size = 0
        if self.out.closed:
            return
        binary = getattr(self.out, "buffer", None)
        if binary is not None:
            self.out.flush()  # keep order with anything written to the text layer
            binary.write(data)
            binary.flush()
        else:
            self.out.write(data.decode())
            self.out.flush()


class _LineWriter:
    """structlog's logger: each rendered line goes to the sink."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        self._sink.write(message.encode() + b"\n")

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stamp(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``timestamp`` in ISO 8601 UTC with microseconds, as structlog's TimeStamper writes it,
    with the date and time formatted once a second rather than on every line."""
    now = time.time()
    second = int(now)
    if second != _clock[0]:
        _clock[0] = second
        _clock[1] = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%S")
    # %-formatting: a third of what an f-string with a format spec costs here; %d truncates.
    event["timestamp"] = "%s.%06dZ" % (_clock[1], (now - second) * 1e6)  # noqa: UP031
    return event


_clock: list[Any] = [-1, ""]


class _State:
    sink: _Sink | None = None
    json_access = False  # access lines skip structlog's chain (same fields, ~3x cheaper)
    stamp = staticmethod(_stamp)


def _orjson_dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(level: str = "INFO", fmt: str | None = None,
                      stream: TextIO | None = None) -> None:
    """Set up structlog once per process. ``fmt`` None picks console for a TTY, else JSON."""
    out = stream or sys.stdout
    if fmt is None:
        fmt = "console" if out.isatty() else "json"
    sink = _Sink(out)
    if _State.sink is None:
        atexit.register(flush_logs)
    _State.sink = sink
    threshold = logging.getLevelNamesMapping()[level.upper()]
    _State.json_access = fmt == "json" and threshold <= logging.INFO
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=out.isatty()) if fmt == "console"
                     else structlog.processors.JSONRenderer(serializer=_orjson_dumps))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _State.stamp,
            renderer,
        ],
        # Filtering by level in the bound logger makes a call below the level cost nothing.
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *_: _LineWriter(sink),
        cache_logger_on_first_use=True,
    )


def access_line(fields: dict[str, Any]) -> None:
    """One access line: the same JSON structlog would render, written directly. (A caller
    that puts ``event``, ``level`` and ``timestamp`` keys in ``fields`` up front spares the
    dict a resize: they are overwritten here.)"""
    sink = _State.sink
    if sink is not None and _State.json_access:
        fields["event"] = "request"
        fields["level"] = "info"
        _State.stamp(None, "info", fields)
        sink.write(orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE))
    else:
        for key in ("event", "level", "timestamp"):
            fields.pop(key, None)
        structlog.get_logger("aiproxy.access").info("request", **fields)


def flush_logs() -> None:
    """Write out what the log sink holds (nothing when logging was never configured)."""
    if _State.sink is not None:
        _State.sink.flush()


async def flush_logs_forever(every: float = 0.5) -> None:
    """Flush the log sink periodically (run as a task for the app's lifetime)."""
    try:
        while True:
            await asyncio.sleep(every)
            flush_logs()
    finally:
        flush_logs()


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


# Request ids: a random per-process prefix and a counter; as unique as a uuid4, far cheaper.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)
_SANE_ID = re.compile(r"[!-~]{1,128}")


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def valid_request_id(value: str | None) -> bool:
    """A client's ``X-Request-ID`` is echoed only if it is short and printable (no log forging)."""
    return value is not None and _SANE_ID.fullmatch(value) is not None
