"""The Responses API end to end: the openai SDK -> aiproxy -> an OpenAI-shaped fake on
127.0.0.1, translated to chat (the fake has no /v1/responses) and passed through (it has).

Each test checks what the client sees and what the upstream received.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import orjson
import pydantic
import pytest

from tests.conftest import TOKEN
from tests.responses_fakes import PERSON, WEATHER_ARGS, FakeOpenAIAPI

WEATHER_TOOL: dict[str, Any] = {
    "type": "function", "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False},
    "strict": True}


class Person(pydantic.BaseModel):
    name: str
    age: int


async def fake_server(aiohttp_server: Any, *, native: bool) -> tuple[FakeOpenAIAPI, str]:
    fake = FakeOpenAIAPI(native=native)
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("/v1"))


def model(name: str, url: str, *, options: dict[str, Any] | None = None,
          **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "provider": "openai", "url": url,
                             "token": "upstream-secret-token", **extra}
    if options:
        entry["options"] = options
    return entry


@pytest.fixture
async def translated(aiohttp_server, start_proxy):
    fake, url = await fake_server(aiohttp_server, native=False)
    proxy = await start_proxy({"models": [model("openai/gpt-test", url)]})
    return fake, proxy


@pytest.fixture
async def native(aiohttp_server, start_proxy):
    fake, url = await fake_server(aiohttp_server, native=True)
    proxy = await start_proxy({"models": [
        model("openai/gpt-native", url,
              options={"responses_api": True, "completions_api": True})]})
    return fake, proxy


async def raw_events(proxy: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream's events as the wire carries them (event: name / data: json)."""
    async with proxy.http.post(proxy.url("/v1/responses"), headers=proxy.auth,
                               json={**body, "stream": True}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        text = (await resp.read()).decode()
    events = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event)
    return events


# ------------------------------------------------------------------------ translated to chat


