"""Logs: JSON lines with the access fields, buffered but never lost; request ids."""

from __future__ import annotations

import io

import orjson
import pytest
import structlog

from aiproxy import observability
from aiproxy.observability import (
    access_line,
    configure_logging,
    flush_logs,
    get_logger,
    new_request_id,
    valid_request_id,
)


@pytest.fixture
def stream():
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    yield out
    structlog.reset_defaults()
    observability._State.sink = None


def lines(out: io.TextIOWrapper) -> list[dict]:
    flush_logs()
    return [orjson.loads(line) for line in out.buffer.getvalue().splitlines()]


def test_json_access_line_and_structlog_lines_share_one_shape(stream):
    configure_logging("INFO", "json", stream)
    get_logger("aiproxy").info("started", models=2)
    access_line({"request_id": "abc", "status": 200, "model": "m", "total_ms": 1.5})
    assert stream.buffer.getvalue() == b""  # buffered until a flush...
    started, request = lines(stream)  # ...and in order
    assert started["event"] == "started"
    assert request["event"] == "request"
    assert request["status"] == 200
    assert set(started) == {"models", "event", "level", "timestamp"}
    assert set(request) == {"request_id", "status", "model", "total_ms", "event", "level",
                            "timestamp"}
    assert request["timestamp"].endswith("Z")


def test_level_filters_access_lines(stream):
    configure_logging("WARNING", "json", stream)
    access_line({"status": 200})
    get_logger("aiproxy").info("quiet")
    get_logger("aiproxy").warning("loud")
    assert [line["event"] for line in lines(stream)] == ["loud"]


def test_console_format(stream):
    configure_logging("INFO", "console", stream)
    access_line({"status": 204})
    flush_logs()
    text = stream.buffer.getvalue().decode()
    assert "request" in text and "status=204" in text


def test_request_ids():
    first, second = new_request_id(), new_request_id()
    assert first != second and len(first) == 32
    assert valid_request_id("abc-123_X.y")
    assert not valid_request_id("")
    assert not valid_request_id("a b")
    assert not valid_request_id("line\nbreak")
    assert not valid_request_id("x" * 129)
