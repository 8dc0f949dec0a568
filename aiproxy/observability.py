"""Structured logs (structlog, JSON by default) and request ids."""

from __future__ import annotations

import logging
import sys
import uuid
from typing import Any, TextIO

import orjson
import structlog

__all__ = ["configure_logging", "get_logger", "new_request_id", "valid_request_id"]


def _orjson_dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(level: str = "INFO", fmt: str | None = None,
                      stream: TextIO | None = None) -> None:
    """Set up structlog once per process. ``fmt`` None picks console for a TTY, else JSON."""
    out = stream or sys.stdout
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
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(value: str | None) -> bool:
    """A client's ``X-Request-ID`` is echoed only if it is short and printable (no log forging)."""
    return bool(value) and len(value or "") <= 128 and all(
        33 <= ord(c) <= 126 for c in value or "")