class TestTranslated:
    async def test_plain_create(self, translated):
        fake, proxy = translated
        got = await proxy.client.responses.with_raw_response.create(
            model="openai/gpt-test", input="Hello", instructions="Be brief",
            temperature=0.2, max_output_tokens=50, metadata={"ticket": "7"})
        assert got.headers["x-aiproxy-model"] == "openai/gpt-test"
        response = got.parse()
        assert response.object == "response"
        assert response.id.startswith("resp_")
        assert response.status == "completed"
        assert response.output_text == "echo: Hello"
        assert response.model == "openai/gpt-test"
        assert response.metadata == {"ticket": "7"}
        assert response.instructions == "Be brief"
        usage = response.usage
        assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (11, 7, 18)
        assert usage.input_tokens_details.cached_tokens == 3
        assert usage.output_tokens_details.reasoning_tokens == 2
        assert not fake.calls("/v1/responses")
        sent = fake.calls("/v1/chat/completions")[-1].body
        assert sent["messages"] == [{"role": "system", "content": "Be brief"},
                                    {"role": "user", "content": "Hello"}]
        assert sent["model"] == "gpt-test"
        assert sent["temperature"] == 0.2
        assert sent["max_completion_tokens"] == 50
        assert "metadata" not in sent and "store" not in sent

    async def test_stream_events_in_order(self, translated):
        _, proxy = translated
        events = await raw_events(proxy, {"model": "openai/gpt-test", "input": "stream me"})
        kinds = [e["type"] for e in events]
        assert kinds[:4] == ["response.created", "response.in_progress",
                             "response.output_item.added", "response.content_part.added"]
        assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                              "response.output_item.done", "response.completed"]
        assert set(kinds[4:-4]) == {"response.output_text.delta"}
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text == "echo: stream me"
        final = events[-1]["response"]
        assert final["output"][0]["content"][0]["text"] == text
        assert final["usage"]["output_tokens"] == 7
        assert events[0]["response"]["id"] == final["id"]
        assert events[0]["response"]["model"] == final["model"] == "openai/gpt-test"

    async def test_sdk_stream_helper_assembles_the_answer(self, translated):
        _, proxy = translated
        async with proxy.client.responses.stream(model="openai/gpt-test",
                                                 input="stream me too") as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
        assert "".join(deltas) == final.output_text == "echo: stream me too"

    @pytest.mark.parametrize("stream", [False, True])
    async def test_function_calling_over_two_turns(self, translated, stream):
        fake, proxy = translated
        client = proxy.client

        async def create(**kw: Any) -> Any:
            if not stream:
                return await client.responses.create(model="openai/gpt-test", **kw)
            async with client.responses.stream(model="openai/gpt-test", **kw) as s:
                return await s.get_final_response()

        question = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = await create(input=question, tools=[WEATHER_TOOL])
        call = first.output[0]
        assert call.type == "function_call"
        assert (call.name, call.arguments) == ("get_weather", WEATHER_ARGS)
        sent = fake.calls("/v1/chat/completions")[-1].body
        assert sent["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "description": "Current weather in a city",
            "parameters": WEATHER_TOOL["parameters"], "strict": True}}]
        second = await create(
            input=[*question, *[o.model_dump(exclude_none=True) for o in first.output],
                   {"type": "function_call_output", "call_id": call.call_id,
                    "output": '{"temp_c": 21}'}],
            tools=[WEATHER_TOOL])
        assert second.output_text == 'It is sunny in Paris ({"temp_c": 21})'
        messages = fake.calls("/v1/chat/completions")[-1].body["messages"]
        assert messages[1] == {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": WEATHER_ARGS}}]}
        assert messages[2] == {"role": "tool", "tool_call_id": call.call_id,
                               "content": '{"temp_c": 21}'}

    async def test_function_call_stream_events(self, translated):
        _, proxy = translated
        events = await raw_events(proxy, {
            "model": "openai/gpt-test", "tools": [WEATHER_TOOL],
            "input": "What is the weather in Paris?"})
        kinds = [e["type"] for e in events]
        assert kinds == ["response.created", "response.in_progress",
                         "response.output_item.added",
                         "response.function_call_arguments.delta",
                         "response.function_call_arguments.delta",
                         "response.function_call_arguments.done",
                         "response.output_item.done", "response.completed"]
        assert events[2]["item"]["name"] == "get_weather"
        assert events[5]["arguments"] == WEATHER_ARGS
        assert events[-1]["response"]["output"][0]["arguments"] == WEATHER_ARGS

    async def test_previous_response_id_continues_and_is_stored(self, translated):
        fake, proxy = translated
        client = proxy.client
        first = await client.responses.create(model="openai/gpt-test", input="My name is Ann",
                                              instructions="Old instructions")
        second = await client.responses.create(model="openai/gpt-test", input="And mine?",
                                               previous_response_id=first.id)
        assert second.previous_response_id == first.id
        # Instructions are not carried over, as the reference says.
        assert fake.calls("/v1/chat/completions")[-1].body["messages"] == [
            {"role": "user", "content": "My name is Ann"},
            {"role": "assistant", "content": "echo: My name is Ann"},
            {"role": "user", "content": "And mine?"}]
        third = await client.responses.create(model="openai/gpt-test", input="Third",
                                              previous_response_id=second.id, stream=False)
        assert len(fake.calls("/v1/chat/completions")[-1].body["messages"]) == 5
        got = await client.responses.retrieve(third.id)
        assert got.output_text == third.output_text
        items = (await client.responses.input_items.list(second.id)).data
        assert [(i.type, i.role, i.content[0].text) for i in items] == [
            ("message", "user", "And mine?")]
        await client.responses.delete(second.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(second.id)
        with pytest.raises(openai.BadRequestError) as err:
            await client.responses.create(model="openai/gpt-test", input="x",
                                          previous_response_id=third.id)
        assert err.value.code == "previous_response_not_found"
        assert second.id in err.value.message

    async def test_store_false_keeps_nothing(self, translated):
        _, proxy = translated
        response = await proxy.client.responses.create(model="openai/gpt-test", input="x",
                                                       store=False)
        with pytest.raises(openai.NotFoundError):
            await proxy.client.responses.retrieve(response.id)

    async def test_input_items_pages(self, translated):
        _, proxy = translated
        client = proxy.client
        response = await client.responses.create(model="openai/gpt-test", input=[
            {"role": "user", "content": f"message {i}"} for i in range(5)])
        page = await client.responses.input_items.list(response.id, limit=2, order="asc")
        assert [i.content[0].text for i in page.data] == ["message 0", "message 1"]
        assert page.has_more
        texts = [i.content[0].text async for i in client.responses.input_items.list(
            response.id, limit=2)]
        assert texts == [f"message {i}" for i in (4, 3, 2, 1, 0)]

    async def test_json_schema_with_parse(self, translated):
        fake, proxy = translated
        parsed = await proxy.client.responses.parse(model="openai/gpt-test", input="Who?",
                                                    text_format=Person)
        assert parsed.output_parsed == Person(**PERSON)
        fmt = fake.calls("/v1/chat/completions")[-1].body["response_format"]
        assert fmt["type"] == "json_schema"
        assert fmt["json_schema"]["name"] == "Person"
        assert fmt["json_schema"]["strict"] is True
        assert fmt["json_schema"]["schema"]["properties"].keys() == {"name", "age"}

    async def test_json_object_and_reasoning_effort(self, translated):
        fake, proxy = translated
        await proxy.client.responses.create(model="openai/gpt-test", input="json please",
                                            text={"format": {"type": "json_object"}},
                                            reasoning={"effort": "low"},
                                            tool_choice="none", parallel_tool_calls=False)
        sent = fake.calls("/v1/chat/completions")[-1].body
        assert sent["response_format"] == {"type": "json_object"}
        assert sent["reasoning_effort"] == "low"

    async def test_length_stop_is_incomplete(self, translated):
        fake, proxy = translated
        fake.finish = "length"
        response = await proxy.client.responses.create(model="openai/gpt-test", input="long",
                                                       max_output_tokens=16)
        assert response.status == "incomplete"
        assert response.incomplete_details.reason == "max_output_tokens"
        events = await raw_events(proxy, {"model": "openai/gpt-test", "input": "long"})
        assert events[-1]["type"] == "response.incomplete"
        assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}

    async def test_hosted_tools_need_the_responses_api(self, translated):
        fake, proxy = translated
        with pytest.raises(openai.BadRequestError) as err:
            await proxy.client.responses.create(model="openai/gpt-test", input="news?",
                                                tools=[{"type": "web_search"}])
        assert "web_search" in err.value.message
        assert "Responses API" in err.value.message
        assert not fake.seen

    async def test_bad_input_is_a_400_in_the_envelope(self, translated):
        _, proxy = translated
        for body, param in (({"model": "openai/gpt-test"}, "input"),
                            ({"model": "openai/gpt-test", "input": [{"role": "robot",
                                                                     "content": "x"}]},
                             "input[0].role"),
                            ({"model": "openai/gpt-test", "input": "x",
                              "text": {"format": {"type": "yaml"}}}, "text.format"),
                            ({"model": "openai/gpt-test", "input": "x", "background": True},
                             "background")):
            async with proxy.http.post(proxy.url("/v1/responses"), headers=proxy.auth,
                                       json=body) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["param"] == param

    async def test_ids_that_cannot_be_ids_are_unknown(self, translated):
        _, proxy = translated
        for path in ("/v1/responses/item:x", "/v1/responses/a%20b/input_items"):
            async with proxy.http.get(proxy.url(path), headers=proxy.auth) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["code"] == "response_not_found"
        with pytest.raises(openai.BadRequestError) as err:
            await proxy.client.responses.create(model="openai/gpt-test", input="x",
                                                previous_response_id="a:b")
        assert err.value.code == "previous_response_not_found"

    async def test_unknown_model_is_404(self, translated):
        _, proxy = translated
        with pytest.raises(openai.NotFoundError):
            await proxy.client.responses.create(model="nope", input="x")

    async def test_truncation_auto_drops_the_oldest_turns(self, translated):
        fake, proxy = translated
        client = proxy.client
        previous = None
        for i in range(3):
            response = await client.responses.create(model="openai/gpt-test", input=f"turn {i}",
                                                     previous_response_id=previous)
            previous = response.id
        fake.context_limit = 3
        with pytest.raises(openai.BadRequestError):
            await client.responses.create(model="openai/gpt-test", input="last",
                                          previous_response_id=previous)
        response = await client.responses.create(model="openai/gpt-test", input="last",
                                                 previous_response_id=previous,
                                                 truncation="auto")
        assert response.output_text == "echo: last"
        kept = fake.calls("/v1/chat/completions")[-1].body["messages"]
        assert len(kept) <= 3
        assert kept[-1] == {"role": "user", "content": "last"}
        assert kept[0]["role"] == "user"

    async def test_broken_stream_ends_with_response_failed(self, translated):
        fake, proxy = translated
        events = await raw_events(proxy, {"model": "openai/gpt-test", "input": "x"})
        fake.cut_stream = True
        events = await raw_events(proxy, {"model": "openai/gpt-test", "input": "one two three"})
        kinds = [e["type"] for e in events]
        assert kinds[-2:] == ["error", "response.failed"]
        assert "response.completed" not in kinds
        failed = events[-1]["response"]
        assert failed["status"] == "failed"
        assert "interrupted" in failed["error"]["message"]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert "upstream-secret-token" not in json.dumps(events)

    async def test_client_keys_see_only_their_own(self, aiohttp_server, start_proxy):
        _, url = await fake_server(aiohttp_server, native=False)
        proxy = await start_proxy({"models": [model("m", url)], "keys": [
            {"name": "alice", "key": "sk-alice-0123456789"},
            {"name": "bob", "key": "sk-bob-0123456789ab"}]})
        alice = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-alice-0123456789",
                                   max_retries=0)
        bob = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-bob-0123456789ab",
                                 max_retries=0)
        try:
            mine = await alice.responses.create(model="m", input="secret")
            assert (await alice.responses.retrieve(mine.id)).id == mine.id
            with pytest.raises(openai.NotFoundError):
                await bob.responses.retrieve(mine.id)
            with pytest.raises(openai.NotFoundError):
                await bob.responses.delete(mine.id)
            with pytest.raises(openai.BadRequestError):
                await bob.responses.create(model="m", input="x", previous_response_id=mine.id)
            with pytest.raises(openai.NotFoundError):
                await proxy.client.responses.retrieve(mine.id)  # AUTH_TOKEN has its own too
        finally:
            await alice.close()
            await bob.close()


