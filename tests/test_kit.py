"""The translation kit (aiproxy.kit): what the translating plugins share, tested on its own."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai.types.chat.completion_create_params as chat_params
import openai.types.embedding_create_params as embedding_params
import orjson
import pytest
from aiohttp import web

from aiproxy.kit import (
    OPENAI_CHAT_PARAMETERS,
    OPENAI_EMBEDDING_PARAMETERS,
    ErrorKind,
    ErrorRule,
    ErrorTable,
    Parameters,
    StreamAssembler,
    UpstreamError,
    UpstreamFailure,
    assistant_message,
    classify,
    data_url,
    embedding_texts,
    embeddings_answer,
    function_tools,
    is_default,
    messages_of,
    openai_finish_reason,
    openai_tool_call,
    openai_usage,
    parts_of,
    stop_of,
    text_of,
    tool_choice_of,
)


def refused(call: Any, *args: Any, **kwargs: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        call(*args, **kwargs)
    assert info.value.kind is ErrorKind.BAD_REQUEST
    assert info.value.status == 400
    return info.value


# --- Parameters ---------------------------------------------------------------------------------


GEMINI_LIKE = Parameters(
    "Upstream", supported={"temperature", "n", "tools", "tool_choice"},
    ignored={"user", "store"}, notes={"logit_bias": "it has no logit bias"},
    extensions={"top_k"})


class TestParameters:
    def test_the_lists_are_the_openai_sdks(self) -> None:
        # The SDK users run is the reference: a parameter it adds must be declared by every
        # translating provider, so this fails until OPENAI_CHAT_PARAMETERS learns it.
        sdk = set(chat_params.CompletionCreateParamsBase.__annotations__) | {"stream"}
        assert sdk == OPENAI_CHAT_PARAMETERS
        assert set(embedding_params.EmbeddingCreateParams.__annotations__) \
            == OPENAI_EMBEDDING_PARAMETERS

    def test_unsupported_parameter_is_one_400_shape(self) -> None:
        err = refused(GEMINI_LIKE.check, {"messages": [], "logit_bias": {"1": 2}})
        assert err.code == "unsupported_parameter"
        assert err.param == "logit_bias"
        assert err.message == ("Unsupported parameter: 'logit_bias' is not supported by "
                               "Upstream (it has no logit bias).")
        err = refused(GEMINI_LIKE.check, {"audio": {"voice": "alloy"}})
        assert err.message == "Unsupported parameter: 'audio' is not supported by Upstream."

    @pytest.mark.parametrize("body", [
        {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}},
        {"temperature": 0.2, "n": 3, "tools": [{}]},       # supported
        {"user": "u", "store": True},                      # ignored
        {"top_k": 3, "vendor_field": {"x": 1}},            # extensions and unknown fields
        # Refused parameters at OpenAI's defaults ask for nothing: as good as absent.
        {"logit_bias": {}, "logprobs": False, "frequency_penalty": 0, "presence_penalty": 0.0,
         "modalities": ["text"], "parallel_tool_calls": True, "stop": None, "audio": None,
         "response_format": {"type": "text"}, "verbosity": "medium"},
    ])
    def test_accepted(self, body: dict[str, Any]) -> None:
        GEMINI_LIKE.check(body)

    def test_defaults_are_exact(self) -> None:
        assert is_default("n", 1) and is_default("n", None)
        assert not is_default("n", True)  # a bool is not the number 1
        assert not is_default("logprobs", 0)
        assert not is_default("modalities", ["text", "audio"])

    @pytest.mark.parametrize(("kwargs", "words"), [
        ({"supported": {"temprature"}}, "temprature"),
        ({"supported": {"user"}, "ignored": {"user"}}, "both"),
        ({"supported": {"n"}, "notes": {"n": "why"}}, "notes are for refused or ignored"),
        ({"supported": set(), "extensions": {"seed"}}, "extensions"),
    ])
    def test_a_wrong_declaration_fails_at_import(self, kwargs: dict[str, Any],
                                                 words: str) -> None:
        with pytest.raises(ValueError, match=words):
            Parameters("X", **kwargs)

    def test_embeddings(self) -> None:
        params = Parameters("X", supported={"encoding_format"}, ignored={"user"},
                            api="embeddings")
        params.check({"input": "a", "model": "m", "encoding_format": "float", "user": "u"})
        assert refused(params.check, {"dimensions": 3}).param == "dimensions"
        assert params.refused == {"dimensions"}

    def test_markdown_lists_every_parameter(self) -> None:
        table = GEMINI_LIKE.markdown()
        assert "| `temperature` | translated |" in table
        assert "| `user` | dropped |" in table
        assert ("| `logit_bias` | refused with 400 `unsupported_parameter`: it has no logit "
                "bias |") in table
        rows = [line for line in table.splitlines() if line.startswith("| `")]
        assert len(rows) == len(OPENAI_CHAT_PARAMETERS)
        assert table.endswith("Also read, beyond the OpenAI API: `top_k`.")


# --- Errors -------------------------------------------------------------------------------------


TABLE = ErrorTable(
    codes={"RESOURCE_EXHAUSTED": ErrorKind.RATE_LIMITED, "API_KEY_INVALID": ErrorKind.AUTH,
           "3006": ErrorKind.BAD_REQUEST},
    statuses={402: ErrorRule(ErrorKind.RATE_LIMITED, code="insufficient_quota", status=429),
              501: ErrorKind.BAD_REQUEST},
    context_length=re.compile(r"prompt is too long"))


class TestClassify:
    @pytest.mark.parametrize(("failure", "expected"), [
        # The table's codes first, the most telling first among several.
        (UpstreamFailure(400, "bad key", codes=("INVALID_ARGUMENT", "API_KEY_INVALID")),
         (ErrorKind.AUTH, 502, "INVALID_ARGUMENT")),
        (UpstreamFailure(429, "quota", codes=("RESOURCE_EXHAUSTED",)),
         (ErrorKind.RATE_LIMITED, 429, "RESOURCE_EXHAUSTED")),
        # A 429 is a rate even when it speaks of tokens.
        (UpstreamFailure(429, "too many tokens per minute"), (ErrorKind.RATE_LIMITED, 429, None)),
        # Context wording, the usual phrases or the table's own: OpenAI's code for it.
        (UpstreamFailure(400, "maximum context length is 8192", codes=("E1",)),
         (ErrorKind.CONTEXT_LENGTH, 400, "context_length_exceeded")),
        (UpstreamFailure(400, "the prompt is too long"),
         (ErrorKind.CONTEXT_LENGTH, 400, "context_length_exceeded")),
        # Statuses this upstream uses its own way.
        (UpstreamFailure(402, "billing"), (ErrorKind.RATE_LIMITED, 429, "insufficient_quota")),
        (UpstreamFailure(501, "not for this model"), (ErrorKind.BAD_REQUEST, 400, None)),
        (UpstreamFailure(404, "no model", codes=("3006",)), (ErrorKind.BAD_REQUEST, 404, "3006")),
        (UpstreamFailure(504, "slow"), (ErrorKind.TIMEOUT, 504, None)),
        # Everything else: the usual status mapping.
        (UpstreamFailure(503, "busy"), (ErrorKind.OVERLOADED, 502, None)),
        (UpstreamFailure(401, "who"), (ErrorKind.AUTH, 502, None)),
        (UpstreamFailure(422, "bad", codes=("x",)), (ErrorKind.BAD_REQUEST, 422, "x")),
        (UpstreamFailure(200, "failed inside a 200"), (ErrorKind.OVERLOADED, 502, None)),
    ])
    def test_kinds(self, failure: UpstreamFailure,
                   expected: tuple[ErrorKind, int, str | None]) -> None:
        err = classify(failure, TABLE)
        assert (err.kind, err.status, err.code) == expected
        assert err.upstream_status == failure.status
        assert err.message == failure.message

    def test_retry_after(self) -> None:
        body_wait = UpstreamFailure(429, "q", codes=("RESOURCE_EXHAUSTED",), retry_after=37.0)
        assert classify(body_wait, TABLE).retry_after == 37.0
        header = UpstreamFailure(429, "q", headers={"retry-after": "7"})
        assert classify(header, TABLE).retry_after == 7.0
        limits = UpstreamFailure(402, "q", headers={"x-ratelimit-remaining-requests": "0",
                                                    "x-ratelimit-reset-requests": "2s"})
        assert classify(limits, TABLE).retry_after == 2.0
        assert classify(UpstreamFailure(503, "x", retry_after=3.0)).retry_after == 3.0


# --- Messages and tools -------------------------------------------------------------------------


class TestMessages:
    def test_roles(self) -> None:
        msgs = messages_of({"messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "f", "arguments": {"a": 1}}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ]}, provider="X")
        assert [m.role for m in msgs] == ["system", "user", "assistant", "tool"]
        call = msgs[2].tool_calls[0]
        assert (call.id, call.name, call.arguments) == ("c1", "f", '{"a":1}')
        assert msgs[3].tool_call_id == "c1"
        assert msgs[0].where == "messages[0]"

    def test_legacy_function_call(self) -> None:
        (msg,) = messages_of({"messages": [{"role": "assistant", "function_call": {
            "name": "f", "arguments": "not json"}}]}, provider="X")
        assert msg.tool_calls[0].id is None
        err = refused(msg.tool_calls[0].arguments_object)
        assert err.param == "messages[0].function_call.arguments"

    @pytest.mark.parametrize(("body", "param", "words"), [
        ({"messages": []}, "messages", "non-empty"),
        ({"messages": ["hi"]}, "messages[0]", "object"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role",
         "'function' is not supported by X"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"type": "custom"}]}]},
         "messages[0].tool_calls[0]", "function tool calls"),
    ])
    def test_refused(self, body: dict[str, Any], param: str, words: str) -> None:
        err = refused(messages_of, body, provider="X")
        assert err.param == param
        assert words in err.message

    def test_arguments_object(self) -> None:
        (msg,) = messages_of({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "a", "function": {"name": "f", "arguments": "[1]"}},
            {"id": "b", "function": {"name": "f", "arguments": ""}}]}]}, provider="X")
        err = refused(msg.tool_calls[0].arguments_object)
        assert err.param == "messages[0].tool_calls[0].function.arguments"
        assert msg.tool_calls[1].arguments_object() == {}

    def test_parts(self) -> None:
        parts = parts_of([
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}},
        ], "messages[0]", provider="X")
        assert [p.kind for p in parts] == ["text", "image_url", "input_audio", "file"]
        assert parts[1].url == "data:image/png;base64,AAAA" and parts[1].detail == "low"
        assert parts[2].audio == ("UklG", "wav")
        assert parts[3].where == "messages[0].content[3]"
        assert parts_of("hi", "messages[0]", provider="X")[0].text == "hi"
        assert parts_of(None, "messages[0]", provider="X") == []

    def test_parts_refused(self) -> None:
        err = refused(parts_of, [{"type": "video_url"}], "messages[1]", provider="X")
        assert (err.param, "'video_url'" in err.message) == ("messages[1].content[0]", True)
        err = refused(parts_of, [{"type": "input_audio", "input_audio": {"data": "", "format":
                                                                         "wav"}}],
                      "messages[1]", provider="X", kinds=("text", "image_url"))
        assert err.param == "messages[1].content[0]"
        assert "X takes text, image_url parts here" in err.message
        err = refused(parts_of, [{"type": "file", "file": {"file_id": "file-1"}}],
                      "messages[0]", provider="X")
        assert "file ids" in err.message

    def test_text_of(self) -> None:
        content = [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "b"}]
        assert text_of(content, "messages[0]", provider="X", joiner="\n") == "a\nb"
        assert text_of(None, "messages[0]", provider="X") == ""
        err = refused(text_of, [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}],
                      "messages[2]", provider="X")
        assert err.param == "messages[2].content[0]"

    def test_data_url(self) -> None:
        url = data_url("data:image/png;base64,iVBORw0KGgo=")
        assert url is not None and url.media_type == "image/png"
        assert url.decode() == b"\x89PNG\r\n\x1a\n"
        assert data_url("https://example.com/a.png") is None
        assert data_url("data:image/png,raw") is None
        bad = data_url("data:image/png;base64,@@@")
        assert bad is not None and bad.decode() is None


class TestTools:
    TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                             "parameters": {"type": "object"}, "strict": True}}

    def test_function_tools(self) -> None:
        (tool,) = function_tools({"tools": [self.TOOL]}, provider="X")
        assert (tool.name, tool.description, tool.parameters, tool.strict) == (
            "get_weather", "Weather", {"type": "object"}, True)
        legacy = function_tools({"functions": [{"name": "f"}]}, provider="X", legacy=True)
        assert legacy[0].name == "f" and legacy[0].parameters is None
        assert function_tools({"functions": [{"name": "f"}]}, provider="X") == []

    def test_function_tools_refused(self) -> None:
        err = refused(function_tools, {"tools": [self.TOOL, {"type": "web_search"}]},
                      provider="X")
        assert err.param == "tools[1]" and "function tools only" in err.message
        err = refused(function_tools, {"tools": [{"type": "function", "function": {}}]},
                      provider="X")
        assert err.param == "tools[0].function"

    @pytest.mark.parametrize(("choice", "expected"), [
        (None, None), ("auto", ("auto", None)), ("none", ("none", None)),
        ("required", ("required", None)),
        ({"type": "function", "function": {"name": "f"}}, ("function", "f")),
    ])
    def test_tool_choice(self, choice: Any, expected: tuple[str, str | None] | None) -> None:
        tools = function_tools({"tools": [self.TOOL]}, provider="X")
        got = tool_choice_of({"tool_choice": choice}, tools, provider="X")
        assert (None if got is None else (got.mode, got.name)) == expected

    def test_tool_choice_refused(self) -> None:
        err = refused(tool_choice_of, {"tool_choice": "required"}, [], provider="X")
        assert err.param == "tool_choice" and "requires tools" in err.message
        err = refused(tool_choice_of, {"tool_choice": {"type": "allowed_tools"}}, [],
                      provider="X")
        assert "is not supported by X" in err.message
        legacy = tool_choice_of({"function_call": {"name": "f"}},
                                function_tools({"functions": [{"name": "f"}]}, provider="X",
                                               legacy=True), provider="X", legacy=True)
        assert legacy is not None and (legacy.mode, legacy.name) == ("function", "f")


# --- Answers and usage --------------------------------------------------------------------------


class TestAnswers:
    def test_usage_adds_up(self) -> None:
        assert openai_usage(10, 5) == {"prompt_tokens": 10, "completion_tokens": 5,
                                       "total_tokens": 15}
        # A total above its parts: the rest is prompt (a part we do not know of).
        assert openai_usage(10, 2, total=20)["prompt_tokens"] == 18
        assert openai_usage(37.0, None, cached=4, reasoning=0) == {
            "prompt_tokens": 37, "completion_tokens": 0, "total_tokens": 37,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 0}}
        assert openai_usage(True, "3", total=-1)["total_tokens"] == 0

    def test_tool_calls_and_messages(self) -> None:
        call = openai_tool_call("f", {"a": 1})
        assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
        assert call["function"] == {"name": "f", "arguments": '{"a":1}'}
        assert openai_tool_call("f", "{}", id="x", extra_content={"k": 1})["extra_content"] \
            == {"k": 1}
        assert assistant_message("", [call]) == {"role": "assistant", "content": None,
                                                 "tool_calls": [call]}
        assert assistant_message("", []) == {"role": "assistant", "content": ""}

    def test_finish_reason(self) -> None:
        table = {"END": "stop", "LIMIT": "length"}
        assert openai_finish_reason("LIMIT", table) == "length"
        assert openai_finish_reason("NEW_ONE", table) == "stop"
        assert openai_finish_reason("END", table, tool_calls=True) == "tool_calls"
        assert openai_finish_reason("LIMIT", table, tool_calls=True) == "length"

    def test_request_fields(self) -> None:
        assert stop_of({"stop": "x"}) == ["x"]
        assert stop_of({"stop": []}) is None
        assert refused(stop_of, {"stop": [1]}).param == "stop"
        assert embedding_texts({"input": "a"}, provider="X") == ["a"]
        assert refused(embedding_texts, {"input": [[1, 2]]}, provider="X").param == "input"
        answer = embeddings_answer([[1.0], [2.0]], model="m", prompt_tokens=3,
                                   encoding="base64")
        assert [d["index"] for d in answer["data"]] == [0, 1]
        assert answer["data"][0]["embedding"] == "AACAPw=="
        assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


# --- StreamAssembler ----------------------------------------------------------------------------


def deltas(chunks: list[dict[str, Any]]) -> list[Any]:
    return [(c["choices"][0]["index"], c["choices"][0]["delta"],
             c["choices"][0]["finish_reason"]) if c["choices"] else c.get("usage")
            for c in chunks]


class TestStreamAssembler:
    def test_one_answer(self) -> None:
        out = StreamAssembler("m", include_usage=True, provider="X")
        chunks = out.text("Hel") + out.text("lo")
        chunks += out.tool_call("f", {"a": 1}, id="c1")
        out.usage = openai_usage(3, 2)
        chunks += out.end()
        assert deltas(chunks) == [
            (0, {"role": "assistant", "content": ""}, None),
            (0, {"content": "Hel"}, None),
            (0, {"content": "lo"}, None),
            (0, {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                 "function": {"name": "f", "arguments": '{"a":1}'}}]}, None),
            (0, {}, "tool_calls"),
            {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        ]
        assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
        assert out.complete

    def test_fragments_keep_their_index(self) -> None:
        out = StreamAssembler("m", include_usage=False, provider="X")
        chunks = out.tool_call_delta(0, id="a", name="f", arguments='{"x"')
        chunks += out.tool_call_delta(0, arguments=":1}")
        chunks += out.tool_call_delta(1, id="b", name="g")
        chunks += out.tool_call_delta(None, arguments="{}")  # continues the last call
        chunks += out.finish("stop")
        assert out.knows_call(1) and not out.knows_call(2)
        assert [d[1].get("tool_calls") for d in deltas(chunks)[1:-1]] == [
            [{"index": 0, "id": "a", "type": "function",
              "function": {"name": "f", "arguments": '{"x"'}}],
            [{"index": 0, "function": {"arguments": ":1}"}}],
            [{"index": 1, "id": "b", "type": "function", "function": {"name": "g",
                                                                      "arguments": ""}}],
            [{"index": 1, "function": {"arguments": "{}"}}],
        ]
        assert deltas(chunks)[-1] == (0, {}, "tool_calls")
        assert out.end() == []  # no usage asked for, every choice finished

    def test_choices_and_nothing_said(self) -> None:
        out = StreamAssembler("m", include_usage=True, provider="X", logprobs=True)
        first = out.text("A", index=1, logprobs={"content": []})
        assert first[1]["choices"][0]["logprobs"] == {"content": []}
        assert first[0]["choices"][0]["logprobs"] is None
        assert not out.complete
        assert deltas(out.finish("length", index=1)) == [(1, {}, "length")]
        assert out.complete and out.open_choices == []
        empty = StreamAssembler("m", include_usage=True, provider="X")
        assert deltas(empty.end("length")) == [
            (0, {"role": "assistant", "content": ""}, None), (0, {}, "length")]

    def test_upstream_id(self) -> None:
        out = StreamAssembler("m", include_usage=False, provider="X")
        out.id = "upstream-1"
        assert not out.started
        assert out.start()[0]["id"] == "upstream-1"
        assert out.started
        with pytest.raises(RuntimeError):
            out.id = "late"


class Upstream:
    """An SSE upstream on 127.0.0.1 whose body and cut point each test sets."""

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.cut = False
        self.hold = False
        self.disconnected = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for event in self.events:
                await resp.write(event)
            if self.cut:
                assert request.transport is not None
                request.transport.close()
                return resp
            while self.hold:
                await asyncio.sleep(0.05)
                await resp.write(b": keep-alive\n\n")
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        finally:
            self.disconnected.set()
        return resp


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, str]:
    fake = Upstream()
    app = web.Application()
    app.router.add_post("/stream", fake.handle)
    server = await aiohttp_server(app)
    return fake, str(server.make_url("/stream"))


def sse(data: Any) -> bytes:
    return b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"


async def translate(url: str, *, done: bytes | None = b"[DONE]",
                    session: aiohttp.ClientSession) -> list[dict[str, Any]]:
    """A tiny plugin stream: each event's "text" is a piece of choice 0."""
    resp = await session.post(url)
    out = StreamAssembler("m", include_usage=False, provider="Up")
    chunks: list[dict[str, Any]] = []
    async with out.read(resp, done=done) as events:
        async for event in events:
            chunks += out.text(event.data["text"])
            if event.data.get("end"):
                chunks += out.finish("stop")
    return chunks + out.end()


