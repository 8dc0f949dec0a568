"""The offline mock provider: tool calls, structured outputs and its bounds, driven with the
openai SDK through a real aiproxy server (the demo's provider has no upstream to fake)."""

from __future__ import annotations

import datetime
import enum
import json
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import jsonschema
import openai
import pydantic
import pytest
import yaml

from aiproxy.provider import ChatRequest, UpstreamError
from aiproxy_providers.mock import (
    MAX_EMBEDDING_DIMENSIONS,
    MockProvider,
    schema_instance,
)

ROOT = Path(__file__).resolve().parent.parent
MODEL = "demo/echo"

WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False,
                   "properties": {"city": {"type": "string"},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7},
                                  "note": {"type": "string"}},
                   "required": ["city", "unit", "days"]}}}
TIME: dict[str, Any] = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "string", "format": "date-time"}}, "required": ["zone"]}}}
QUESTION = {"role": "user", "content": "Weather in Paris?"}


@pytest.fixture
async def mock_proxy(start_proxy):
    return await start_proxy({"models": [{"name": MODEL, "provider": "mock"}]})


def _assistant_call(message: Any) -> dict[str, Any]:
    call = message.tool_calls[0]
    return {"role": "assistant", "content": None, "tool_calls": [{
        "id": call.id, "type": "function",
        "function": {"name": call.function.name, "arguments": call.function.arguments}}]}


