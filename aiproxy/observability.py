"""Structured logs (structlog, JSON by default) and request ids."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import sys
from typing import Any, TextIO

import orjson
import structlog

__all__ = ["configure_logging", "flush_logs", "flush_logs_forever", "get_logger", "new_request_id",
           "valid_request_id"]


def _orjson_dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(level: str = "INFO", fmt: str | None = None,
                      stream: TextIO | None = None) -> None:
    """Set up structlog once per process. ``fmt`` None picks console for a TTY, else JSON."""
    out = stream or sys.stdout
    _configured[:] = [out]
    if fmt is None:
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=out.isatty()) if fmt == "console"
                     else structlog.processors.JSONRenderer(serializer=_orjson_dumps))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        # Filtering by level in the bound logger makes a call below the level cost nothing.
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=lambda *_: _LineWriter(out),
        cache_logger_on_first_use=True,
    )


class _LineWriter:
    """Writes each line without a flush (a syscall per request adds up under load); the app
    flushes every half second and at exit, so a line is at most that late."""

    def __init__(self, out: TextIO) -> None:
        self._write = out.write

    def msg(self, message: str) -> None:
        self._write(message + "\n")

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def flush_logs() -> None:
    """Flush what :func:`configure_logging` writes to (nothing when it was never called)."""
    out = _configured[0] if _configured else None
    if out is not None and not out.closed:
        out.flush()


async def flush_logs_forever(every: float = 0.5) -> None:
    """Flush the log stream periodically (run as a task for the app's lifetime)."""
    try:
        while True:
            await asyncio.sleep(every)
            flush_logs()
    finally:
        flush_logs()


_configured: list[TextIO] = []  # the stream configure_logging set up, if it did


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