class TestReading:
    async def test_done_marker(self, upstream: tuple[Upstream, str]) -> None:
        fake, url = upstream
        fake.events = [sse({"text": "a"}), b": comment\n\n", sse({"text": "b"}), sse(b"[DONE]")]
        async with aiohttp.ClientSession() as session:
            chunks = await translate(url, session=session)
            assert [d[1] for d in deltas(chunks)] == [
                {"role": "assistant", "content": ""}, {"content": "a"}, {"content": "b"}, {}]
            assert session.connector is not None
            assert len(session.connector._acquired) == 0  # type: ignore[attr-defined]

    async def test_ndjson(self, upstream: tuple[Upstream, str]) -> None:
        # One JSON object a line (Ollama's streams), a line split across writes, no marker.
        fake, url = upstream
        fake.events = [b'{"text": "a"}\n{"te', b'xt": "b", "end": true}\n\n']
        async with aiohttp.ClientSession() as session:
            resp = await session.post(url)
            out = StreamAssembler("m", include_usage=False, provider="Up")
            chunks: list[dict[str, Any]] = []
            async with out.read(resp, done=None, framing="ndjson") as events:
                async for event in events:
                    chunks += out.text(event.data["text"])
                    if event.data.get("end"):
                        chunks += out.finish("length")
        assert [d[1:] for d in deltas(chunks)] == [
            ({"role": "assistant", "content": ""}, None), ({"content": "a"}, None),
            ({"content": "b"}, None), ({}, "length")]

    async def test_finish_without_marker_is_complete(self,
                                                     upstream: tuple[Upstream, str]) -> None:
        fake, url = upstream
        fake.events = [sse({"text": "a", "end": True})]
        async with aiohttp.ClientSession() as session:
            chunks = await translate(url, done=None, session=session)
        assert deltas(chunks)[-1] == (0, {}, "stop")

    @pytest.mark.parametrize(("events", "cut", "words"), [
        ([sse({"text": "a"})], False, "the stream ended before its end"),
        ([sse({"text": "a"})], True, "the stream broke"),
        ([sse({"text": "a"}), sse(b"{oops")], False, "not valid JSON"),
        ([sse([1, 2])], False, "not a JSON object"),
    ])
    async def test_protocol_errors(self, upstream: tuple[Upstream, str], events: list[bytes],
                                   cut: bool, words: str) -> None:
        fake, url = upstream
        fake.events, fake.cut = events, cut
        async with aiohttp.ClientSession() as session:
            with pytest.raises(UpstreamError) as info:
                await translate(url, session=session)
        assert info.value.kind is ErrorKind.PROTOCOL
        assert info.value.message.startswith("Up: ")
        assert words in info.value.message

    async def test_aclose_closes_the_connection(self, upstream: tuple[Upstream, str]) -> None:
        fake, url = upstream
        fake.events, fake.hold = [sse({"text": "a"})], True

        async def stream(session: aiohttp.ClientSession) -> AsyncIterator[dict[str, Any]]:
            resp = await session.post(url)
            out = StreamAssembler("m", include_usage=False, provider="Up")
            async with out.read(resp) as events:
                async for event in events:
                    for chunk in out.text(event.data["text"]):
                        yield chunk

        async with aiohttp.ClientSession() as session:
            chunks = stream(session)
            await chunks.__anext__()
            started = time.monotonic()
            await chunks.aclose()  # type: ignore[attr-defined]
            await asyncio.wait_for(fake.disconnected.wait(), 5)
            assert time.monotonic() - started < 5
            assert session.connector is not None
            assert len(session.connector._acquired) == 0  # type: ignore[attr-defined]