class TestToolCalls:
    # https://platform.openai.com/docs/api-reference/chat/create#chat-create-tool_choice and
    # https://platform.openai.com/docs/guides/function-calling (finish_reason "tool_calls").

    async def test_calls_the_first_tool_with_valid_arguments(self, mock_proxy):
        answer = await mock_proxy.client.chat.completions.create(
            model=MODEL, messages=[QUESTION], tools=[WEATHER, TIME])
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        call = choice.message.tool_calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name == "get_weather"
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, WEATHER["function"]["parameters"])
        assert arguments == {"city": "mock", "unit": "celsius", "days": 1}

    async def test_tool_choice_named_none_and_required(self, mock_proxy):
        named = await mock_proxy.client.chat.completions.create(
            model=MODEL, messages=[QUESTION], tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_time"}})
        call = named.choices[0].message.tool_calls[0]
        assert call.function.name == "get_time"
        assert json.loads(call.function.arguments) == {"zone": "2024-01-01T00:00:00Z"}
        none = await mock_proxy.client.chat.completions.create(
            model=MODEL, messages=[QUESTION], tools=[WEATHER], tool_choice="none")
        assert none.choices[0].finish_reason == "stop"
        assert none.choices[0].message.content == "You said: Weather in Paris?"
        with pytest.raises(openai.BadRequestError) as info:
            await mock_proxy.client.chat.completions.create(
                model=MODEL, messages=[QUESTION], tools=[WEATHER],
                tool_choice={"type": "function", "function": {"name": "nope"}})
        assert info.value.body["param"] == "tool_choice"

    async def test_answers_text_after_the_tool_result(self, mock_proxy):
        first = await mock_proxy.client.chat.completions.create(
            model=MODEL, messages=[QUESTION], tools=[WEATHER])
        call = first.choices[0].message.tool_calls[0]
        history = [QUESTION, _assistant_call(first.choices[0].message),
                   {"role": "tool", "tool_call_id": call.id, "content": "21C, clear"}]
        second = await mock_proxy.client.chat.completions.create(
            model=MODEL, messages=history, tools=[WEATHER])
        assert second.choices[0].finish_reason == "stop"
        assert second.choices[0].message.tool_calls is None
        assert second.choices[0].message.content == "You said: Weather in Paris?"
        # A forced choice still calls (as OpenAI does): instructor's re-ask relies on it.
        forced = await mock_proxy.client.chat.completions.create(
            model=MODEL, messages=history, tools=[WEATHER], tool_choice="required")
        assert forced.choices[0].finish_reason == "tool_calls"

    async def test_streamed_tool_call_has_openai_delta_shape(self, mock_proxy):
        stream = await mock_proxy.client.chat.completions.create(
            model=MODEL, messages=[QUESTION], tools=[WEATHER], stream=True,
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        opening = deltas[0].tool_calls[0]
        assert deltas[0].role == "assistant"
        assert (opening.index, opening.type, opening.function.name) == (0, "function",
                                                                        "get_weather")
        assert opening.id.startswith("call_") and opening.function.arguments == ""
        pieces = [d.tool_calls[0] for d in deltas[1:] if d.tool_calls]
        assert len(pieces) > 1
        assert all(p.index == 0 and p.id is None and p.function.name is None for p in pieces)
        arguments = json.loads("".join(p.function.arguments for p in pieces))
        jsonschema.validate(arguments, WEATHER["function"]["parameters"])
        finals = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finals[-1] == "tool_calls" and set(finals[:-1]) == {None}
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


# --- Structured outputs ----------------------------------------------------------------------
# https://platform.openai.com/docs/guides/structured-outputs: response_format json_schema
# {name, schema, strict}; the SDK's parse() turns the answer into the pydantic model.


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Item(pydantic.BaseModel):
    name: str
    quantity: int = pydantic.Field(ge=3, le=9)
    price: float = pydantic.Field(gt=0.5, lt=0.75)
    tags: list[str] = pydantic.Field(min_length=2)


class Node(pydantic.BaseModel):
    value: int
    child: Node | None
    children: list[Node]


class Order(pydantic.BaseModel):
    id: uuid.UUID
    placed: datetime.datetime
    colour: Colour
    kind: Literal["retail", "wholesale"]
    items: list[Item]
    best: Item
    note: str | None
    tree: Node
    paid: bool
    code: str = pydantic.Field(pattern=r"^[A-Z]$")


class Lookup(pydantic.BaseModel):
    city: str
    days: int


class TestStructuredOutputs:
    async def test_parse_with_a_pydantic_model(self, mock_proxy):
        completion = await mock_proxy.client.beta.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": "an order"}],
            response_format=Order)
        parsed = completion.choices[0].message.parsed
        assert isinstance(parsed, Order)
        assert parsed.best.quantity == 3 and 0.5 < parsed.best.price < 0.75
        assert parsed.colour is Colour.RED and parsed.kind == "retail"
        assert parsed.tree.child is None or isinstance(parsed.tree.child, Node)

    async def test_parse_with_a_strict_tool(self, mock_proxy):
        completion = await mock_proxy.client.chat.completions.parse(
            model=MODEL, messages=[QUESTION], tools=[openai.pydantic_function_tool(Lookup)])
        call = completion.choices[0].message.tool_calls[0]
        assert isinstance(call.function.parsed_arguments, Lookup)

    async def test_streamed_json_schema_answer(self, mock_proxy):
        schema = Item.model_json_schema()
        stream = await mock_proxy.client.chat.completions.create(
            model=MODEL, messages=[QUESTION], stream=True, response_format={
                "type": "json_schema", "json_schema": {"name": "item", "schema": schema}})
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        Item.model_validate_json(text)

    async def test_json_object(self, mock_proxy):
        answer = await mock_proxy.client.chat.completions.create(
            model=MODEL, messages=[QUESTION], response_format={"type": "json_object"})
        assert json.loads(answer.choices[0].message.content or "") == {
            "text": "You said: Weather in Paris?"}

    async def test_unbuildable_schema_is_a_400(self, mock_proxy):
        recursive = {"$defs": {"N": {"type": "object", "required": ["n"],
                                     "properties": {"n": {"$ref": "#/$defs/N"}}}},
                     "$ref": "#/$defs/N"}
        with pytest.raises(openai.BadRequestError) as info:
            await mock_proxy.client.chat.completions.create(
                model=MODEL, messages=[QUESTION], response_format={
                    "type": "json_schema", "json_schema": {"name": "n", "schema": recursive}})
        assert info.value.body["param"] == "response_format.json_schema.schema"
        assert "contains itself" in info.value.message

    async def test_parse_works_against_the_offline_demo(self, start_proxy):
        config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
        proxy = await start_proxy(config)
        for model in ("demo/echo-big", "demo/fixed"):
            completion = await proxy.client.beta.chat.completions.parse(
                model=model, messages=[QUESTION], response_format=Lookup)
            assert completion.choices[0].message.parsed == Lookup(city="mock", days=0)


SCHEMAS: list[dict[str, Any]] = [
    {"type": "integer", "multipleOf": 7, "minimum": 10},
    {"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 1.5},
    {"type": ["string", "null"], "minLength": 6, "maxLength": 8},
    {"type": "string", "maxLength": 2},
    {"type": "string", "pattern": "^[0-9]+$"},
    {"type": "array", "minItems": 3, "items": {"const": 1}},
    {"type": "array", "prefixItems": [{"type": "boolean"}, {"type": "null"}], "minItems": 2},
    {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
               {"required": ["b"], "properties": {"b": {"enum": [2, 3]}}}]},
    {"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"type": "boolean"}}, "$ref": "#/$defs/A"},
    {"type": "object", "minProperties": 2, "properties": {"x": {"type": "null"}, "y": {}}},
    {"anyOf": [{"type": "string", "pattern": "^q+$"}, {"type": "integer"}]},
    {"oneOf": [{"type": "object", "required": ["k"]}, {"type": "string"}]},
    Order.model_json_schema(),
    Node.model_json_schema(),
]


class TestSchemaInstance:
    @pytest.mark.parametrize("schema", SCHEMAS)
    def test_instance_validates(self, schema):
        jsonschema.validate(schema_instance(schema, "s"), schema)

    def test_recursive_model_ends_in_its_optional_branch(self):
        assert schema_instance(Node.model_json_schema(), "s") == {
            "value": 0, "child": None, "children": []}

    @pytest.mark.parametrize(("schema", "why"), [
        ({"type": "array", "minItems": 10**9}, "minItems"),
        ({"type": "string", "minLength": 10**9}, "minLength"),
        ({"type": "string", "pattern": "^zz+$"}, "no string matching"),
        ({"type": "integer", "minimum": 3, "maximum": 2}, "no number"),
        ({"type": "array", "minItems": 200, "items": {"type": "array", "minItems": 200}},
         "steps"),
        ({"$ref": "https://example.com/s.json"}, "only local $ref"),
        ({"type": "string", "pattern": "("}, "not a regular expression"),
        (False, "object or true"),
    ])
    def test_unbuildable_or_too_large_is_a_bad_request(self, schema, why):
        started = time.monotonic()
        with pytest.raises(UpstreamError) as info:
            schema_instance(schema, "p")
        assert info.value.status == 400 and info.value.param == "p"
        assert why in info.value.message
        assert time.monotonic() - started < 1.0


# --- Bounds on what a client can make the mock allocate --------------------------------------


class TestBounds:
    async def test_embedding_dimensions_are_bounded(self, mock_proxy):
        started = time.monotonic()
        with pytest.raises(openai.BadRequestError) as info:
            # Under the core's own bound (65536), over the mock's.
            await mock_proxy.client.embeddings.create(model=MODEL, input="x",
                                                      dimensions=50_000)
        assert time.monotonic() - started < 2.0
        assert info.value.body["param"] == "dimensions"
        assert str(MAX_EMBEDDING_DIMENSIONS) in info.value.message
        ok = await mock_proxy.client.embeddings.create(
            model=MODEL, input="x", dimensions=MAX_EMBEDDING_DIMENSIONS, encoding_format="float")
        assert len(ok.data[0].embedding) == MAX_EMBEDDING_DIMENSIONS

    async def test_inputs_times_dimensions_is_bounded(self, mock_proxy):
        with pytest.raises(openai.BadRequestError) as info:
            await mock_proxy.client.embeddings.create(model=MODEL, input=["x"] * 2048,
                                                      dimensions=4096)
        assert info.value.body["param"] == "dimensions"
        with pytest.raises(openai.BadRequestError) as info:
            await mock_proxy.client.embeddings.create(model=MODEL, input=["x"] * 2049)
        assert info.value.body["param"] == "input"

    async def test_n_choices_and_its_bound(self, mock_proxy):
        answer = await mock_proxy.client.chat.completions.create(
            model=MODEL, messages=[QUESTION], n=3)
        assert [c.index for c in answer.choices] == [0, 1, 2]
        assert answer.usage is not None and answer.usage.completion_tokens == 3 * 5
        stream = await mock_proxy.client.chat.completions.create(
            model=MODEL, messages=[QUESTION], n=2, stream=True)
        texts = ["", ""]
        async for chunk in stream:
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
        assert texts == ["You said: Weather in Paris?"] * 2
        with pytest.raises(openai.BadRequestError) as info:
            await mock_proxy.client.chat.completions.create(
                model=MODEL, messages=[QUESTION], n=1_000_000)
        assert info.value.body["param"] == "n"

    async def test_max_tokens_cuts_the_answer(self, mock_proxy):
        answer = await mock_proxy.client.chat.completions.create(
            model=MODEL, messages=[QUESTION], max_tokens=2)
        assert answer.choices[0].message.content == "You said:"
        assert answer.choices[0].finish_reason == "length"
        huge = await mock_proxy.client.chat.completions.create(
            model=MODEL, messages=[QUESTION], max_completion_tokens=2**31 - 1)
        assert huge.choices[0].finish_reason == "stop"
        with pytest.raises(openai.BadRequestError) as info:
            await mock_proxy.client.chat.completions.create(
                model=MODEL, messages=[QUESTION], max_tokens=0)
        assert info.value.body["param"] == "max_tokens"

    def test_configured_dimensions_are_bounded(self):
        from aiproxy.config import ConfigError, ModelConfig

        with pytest.raises(ConfigError):
            MockProvider(ModelConfig(name="m", provider="mock",
                                     options={"dimensions": 10**9}), None)  # type: ignore[arg-type]

    async def test_plain_chat_is_unchanged(self):
        from aiproxy.config import ModelConfig

        provider = MockProvider(ModelConfig(name="m", provider="mock"), None)  # type: ignore[arg-type]
        body = {"model": "m", "messages": [{"role": "user", "content": "hi there"}]}
        answer = await provider.chat(ChatRequest(body=body, raw=json.dumps(body).encode()))
        assert answer.data["choices"] == [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                           "message": {"role": "assistant",
                                                       "content": "You said: hi there"}}]
