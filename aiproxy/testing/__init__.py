"""Test kit for provider plugins: a fake upstream on 127.0.0.1 and a conformance suite.

A plugin's own tests use it to check the plugin against the contract of ``aiproxy.provider``
with no network and no key::

    from aiproxy.testing import ConformanceAdapter, conformance_tests

    class MyAdapter(ConformanceAdapter):
        provider = MyProvider
        chat_paths = ("/v1/chat",)
        def answer_text(self, text, usage, request): ...   # a plain answer, as the upstream says it
        def stream_text(self, pieces, usage, request): ... # the same answer as stream events
        def error(self, kind, message, request): ...       # that failure, or None if none
        # optional: answer_tool_call, stream_tool_call, answer_embeddings, answer_image

    TestMyProviderConformance = conformance_tests(MyAdapter())

The adapter describes how the upstream speaks; the suite plays that upstream on a
:class:`FakeUpstream` (an aiohttp server on 127.0.0.1) and checks what the provider makes of it:
OpenAI shapes, stream invariants, cut streams, early close, error kinds, no leaked key, tool
calls, embeddings and images. Installing aiproxy also installs a pytest plugin
(``aiproxy.testing.plugin``, entry point ``pytest11``) with fixtures and an end-of-run report of
what the suite did not run and why. ``docs/plugins.md`` walks through it. Only the plugin and
:func:`conformance_tests` import pytest.
"""

from __future__ import annotations

from aiproxy.testing.adapter import (
    CHECK_TIMEOUT,
    EMBEDDING_INPUTS,
    ERROR_KINDS,
    IMAGE,
    IMAGE_PROMPT,
    RETRY_AFTER,
    TEXT,
    TEXT_PIECES,
    TOOL_CALL,
    TOOL_RESULT,
    TOOLS,
    USAGE,
    ConformanceAdapter,
    ToolCall,
    Usage,
    embedding_for,
)
from aiproxy.testing.calls import (
    MESSAGES,
    chat_request,
    collect_stream,
    embeddings_request,
    image_request,
)
from aiproxy.testing.suite import (
    CHECKS,
    CheckResult,
    ConformanceReport,
    applicable_checks,
    conformance_tests,
    run_check,
    run_conformance,
    skipped_checks,
)
from aiproxy.testing.upstream import (
    FakeUpstream,
    Handler,
    RecordedRequest,
    SSEEvent,
    StreamEvent,
    encode_stream,
    json_response,
    stream_response,
)
from aiproxy.testing.world import Check, ConformanceFailure

__all__ = [
    "CHECKS",
    "CHECK_TIMEOUT",
    "EMBEDDING_INPUTS",
    "ERROR_KINDS",
    "IMAGE",
    "IMAGE_PROMPT",
    "MESSAGES",
    "RETRY_AFTER",
    "TEXT",
    "TEXT_PIECES",
    "TOOLS",
    "TOOL_CALL",
    "TOOL_RESULT",
    "USAGE",
    "Check",
    "CheckResult",
    "ConformanceAdapter",
    "ConformanceFailure",
    "ConformanceReport",
    "FakeUpstream",
    "Handler",
    "RecordedRequest",
    "SSEEvent",
    "StreamEvent",
    "ToolCall",
    "Usage",
    "applicable_checks",
    "chat_request",
    "collect_stream",
    "conformance_tests",
    "embedding_for",
    "embeddings_request",
    "encode_stream",
    "image_request",
    "json_response",
    "run_check",
    "run_conformance",
    "skipped_checks",
    "stream_response",
]
