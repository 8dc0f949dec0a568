"""Server-sent events: parse an upstream stream into events, of any line length.

aiohttp's ``readline`` refuses lines above twice its buffer size; SSE lines carrying a long
tool-call argument or a base64 image can be hundreds of KiB, so we split the raw chunks ourselves.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import aiohttp
import attrs

__all__ = ["SSEEvent", "iter_sse"]

# One event may not grow past this: an upstream that never sends a newline, or sends data:
# lines without ever ending the event, must not eat memory.
MAX_EVENT_BYTES = 16 * 1024 * 1024


@attrs.frozen
class SSEEvent:
    """One event: its ``event:`` name (``None`` when absent) and its ``data:`` lines joined."""

    data: bytes
    event: str | None = None


async def iter_sse(content: aiohttp.StreamReader,
                   max_event: int = MAX_EVENT_BYTES) -> AsyncGenerator[SSEEvent, None]:
    """Yield each complete event of a ``text/event-stream`` body as soon as it has arrived.

    Comment lines and ``id:``/``retry:`` fields are skipped. A final event without its blank
    line is still yielded at EOF (some upstreams omit it).
    """
    buffer = b""
    data: list[bytes] = []
    held = 0  # bytes of the event being assembled: its data lines and the unparsed buffer
    event: str | None = None
    async for chunk in content.iter_any():
        if not buffer and not data and event is None and chunk.startswith(b"data: "):
            # The common read: exactly one event, one data line and its blank line
            # (``data: {...}\n\n``, as a model's token arrives), yielded without the line loop.
            end = chunk.find(b"\n")
            if end == len(chunk) - 2 and chunk[end + 1] == 0x0A and chunk[end - 1] != 0x0D:
                if len(chunk) > max_event:
                    raise ValueError(f"server-sent event larger than {max_event} bytes")
                yield SSEEvent(chunk[6:end])
                continue
        buffer = buffer + chunk if buffer else chunk
        if held + len(buffer) > max_event:
            raise ValueError(f"server-sent event larger than {max_event} bytes")
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield SSEEvent(b"\n".join(data), event)
                data, event, held = [], None, 0
                continue
            field, sep, value = line.partition(b":")
            if sep and value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                data.append(value)
                held += len(value) + 1
            elif field == b"event":
                event = value.decode("utf-8", "replace")
        buffer = buffer[start:]
    tail = buffer.rstrip(b"\r\n")
    if tail.startswith(b"data:"):
        value = tail[5:]
        data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield SSEEvent(b"\n".join(data), event)
