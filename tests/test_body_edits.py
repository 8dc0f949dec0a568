"""The byte-level edits of a client's body (the upstream model id, the usage option of a
stream) mean exactly what re-encoding the parsed body would: the upstream parses the same
object either way, and where an edit cannot be exact the body is re-encoded."""

from __future__ import annotations

import json
import random
from typing import Any

import attrs
import orjson
import pytest

from aiproxy.provider import ChatRequest


def request(raw: bytes, stream: bool = False) -> ChatRequest:
    return ChatRequest(body=orjson.loads(raw), raw=raw, stream=stream)


def expected(raw: bytes, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(raw)
    body.update(changes)
    return body


@pytest.mark.parametrize("raw", [
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
    b'{ "model" :\t"gpt-4o-mini" ,\n "messages": [{"role": "user", "content": "hi"}]}',
    b'{"messages":[{"role":"user","content":"say \\"model\\" twice"}],"model":"gpt-4o-mini"}',
    # Edits that cannot be exact fall back to re-encoding: "model" also as a value, as a
    # nested key, a \u escape that may spell a key, another escaping of the model's name.
    b'{"model":"gpt-4o-mini","messages":[{"role":"model","content":"hi"}]}',
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
    b'"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",'
    b'"properties":{"model":{"type":"string"}}}}}]}',
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"caf\\u00e9"}]}',
    b'{"model":"openai\\/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
])
def test_upstream_body_names_the_upstream_model(raw: bytes) -> None:
    sent = request(raw).upstream_body("upstream/id-\u00e9")
    assert orjson.loads(sent) == expected(raw, model="upstream/id-\u00e9")


def test_an_unchanged_model_sends_the_clients_bytes() -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    assert request(raw).upstream_body("m") is raw


def test_overrides_are_encoded_with_the_body() -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    sent = request(raw).upstream_body("u", top_k=3)
    assert orjson.loads(sent) == expected(raw, model="u", top_k=3)


@pytest.mark.parametrize("raw", [
    b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}',
    b'  {"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"m","stream":true,"stream_options":{"include_usage":false},'
    b'"messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"m","stream":true,"stream_options":{},"messages":[{"role":"user",'
    b'"content":"hi"}]}',
    b'{"model":"m","stream":true,"messages":[{"role":"user","content":"caf\\u00e9"}]}',
])
def test_streams_ask_for_usage(raw: bytes) -> None:
    asked = request(raw, stream=True).with_usage_requested()
    want = expected(raw)
    want["stream_options"] = {**(want.get("stream_options") or {}), "include_usage": True}
    assert asked.body == want
    assert orjson.loads(asked.raw) == want
    assert asked.include_usage and asked.stream
    # ... and the model id goes in as well, on top of that edit.
    assert orjson.loads(asked.upstream_body("u")) == {**want, "model": "u"}


def test_asking_for_usage_keeps_every_other_field() -> None:
    # with_usage_requested builds the request field by field: a new field must be added there
    # (and here, set to other than its default).
    assert [f.name for f in attrs.fields(ChatRequest)] == ["body", "raw", "stream",
                                                           "continuation"]
    raw = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    req = attrs.evolve(request(raw, stream=True), continuation=True)
    asked = req.with_usage_requested()
    assert asked.stream and asked.continuation


def test_a_stream_that_asked_for_usage_is_sent_as_it_came() -> None:
    raw = b'{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}'
    req = request(raw, stream=True)
    assert req.with_usage_requested() is req


def test_random_bodies_parse_the_same_either_way() -> None:
    """Bodies with "model" strings in random places, written with random whitespace."""
    rng = random.Random(17)
    words = ["model", "stream_options", "hi", "\u00e9t\u00e9", 'quote " model', "m/x"]

    def value(depth: int) -> Any:
        pick = rng.random()
        if depth > 2 or pick < 0.4:
            return rng.choice([*words, 1, 2.5, True, None])
        if pick < 0.7:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(words): value(depth + 1) for _ in range(rng.randint(0, 3))}

    for _ in range(300):
        body: dict[str, Any] = {"model": rng.choice(words), "messages": value(1)}
        for _ in range(rng.randint(0, 3)):
            body[rng.choice(words[1:])] = value(1)
        if not isinstance(body.get("stream_options", {}), dict):
            body["stream_options"] = {}  # validated requests have an object there
        raw = json.dumps(body, ensure_ascii=rng.random() < 0.3,
                         indent=rng.choice([None, 1]),
                         separators=rng.choice([None, (",", ":")])).encode()
        req = request(raw, stream=True)
        assert orjson.loads(req.upstream_body("up-\u00e9")) == {**body, "model": "up-\u00e9"}
        asked = req.with_usage_requested()
        assert orjson.loads(asked.raw) == asked.body


def test_the_model_is_written_into_the_clients_bytes() -> None:
    """No re-encoding where the edit is exact: the rest of the body stays byte for byte."""
    raw = b'{ "model" :\t"gpt-4o-mini" ,\n "messages": [{"role": "user", "content": "hi"}]}'
    assert request(raw).upstream_body("u") == raw.replace(b'"gpt-4o-mini"', b'"u"')
    # Escapes other than \u (a newline, a quote) spell no key another way: still edited.
    escaped = b'{"model":"m","messages":[{"role":"user","content":"a\\nb \\"q\\" c\\\\d"}]}'
    assert request(escaped).upstream_body("u") == escaped.replace(b'"m"', b'"u"', 1)
    stream = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    assert request(stream, stream=True).with_usage_requested().raw == (
        b'{"stream_options":{"include_usage":true},' + stream[1:])


def test_the_usage_option_is_written_in_without_looking_through_the_body() -> None:
    """The parsed body has no stream_options, so adding it first is exact whatever the rest
    holds: the words in a prompt, \\u escapes. An empty object is re-encoded instead."""
    from aiproxy.provider import _add_usage_option

    raw = (b'{"model":"m","stream":true,"messages":[{"role":"user","content":'
           b'"what is \\"stream_options\\"? caf\\u00e9"}]}')
    asked = request(raw, stream=True).with_usage_requested()
    assert asked.raw == b'{"stream_options":{"include_usage":true},' + raw[1:]
    assert orjson.loads(asked.raw) == asked.body
    assert asked.body["stream_options"] == {"include_usage": True}
    for empty in (b"{}", b"{ \n }", b"  {}"):
        assert _add_usage_option(empty) is None
