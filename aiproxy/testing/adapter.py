"""What the conformance suite says, and the adapter a plugin writes to say it its upstream's way."""

from __future__ import annotations

import abc
import base64
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import orjson
from aiohttp import web

from aiproxy.config import ModelConfig
from aiproxy.provider import ChatRequest, ErrorKind, Provider
from aiproxy.testing.upstream import FakeUpstream, RecordedRequest, StreamEvent, StreamFormat

__all__ = [
    "CHECK_TIMEOUT",
    "EMBEDDING_INPUTS",
    "ERROR_KINDS",
    "IMAGE",
    "IMAGE_PROMPT",
    "RETRY_AFTER",
    "TEXT",
    "TEXT_PIECES",
    "TOOLS",
    "TOOL_CALL",
    "TOOL_RESULT",
    "USAGE",
    "ConformanceAdapter",
    "ToolCall",
    "Usage",
    "embedding_for",
]


@attrs.frozen
class Usage:
    """Token counts the fake upstream reports."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@attrs.frozen
class ToolCall:
    """The function call the fake upstream makes in the tool checks."""

    id: str
    name: str
    arguments: Mapping[str, Any]

    @property
    def arguments_json(self) -> str:
        """The arguments as the JSON text an OpenAI tool call carries."""
        return orjson.dumps(dict(self.arguments)).decode()


# The canonical answer. Non-ASCII on purpose: it catches providers that mangle encodings.
TEXT_PIECES: tuple[str, ...] = ("Hello", ", conformance", " wörld", "!")
TEXT = "".join(TEXT_PIECES)
USAGE = Usage(prompt_tokens=11, completion_tokens=7)
#: Seconds the fake asks the provider to wait on RATE_LIMITED; the error must carry it.
RETRY_AFTER = 7.0
#: The error kinds the suite asks an adapter for, one check each.
ERROR_KINDS: tuple[ErrorKind, ...] = (
    ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED, ErrorKind.BAD_REQUEST, ErrorKind.AUTH,
    ErrorKind.CONTEXT_LENGTH, ErrorKind.CONTENT_FILTER,
)
#: Bound on one check: a hang (an unreleased connection, a stream that never ends) fails it.
CHECK_TIMEOUT = 15.0

#: The one tool the tool checks offer, in the OpenAI shape
#: (https://platform.openai.com/docs/api-reference/chat/create#chat-create-tools).
TOOLS: tuple[dict[str, Any], ...] = ({
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"]},
    },
},)
#: The call the fake upstream makes; an upstream that sends no call id gets one from the
#: provider, so the suite checks ``id`` only for being there.
TOOL_CALL = ToolCall("call_conformance_0001", "get_weather", {"city": "Paris", "unit": "c"})
#: What the client answers the call with, in the second request of the round trip.
TOOL_RESULT = "sunny, 22 degrees"

#: The texts the embeddings check embeds, in this order.
EMBEDDING_INPUTS: tuple[str, ...] = ("first text", "the second, wörld")
IMAGE_PROMPT = "a red square"
#: The image the fake upstream answers with: a valid 1x1 red PNG.
IMAGE = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")


def embedding_for(text: str) -> list[float]:
    """The vector the fake upstream answers for ``text``: deterministic, exact in float32 (so
    a base64 round trip compares equal), different for each of :data:`EMBEDDING_INPUTS`."""
    return [float(len(text)), 0.5, -0.25, float(sum(map(ord, text)) % 64) / 8]


class ConformanceAdapter(abc.ABC):
    """Describe your upstream so the suite can play it; subclass once per provider.

    Class attributes say where the provider calls and how it frames streams; the methods
    build native answers for the suite's canonical scenarios. ``request`` arguments are what
    the provider actually sent, so an adapter may answer as the real upstream would (e.g. an
    OpenAI upstream sends a usage chunk only when ``stream_options.include_usage`` asks).

    The three abstract methods cover chat. Override the optional ones your upstream has: a
    check whose method is not overridden does not apply (it is not run), and the report says so.
    """

    #: The provider class under test.
    provider: type[Provider]
    #: Paths (POST, no query) of the provider's chat calls, plain and streamed.
    chat_paths: tuple[str, ...] = ()
    #: Paths (POST) of its embeddings calls (with Capability.EMBEDDINGS).
    embeddings_paths: tuple[str, ...] = ()
    #: Paths (POST) of its image generation calls (with Capability.IMAGES).
    image_paths: tuple[str, ...] = ()
    #: How the upstream frames streams: server-sent events or newline-delimited JSON.
    stream_format: StreamFormat = "sse"
    #: The upstream key the suite configures; it must never appear in an UpstreamError.
    token: str | None = "sk-conformance-0123456789abcdef"  # noqa: S105 - a dummy to watch for
    #: False where the provider counts tokens itself instead of reporting the upstream's.
    exact_usage: bool = True
    #: False for a provider that calls no upstream (a mock): only the shape checks apply.
    has_upstream: bool = True
    #: For a provider with no upstream: True if it answers ``tools`` with a call, so the tool
    #: checks run on its shapes. (With an upstream, overriding answer_tool_call says it.)
    tool_calls: bool = False

    def model_config(self, base_url: str) -> ModelConfig:
        """The model entry that points the provider at the fake upstream (root ``base_url``)."""
        return ModelConfig(name="conformance/model", provider="conformance", url=base_url,
                           token=self.token)

    def setup(self, fake: FakeUpstream) -> None:  # noqa: B027 - an optional hook
        """Route whatever else the provider calls, e.g. an OAuth token endpoint."""

    @abc.abstractmethod
    def answer_text(self, text: str, usage: Usage,
                    request: RecordedRequest) -> dict[str, Any] | web.StreamResponse:
        """A complete plain answer saying ``text``: a JSON body, or a whole response."""

    @abc.abstractmethod
    def stream_text(self, pieces: Sequence[str], usage: Usage,
                    request: RecordedRequest) -> list[StreamEvent]:
        """The streamed answer: one content event per piece, then whatever ends the stream."""

    @abc.abstractmethod
    def error(self, kind: ErrorKind, message: str,
              request: RecordedRequest) -> web.StreamResponse | None:
        """How the upstream answers ``request`` with a failure of ``kind`` (``message`` as its
        text), or ``None`` if it has no such failure. RATE_LIMITED must say: retry after
        :data:`RETRY_AFTER` seconds. Usually an error status (see :func:`json_response`); an
        upstream that reports e.g. a blocked prompt in a 200 answer returns that instead
        (:func:`encode_stream` builds a whole stream body)."""

    def stream_error(self, message: str) -> StreamEvent | None:
        """An error reported inside a stream that has started, if the upstream does that."""
        return None

    def check_request(  # noqa: B027 - an optional hook
            self, request: RecordedRequest, chat: ChatRequest) -> None:
        """Assert on the translated request the provider sent for ``chat`` (optional)."""

    def cut_point(self, events: Sequence[StreamEvent]) -> int:
        """How many events go out before a cut: by default half, so some text got through."""
        return max(1, len(events) // 2)

    # --- optional: tools, embeddings, images ---------------------------------------------

    def answer_tool_call(self, call: ToolCall, usage: Usage, request: RecordedRequest
                         ) -> dict[str, Any] | web.StreamResponse | None:
        """A plain answer in which the model calls ``call.name`` with ``call.arguments``
        (``call.id`` as its id, if the upstream has call ids)."""
        return None

    def stream_tool_call(self, call: ToolCall, usage: Usage,
                         request: RecordedRequest) -> list[StreamEvent] | None:
        """The same call, streamed the way the upstream streams one (its arguments in several
        fragments, if it sends them that way), then whatever ends the stream."""
        return None

    def check_tool_result(  # noqa: B027 - an optional hook
            self, request: RecordedRequest, call: ToolCall, result: str) -> None:
        """Assert on how the provider sent the history of the round trip: the assistant's
        ``call`` and the client's ``result`` for it (optional; the suite checks only that the
        upstream received the function's name and the result's text)."""

    def answer_embeddings(self, request: RecordedRequest
                          ) -> dict[str, Any] | web.StreamResponse | None:
        """The embeddings answer to ``request``: for each text the provider sent, the vector
        :func:`embedding_for` gives it. The provider may batch or split the inputs as its
        upstream needs; the client must get them back in order."""
        return None

    def answer_image(self, image: bytes, request: RecordedRequest
                     ) -> dict[str, Any] | web.StreamResponse | None:
        """The image generation answer carrying ``image`` (PNG bytes) once per image asked."""
        return None