# ---------------------------------------------------------------------------- passed through


class TestPassthrough:
    async def test_create_goes_through_untranslated(self, native):
        fake, proxy = native
        got = await proxy.client.responses.with_raw_response.create(
            model="openai/gpt-native", input="Hello", tools=[{"type": "web_search"}],
            include=["reasoning.encrypted_content"])
        assert got.headers["x-aiproxy-model"] == "openai/gpt-native"
        response = got.parse()
        assert response.output_text == "native: Hello"
        assert response.model == "openai/gpt-native"  # renamed like chat answers
        assert response.id == "resp_up1"
        sent = fake.calls("/v1/responses")[-1]
        assert sent.body["model"] == "gpt-native"
        assert sent.body["input"] == "Hello"
        assert sent.body["tools"] == [{"type": "web_search"}]
        assert sent.body["include"] == ["reasoning.encrypted_content"]
        assert sent.headers["Authorization"] == "Bearer upstream-secret-token"
        assert not fake.calls("/v1/chat/completions")
        assert (await proxy.client.responses.retrieve(response.id)).output_text == \
            "native: Hello"

    async def test_stream_is_relayed(self, native):
        fake, proxy = native
        events = await raw_events(proxy, {"model": "openai/gpt-native", "input": "streamed"})
        assert [e["type"] for e in events] == [
            "response.created", "response.in_progress", "response.output_item.added",
            "response.content_part.added", "response.output_text.delta",
            "response.output_text.delta", "response.output_text.done",
            "response.content_part.done", "response.output_item.done", "response.completed"]
        assert [e["sequence_number"] for e in events] == list(range(10))
        assert events[-1]["response"]["model"] == "openai/gpt-native"
        assert fake.calls("/v1/responses")[-1].body["stream"] is True
        async with proxy.client.responses.stream(model="openai/gpt-native",
                                                 input="again") as stream:
            final = await stream.get_final_response()
        assert final.output_text == "native: again"
        assert (await proxy.client.responses.retrieve(final.id)).status == "completed"

    async def test_an_upstream_error_event_ends_with_response_failed(self, native):
        fake, proxy = native
        fake.error_event = True
        events = await raw_events(proxy, {"model": "openai/gpt-native", "input": "boom"})
        kinds = [e["type"] for e in events]
        assert kinds[-2:] == ["error", "response.failed"]
        assert "response.completed" not in kinds
        assert "The server had an error" in events[-1]["response"]["error"]["message"]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))

    async def test_previous_response_id_goes_through(self, native):
        fake, proxy = native
        first = await proxy.client.responses.create(model="openai/gpt-native", input="one")
        second = await proxy.client.responses.create(model="openai/gpt-native", input="two",
                                                     previous_response_id=first.id)
        sent = fake.calls("/v1/responses")[-1].body
        assert sent["previous_response_id"] == first.id  # the upstream holds it
        assert sent["input"] == "two"
        assert second.previous_response_id == first.id

    async def test_function_calling_over_two_turns(self, native):
        _, proxy = native
        first = await proxy.client.responses.create(
            model="openai/gpt-native", input="What is the weather in Paris?",
            tools=[WEATHER_TOOL])
        call = first.output[0]
        assert call.type == "function_call"
        second = await proxy.client.responses.create(
            model="openai/gpt-native", previous_response_id=first.id, tools=[WEATHER_TOOL],
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21C"}])
        assert second.output_text == "native: sunny (21C)"

    async def test_delete_deletes_upstream_too(self, native):
        fake, proxy = native
        response = await proxy.client.responses.create(model="openai/gpt-native", input="x")
        await proxy.client.responses.delete(response.id)
        assert fake.deleted == [response.id]
        with pytest.raises(openai.NotFoundError):
            await proxy.client.responses.retrieve(response.id)

    async def test_a_conversation_moves_between_translated_and_native(self, aiohttp_server,
                                                                      start_proxy):
        chat_fake, chat_url = await fake_server(aiohttp_server, native=False)
        native_fake, native_url = await fake_server(aiohttp_server, native=True)
        proxy = await start_proxy({"models": [
            model("chatty", chat_url), model("nat", native_url, options={"responses_api": True})]})
        client = proxy.client
        first = await client.responses.create(model="chatty", input="from chat")
        second = await client.responses.create(model="nat", input="to native",
                                               previous_response_id=first.id)
        sent = native_fake.calls("/v1/responses")[-1].body
        assert "previous_response_id" not in sent  # the upstream never saw the first turn
        assert sent["input"] == [
            {"role": "user", "content": [{"type": "input_text", "text": "from chat"}]},
            {"role": "assistant", "content": "echo: from chat"},
            {"role": "user", "content": "to native"}]
        assert second.previous_response_id == first.id
        events = await raw_events(proxy, {"model": "nat", "input": "streamed",
                                          "previous_response_id": first.id})
        assert {e["response"]["previous_response_id"] for e in events
                if "response" in e} == {first.id}
        third = await client.responses.create(model="chatty", input="back",
                                              previous_response_id=second.id)
        assert [m["content"] for m in chat_fake.calls("/v1/chat/completions")[-1].body[
            "messages"]] == ["from chat", "echo: from chat", "to native", "native: to native",
                             "back"]
        assert third.output_text == "echo: back"

    async def test_falls_over_from_native_to_translated(self, aiohttp_server, start_proxy):
        native_fake, native_url = await fake_server(aiohttp_server, native=True)
        chat_fake, chat_url = await fake_server(aiohttp_server, native=False)
        native_fake.fail_status = 503
        proxy = await start_proxy({"models": [
            model("nat", native_url, options={"responses_api": True}, priority=0,
              model_size="BIG"),
            model("chatty", chat_url, priority=1, model_size="BIG")]})
        got = await proxy.client.responses.with_raw_response.create(model="BIG", input="hi")
        assert got.headers["x-aiproxy-model"] == "chatty"
        assert got.parse().output_text == "echo: hi"
        assert native_fake.calls("/v1/responses")


# ---------------------------------------------------------------- model lookup, completions


class TestModelsAndCompletions:
    async def test_models_retrieve(self, translated):
        _, proxy = translated
        found = await proxy.client.models.retrieve("openai/gpt-test")  # the slash, encoded
        assert (found.id, found.object, found.owned_by) == ("openai/gpt-test", "model",
                                                             "openai")
        for path in ("/v1/models/openai/gpt-test", "/models/openai%2Fgpt-test"):
            async with proxy.http.get(proxy.url(path), headers=proxy.auth) as resp:
                assert resp.status == 200
                assert (await resp.json())["id"] == "openai/gpt-test"
        with pytest.raises(openai.NotFoundError) as err:
            await proxy.client.models.retrieve("missing")
        assert err.value.code == "model_not_found"

    async def test_models_retrieve_respects_keys(self, aiohttp_server, start_proxy):
        _, url = await fake_server(aiohttp_server, native=False)
        proxy = await start_proxy({"models": [model("a", url, model_size="SMALL"),
                                              model("b", url)],
                                   "keys": [{"name": "k", "key": "sk-k-0123456789abcd",
                                             "models": ["SMALL"]}]})
        client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-k-0123456789abcd",
                                    max_retries=0)
        try:
            assert (await client.models.retrieve("SMALL")).owned_by == "aiproxy"
            assert (await client.models.retrieve("a")).id == "a"
            with pytest.raises(openai.NotFoundError):
                await client.models.retrieve("b")
        finally:
            await client.close()

    async def test_completions_translated(self, translated):
        fake, proxy = translated
        got = await proxy.client.completions.create(model="openai/gpt-test",
                                                    prompt=["Say A", "Say B"], max_tokens=5,
                                                    echo=True, stop=["\n"])
        assert got.object == "text_completion"
        assert [c.text for c in got.choices] == ["Say Aecho: Say A", "Say Becho: Say B"]
        assert [c.index for c in got.choices] == [0, 1]
        assert got.usage.total_tokens == 36  # both prompts' usage
        sent = [s.body for s in fake.calls("/v1/chat/completions")]
        assert sorted(s["messages"][0]["content"] for s in sent) == ["Say A", "Say B"]
        assert all(s["max_completion_tokens"] == 5 and s["stop"] == ["\n"] for s in sent)

    async def test_completions_default_max_tokens_is_16(self, translated):
        fake, proxy = translated
        await proxy.client.completions.create(model="openai/gpt-test", prompt="x")
        assert fake.calls("/v1/chat/completions")[-1].body["max_completion_tokens"] == 16

    async def test_completions_stream_translated(self, translated):
        _, proxy = translated
        stream = await proxy.client.completions.create(
            model="openai/gpt-test", prompt="Go", stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: Go"
        assert chunks[-1].usage.total_tokens == 18
        assert {c.model for c in chunks} == {"openai/gpt-test"}

    async def test_completions_token_prompts_need_the_api(self, translated):
        _, proxy = translated
        with pytest.raises(openai.BadRequestError) as err:
            await proxy.client.completions.create(model="openai/gpt-test", prompt=[1, 2, 3])
        assert "completions API" in err.value.message

    async def test_completions_passed_through(self, native):
        fake, proxy = native
        got = await proxy.client.completions.create(model="openai/gpt-native",
                                                    prompt=[1, 2, 3], max_tokens=3)
        assert got.choices[0].text == " native completion of [1, 2, 3]"
        assert got.model == "openai/gpt-native"
        assert fake.calls("/v1/completions")[-1].body["prompt"] == [1, 2, 3]
        stream = await proxy.client.completions.create(model="openai/gpt-native",
                                                       prompt="hey", stream=True)
        chunks = [c async for c in stream]
        assert [c.choices[0].text for c in chunks] == [" native completion of 'hey'"]
        sent = fake.calls("/v1/completions")[-1].body
        assert sent["stream_options"] == {"include_usage": True}  # for our own counting
        assert all(c.usage is None for c in chunks)  # the client did not ask for it


async def test_every_api_path_works_without_v1(translated):
    _, proxy = translated
    response_id = None
    for path, body in (("/responses", {"model": "openai/gpt-test", "input": "x"}),
                       ("/completions", {"model": "openai/gpt-test", "prompt": "x"})):
        async with proxy.http.post(proxy.url(path), headers=proxy.auth, json=body) as resp:
            assert resp.status == 200, path
            data = orjson.loads(await resp.read())
            response_id = data["id"] if path == "/responses" else response_id
    for path in (f"/responses/{response_id}", f"/responses/{response_id}/input_items",
                 "/models/openai/gpt-test"):
        async with proxy.http.get(proxy.url(path), headers=proxy.auth) as resp:
            assert resp.status == 200, path
    async with proxy.http.delete(proxy.url(f"/responses/{response_id}"),
                                 headers=proxy.auth) as resp:
        assert resp.status == 200
        assert await resp.json() == {"id": response_id, "object": "response", "deleted": True}
    assert TOKEN
