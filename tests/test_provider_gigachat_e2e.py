"""GigaChat end to end: the openai SDK → aiproxy → a fake Sber OAuth + GigaChat REST v1.

The fake answers in the shapes of Sber's reference,
https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/post-chat (answers with a
function call carry ``functions_state_id``; streams end with ``data: [DONE]``).
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from aiohttp import web
from pydantic import BaseModel

from aiproxy_providers.gigachat import GREEDY_TEMPERATURE
from tests.conftest import StartProxy
from tests.provider_fakes import FakeGigaChat, giga_completion, json_reply

GIGA = "gigachat/GigaChat-2-Max"
REASONING = "gigachat/GigaChat-2-Reasoning"
STATE = "77d3fb14-457a-46ba-937e-8d856156d003"  # what giga_completion answers with a call
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def gigachat(aiohttp_server: Any) -> FakeGigaChat:
    return await FakeGigaChat.start(aiohttp_server)


async def post_chat(proxy: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A raw chat request (for values the SDK's types would not let through)."""
    resp = await proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                 json=body)
    return resp.status, json.loads(await resp.text())


class TestGreedyDecoding:
    """Defect 2. post-chat: temperature has exclusiveMinimum 0 (0 is a 422); "from 0 to 0.001"
    resets temperature and top_p to the most deterministic answer."""

    async def test_temperature_zero_becomes_the_documented_deterministic_value(
            self, start_proxy: StartProxy, gigachat: FakeGigaChat) -> None:
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        answer = await proxy.client.chat.completions.create(model=GIGA, messages=HI,
                                                            temperature=0)
        assert answer.choices[0].message.content == "Hello from GigaChat"
        sent = gigachat.calls("chat/completions")[0].body
        assert sent["temperature"] == GREEDY_TEMPERATURE
        assert 0 < sent["temperature"] < 0.001

    async def test_other_temperatures_and_top_p_pass_unchanged(
            self, start_proxy: StartProxy, gigachat: FakeGigaChat) -> None:
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        await proxy.client.chat.completions.create(model=GIGA, messages=HI,
                                                   temperature=0.7, top_p=0)
        sent = gigachat.calls("chat/completions")[0].body
        assert (sent["temperature"], sent["top_p"]) == (0.7, 0)


class City(BaseModel):
    name: str
    population: int


class TestJsonSchema:
    """Defect 12. GigaChat's response_format is {type: json_schema, schema, strict}: the schema
    at the top level, not OpenAI's json_schema: {name, schema, strict} (the request the
    official SDK sends, ai-forever/gigachat models/response_format.py)."""

    SCHEMA: dict[str, Any] = {"type": "object",
                              "properties": {"name": {"type": "string"},
                                             "population": {"type": "integer"}},
                              "required": ["name", "population"], "additionalProperties": False}

    async def test_json_schema_is_translated(self, start_proxy: StartProxy,
                                             gigachat: FakeGigaChat) -> None:
        gigachat.then(json_reply(giga_completion('{"name": "Paris", "population": 2100000}')))
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        answer = await proxy.client.chat.completions.create(
            model=GIGA, messages=HI, response_format={
                "type": "json_schema", "json_schema": {
                    "name": "city", "description": "A city", "strict": True,
                    "schema": self.SCHEMA}})
        assert json.loads(answer.choices[0].message.content or "") == {
            "name": "Paris", "population": 2100000}
        sent = gigachat.calls("chat/completions")[0].body
        assert sent["response_format"] == {"type": "json_schema", "schema": self.SCHEMA,
                                           "strict": True}

    async def test_sdk_parse_with_a_pydantic_model(self, start_proxy: StartProxy,
                                                   gigachat: FakeGigaChat) -> None:
        gigachat.then(json_reply(giga_completion('{"name": "Tver", "population": 400000}')))
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        answer = await proxy.client.chat.completions.parse(model=GIGA, messages=HI,
                                                           response_format=City)
        assert answer.choices[0].message.parsed == City(name="Tver", population=400000)
        sent = gigachat.calls("chat/completions")[0].body["response_format"]
        assert set(sent) == {"type", "schema", "strict"}
        assert sent["type"] == "json_schema"
        assert sent["schema"]["properties"] == City.model_json_schema()["properties"]

    async def test_json_schema_without_a_schema_is_a_400(self, start_proxy: StartProxy,
                                                         gigachat: FakeGigaChat) -> None:
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        status, body = await post_chat(proxy, {
            "model": GIGA, "messages": HI,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}})
        assert status == 400
        assert body["error"]["param"] == "response_format.json_schema.schema"
        assert gigachat.seen == []


class TestReasoningEffort:
    """Defect 19. The v1 chat request's reasoning_effort (low, medium, high) for reasoning
    models (ai-forever/gigachat models/chat.py, Chat.reasoning_effort)."""

    @pytest.mark.parametrize(("effort", "sent"), [
        ("low", "low"), ("medium", "medium"), ("high", "high"),
        ("minimal", "low"), ("xhigh", "high"),
    ])
    async def test_reasoning_effort_is_sent(self, start_proxy: StartProxy,
                                            gigachat: FakeGigaChat, effort: str,
                                            sent: str) -> None:
        proxy = await start_proxy({"models": [gigachat.model(REASONING)]})
        await proxy.client.chat.completions.create(model=REASONING, messages=HI,
                                                   reasoning_effort=effort)
        body = gigachat.calls("chat/completions")[0].body
        assert body["reasoning_effort"] == sent
        assert body["model"] == "GigaChat-2-Reasoning"

    async def test_none_cannot_be_expressed(self, start_proxy: StartProxy,
                                            gigachat: FakeGigaChat) -> None:
        proxy = await start_proxy({"models": [gigachat.model(REASONING)]})
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.chat.completions.create(model=REASONING, messages=HI,
                                                       reasoning_effort="none")
        assert info.value.body["param"] == "reasoning_effort"
        assert gigachat.seen == []


