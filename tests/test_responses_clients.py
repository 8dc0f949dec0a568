"""The Responses API on a native provider (a fake Gemini on 127.0.0.1, translated through
chat) and with LangChain's ChatOpenAI(use_responses_api=True) as the client."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

from tests.conftest import TOKEN
from tests.provider_fakes import FakeGemini, gemini_call, json_reply
from tests.responses_fakes import FakeOpenAIAPI

FLASH = "gemini/gemini-2.5-flash"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function", "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}


@pytest.fixture
async def gemini(aiohttp_server: Any) -> FakeGemini:
    return await FakeGemini.start(aiohttp_server)


class TestGemini:
    async def test_plain_and_streamed(self, start_proxy, gemini):
        proxy = await start_proxy({"models": [gemini.model(FLASH)]})
        response = await proxy.client.responses.create(model=FLASH, input="Hi",
                                                       instructions="Be kind",
                                                       max_output_tokens=64)
        assert response.output_text == "Hello from Gemini"
        assert response.usage.input_tokens == 7
        assert response.usage.output_tokens == 3
        sent = gemini.calls("generateContent")[-1].body
        assert sent["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]
        assert sent["systemInstruction"]["parts"] == [{"text": "Be kind"}]
        assert sent["generationConfig"]["maxOutputTokens"] == 64
        async with proxy.client.responses.stream(model=FLASH, input="Stream") as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
        assert deltas == ["Hello", " from", " Gemini"]
        assert final.output_text == "Hello from Gemini"
        assert final.usage.output_tokens == 3

    async def test_function_calling_and_previous_response_id(self, start_proxy, gemini):
        proxy = await start_proxy({"models": [gemini.model(FLASH)]})
        gemini.then(json_reply(gemini_call("get_weather", {"city": "Paris"}, call_id="g-1")))
        first = await proxy.client.responses.create(
            model=FLASH, input="What is the weather in Paris?", tools=[WEATHER_TOOL])
        call = first.output[0]
        assert (call.type, call.name, call.arguments) == ("function_call", "get_weather",
                                                          '{"city":"Paris"}')
        second = await proxy.client.responses.create(
            model=FLASH, previous_response_id=first.id, tools=[WEATHER_TOOL],
            input=[{"type": "function_call_output", "call_id": call.call_id,
                    "output": '{"temp_c": 21}'}])
        assert second.output_text == "Hello from Gemini"
        contents = gemini.calls("generateContent")[-1].body["contents"]
        assert contents[0] == {"role": "user",
                               "parts": [{"text": "What is the weather in Paris?"}]}
        assert contents[1]["role"] == "model"
        assert contents[1]["parts"][0]["functionCall"]["name"] == "get_weather"
        response_part = contents[2]["parts"][0]["functionResponse"]
        assert response_part["name"] == "get_weather"
        assert response_part["response"] == {"temp_c": 21}

    async def test_json_schema_output(self, start_proxy, gemini):
        proxy = await start_proxy({"models": [gemini.model(FLASH)]})
        gemini.then(json_reply({"candidates": [{"content": {"role": "model", "parts": [
            {"text": '{"name": "Ann", "age": 30}'}]}, "finishReason": "STOP"}]}))
        response = await proxy.client.responses.create(
            model=FLASH, input="Who?", text={"format": {
                "type": "json_schema", "name": "person", "strict": True,
                "schema": {"type": "object", "properties": {"name": {"type": "string"},
                                                            "age": {"type": "integer"}},
                           "required": ["name", "age"], "additionalProperties": False}}})
        assert response.output_text == '{"name": "Ann", "age": 30}'
        config = gemini.calls("generateContent")[-1].body["generationConfig"]
        assert config["responseMimeType"] == "application/json"

    async def test_hosted_tool_is_refused(self, start_proxy, gemini):
        proxy = await start_proxy({"models": [gemini.model(FLASH)]})
        with pytest.raises(openai.BadRequestError):
            await proxy.client.responses.create(model=FLASH, input="x",
                                                tools=[{"type": "file_search"}])
        assert not gemini.seen


class TestLangChain:
    @pytest.fixture
    async def llm(self, aiohttp_server, start_proxy):
        fake = FakeOpenAIAPI(native=False)
        server = await aiohttp_server(fake.app())
        proxy = await start_proxy({"models": [{
            "name": "gpt-test", "provider": "openai", "url": str(server.make_url("/v1")),
            "token": "upstream-secret-token"}]})
        return fake, ChatOpenAI(model="gpt-test", base_url=proxy.base_url, api_key=TOKEN,
                                use_responses_api=True, max_retries=0)

    async def test_invoke_and_stream(self, llm):
        fake, chat = llm
        answer = await chat.ainvoke("Hello there")
        assert answer.text == "echo: Hello there"
        assert answer.response_metadata["model_name"] == "gpt-test"
        assert answer.usage_metadata["input_tokens"] == 11
        assert answer.usage_metadata["output_tokens"] == 7
        assert fake.calls("/v1/chat/completions")[-1].body["messages"][-1] == {
            "role": "user", "content": "Hello there"}
        pieces = [chunk.text async for chunk in chat.astream("Stream please")]
        assert "".join(pieces) == "echo: Stream please"

    async def test_tool_calls_over_two_turns(self, llm):
        _, chat = llm
        with_tools = chat.bind_tools([WEATHER_TOOL])
        question = HumanMessage("What is the weather in Paris?")
        first = await with_tools.ainvoke([question])
        assert [(c["name"], c["args"]) for c in first.tool_calls] == [
            ("get_weather", {"city": "Paris"})]
        second = await with_tools.ainvoke([
            question, first, ToolMessage("21C", tool_call_id=first.tool_calls[0]["id"])])
        assert second.text == "It is sunny in Paris (21C)"