class TestFunctionsStateId:
    """Defect 20. post-chat: an answer with a function call carries functions_state_id, to be
    sent back on that assistant message in the next request. It travels in the tool call id."""

    async def round_trip(self, proxy: Any, model: str, *, stream: bool = False) -> Any:
        """Ask with tools, answer the call, return the SDK's tool call."""
        if stream:
            chunks = await proxy.client.chat.completions.create(
                model=model, messages=[QUESTION], tools=[WEATHER_TOOL], stream=True)
            calls = [tc for chunk in [c async for c in chunks] if chunk.choices
                     for tc in chunk.choices[0].delta.tool_calls or []]
            [call] = calls
            assistant = {"role": "assistant", "content": None, "tool_calls": [{
                "id": call.id, "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments}}]}
        else:
            first = await proxy.client.chat.completions.create(
                model=model, messages=[QUESTION], tools=[WEATHER_TOOL])
            [call] = first.choices[0].message.tool_calls
            assistant = first.choices[0].message.model_dump(exclude_none=True)
        await proxy.client.chat.completions.create(model=model, tools=[WEATHER_TOOL], messages=[
            QUESTION, assistant,
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}])
        return call

    def sent_back(self, gigachat: FakeGigaChat) -> dict[str, Any]:
        second = gigachat.calls("chat/completions")[1].body
        assert second["messages"][0] == QUESTION
        assert second["messages"][2] == {"role": "function", "name": "get_weather",
                                         "content": '{"temp_c": 21}'}
        message: dict[str, Any] = second["messages"][1]
        return message

    async def test_state_survives_an_sdk_round_trip(self, start_proxy: StartProxy,
                                                    gigachat: FakeGigaChat) -> None:
        gigachat.then(json_reply(giga_completion("", finish="function_call", function_call={
            "name": "get_weather", "arguments": {"city": "Paris"}})))
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        call = await self.round_trip(proxy, GIGA)
        assert call.id == "call_gsu" + STATE.replace("-", "")
        assert len(call.id) <= 40  # OpenAI's limit on a tool call id, should the history move on
        assert self.sent_back(gigachat) == {
            "role": "assistant", "content": "", "functions_state_id": STATE,
            "function_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}

    async def test_state_from_a_stream(self, start_proxy: StartProxy,
                                       gigachat: FakeGigaChat) -> None:
        # The streamed call's delta carries functions_state_id beside function_call.
        gigachat.then(FakeGigaChat.tool_call_stream("get_weather", {"city": "Paris"}))
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        call = await self.round_trip(proxy, GIGA, stream=True)
        assert call.id == "call_gsu" + STATE.replace("-", "")
        assert self.sent_back(gigachat)["functions_state_id"] == STATE

    async def test_a_state_that_is_not_a_uuid_is_kept_exactly(
            self, start_proxy: StartProxy, gigachat: FakeGigaChat) -> None:
        odd = "State/ID+01=é"
        answer = giga_completion("", finish="function_call", function_call={
            "name": "get_weather", "arguments": {"city": "Paris"}})
        answer["choices"][0]["message"]["functions_state_id"] = odd
        gigachat.then(json_reply(answer))
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        call = await self.round_trip(proxy, GIGA)
        assert call.id.startswith("call_gsb")
        assert set(call.id) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                   "0123456789_-")
        assert self.sent_back(gigachat)["functions_state_id"] == odd

    async def test_foreign_call_ids_send_no_state(self, start_proxy: StartProxy,
                                                  gigachat: FakeGigaChat) -> None:
        # A history written by another model (OpenAI's call ids): nothing to send back.
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        call = {"id": "call_Xk3yJ2mB9qLw0sVt8nRa4Zc1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        await proxy.client.chat.completions.create(model=GIGA, tools=[WEATHER_TOOL], messages=[
            QUESTION, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "{}"}])
        assistant = gigachat.calls("chat/completions")[0].body["messages"][1]
        assert "functions_state_id" not in assistant

    async def test_answer_without_state_gets_a_plain_id(self, start_proxy: StartProxy,
                                                        gigachat: FakeGigaChat) -> None:
        async def reply(request: web.Request, body: Any) -> web.StreamResponse:
            answer = giga_completion("", finish="function_call", function_call={
                "name": "get_weather", "arguments": {"city": "Paris"}})
            del answer["choices"][0]["message"]["functions_state_id"]
            return await json_reply(answer)(request, body)

        gigachat.then(reply)
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        first = await proxy.client.chat.completions.create(model=GIGA, messages=[QUESTION],
                                                           tools=[WEATHER_TOOL])
        [call] = first.choices[0].message.tool_calls or []
        assert call.id.startswith("call_") and not call.id.startswith("call_gs")
