"""Cohere end to end: the openai SDK → aiproxy → a fake Cohere v2 API on 127.0.0.1.

The fake answers in the shapes of Cohere's reference: https://docs.cohere.com/reference/chat,
https://docs.cohere.com/reference/chat-stream and https://docs.cohere.com/reference/embed.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.conftest import StartProxy, openai_model
from tests.fakes import FakeOpenAI
from tests.provider_fakes import FakeCohere, cohere_text, json_reply, sse_reply, vector_for

COHERE = "cohere/command-a-03-2025"
COHERE_EMBED = "cohere/embed-v4.0"
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CALL = {"id": "call_Xk3yJ2mB9qLw0sVt8nRa4Zc1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
# A history as an OpenAI-style model writes it: text *and* tool calls in one assistant message.
OPENAI_HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "Let me look that up.", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": CALL["id"], "content": '{"temp_c": 21}'},
]


@pytest.fixture
async def cohere(aiohttp_server: Any) -> FakeCohere:
    return await FakeCohere.start(aiohttp_server)


class TestToolPlan:
    """Defect 3. https://docs.cohere.com/docs/tool-use-overview: an assistant message that calls
    tools carries its text as ``tool_plan``; ``content`` beside ``tool_calls`` is refused."""

    EXPECTED = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "tool_plan": "Let me look that up.", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": CALL["id"], "content": '{"temp_c": 21}'},
    ]

    async def test_openai_style_history_sends_its_text_as_tool_plan(
            self, start_proxy: StartProxy, cohere: FakeCohere) -> None:
        cohere.then(json_reply(cohere_text("It is 21°C in Paris.")))
        proxy = await start_proxy({"models": [cohere.model(COHERE)]})
        answer = await proxy.client.chat.completions.create(
            model=COHERE, messages=OPENAI_HISTORY, tools=[WEATHER_TOOL])
        assert answer.choices[0].message.content == "It is 21°C in Paris."
        [seen] = cohere.seen
        assert seen.body["messages"] == self.EXPECTED

    async def test_text_parts_join_into_the_plan(self, start_proxy: StartProxy,
                                                 cohere: FakeCohere) -> None:
        proxy = await start_proxy({"models": [cohere.model(COHERE)]})
        history = [OPENAI_HISTORY[0],
                   {**OPENAI_HISTORY[1], "content": [{"type": "text", "text": "Let me "},
                                                     {"type": "text", "text": "look that up."}]},
                   OPENAI_HISTORY[2]]
        await proxy.client.chat.completions.create(model=COHERE, messages=history)
        assert cohere.seen[0].body["messages"] == self.EXPECTED

    async def test_fallback_from_an_openai_model_to_cohere(
            self, start_proxy: StartProxy, cohere: FakeCohere,
            fake_upstream: tuple[FakeOpenAI, str]) -> None:
        # The history an OpenAI model wrote reaches Cohere when that model fails over.
        fake, url = fake_upstream
        fake.defaults["gpt-4o"] = "500"
        proxy = await start_proxy({
            "models": [openai_model("gpt-4o", url, priority=1), cohere.model(COHERE, priority=2)],
            "groups": {"pool": ["gpt-4o", COHERE]}})
        answer = await proxy.client.chat.completions.create(
            model="pool", messages=OPENAI_HISTORY, tools=[WEATHER_TOOL])
        assert answer.model == COHERE
        assert fake.requests_for("gpt-4o")
        [seen] = cohere.seen
        assert seen.body["messages"] == self.EXPECTED


class TestEmbedBatches:
    """Defect 6. https://docs.cohere.com/reference/embed#request.body.texts: at most 96 texts
    per call."""

    async def test_more_than_96_inputs_go_in_batches_and_come_back_in_order(
            self, start_proxy: StartProxy, cohere: FakeCohere) -> None:
        proxy = await start_proxy({"models": [cohere.model(COHERE_EMBED)]})
        texts = [f"text number {i}" + "!" * (i % 7) for i in range(200)]
        answer = await proxy.client.embeddings.create(model=COHERE_EMBED, input=texts)
        calls = cohere.calls("embed")
        assert [len(c.body["texts"]) for c in calls] == [96, 96, 8]
        assert [t for c in calls for t in c.body["texts"]] == texts
        assert [d.index for d in answer.data] == list(range(200))
        assert [d.embedding for d in answer.data] == [vector_for(t) for t in texts]
        # The fake bills 2 input tokens per text: the batches' billed_units add up.
        assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (400, 400)

    async def test_a_failing_batch_fails_the_request(self, start_proxy: StartProxy,
                                                     cohere: FakeCohere) -> None:
        # The first batch succeeds, the second is refused: no partial answer reaches the client.
        async def embed(request: web.Request, body: Any) -> web.StreamResponse:
            vectors = [vector_for(t) for t in body["texts"]]
            return await json_reply({"embeddings": {"float": vectors},
                                     "meta": {"billed_units": {"input_tokens": 1}}})(
                request, body)

        cohere.then(embed, json_reply({"message": "invalid request: bad text"}, 400))
        proxy = await start_proxy({"models": [cohere.model(COHERE_EMBED)]})
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.embeddings.create(model=COHERE_EMBED, input=["x"] * 100)
        assert "bad text" in info.value.message
        assert len(cohere.calls("embed")) == 2


# https://docs.cohere.com/reference/chat#response.body.logprobs: LogprobItem {text, token_ids,
# logprobs}, one per chunk of the answer's text.
LOGPROBS = [{"text": "Hello", "token_ids": [22557], "logprobs": [-0.25]},
            {"text": " world", "token_ids": [2134, 77], "logprobs": [-0.5, -0.125]}]


class TestLogprobs:
    """Defect 25. request.body.logprobs (boolean) and the answer's logprobs."""

    async def test_logprobs_in_a_plain_answer(self, start_proxy: StartProxy,
                                              cohere: FakeCohere) -> None:
        cohere.then(json_reply({**cohere_text("Hello world"), "logprobs": LOGPROBS}))
        proxy = await start_proxy({"models": [cohere.model(COHERE)]})
        answer = await proxy.client.chat.completions.create(
            model=COHERE, messages=[{"role": "user", "content": "Hi"}], logprobs=True)
        assert cohere.seen[0].body["logprobs"] is True
        logprobs = answer.choices[0].logprobs
        assert logprobs is not None and logprobs.content is not None
        assert [(t.token, t.logprob, t.bytes, t.top_logprobs) for t in logprobs.content] == [
            ("Hello", -0.25, list(b"Hello"), []),
            (" world", -0.625, list(b" world"), []),
        ]
        assert "".join(t.token for t in logprobs.content) == answer.choices[0].message.content

    async def test_logprobs_in_a_stream(self, start_proxy: StartProxy,
                                        cohere: FakeCohere) -> None:
        # https://docs.cohere.com/reference/chat-stream: each content-delta has its logprobs.
        events: list[Any] = [
            {"id": "a8fc192e-4bb8-4e15-ae1f-a174e8b02ae8", "type": "message-start",
             "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "",
                                   "tool_calls": [], "citations": []}}},
            {"type": "content-start", "index": 0,
             "delta": {"message": {"content": {"type": "text", "text": ""}}}},
        ]
        events += [{"type": "content-delta", "index": 0, "logprobs": item,
                    "delta": {"message": {"content": {"text": item["text"]}}}}
                   for item in LOGPROBS]
        events += [{"type": "content-end", "index": 0},
                   {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": {
                       "billed_units": {"input_tokens": 1, "output_tokens": 3}}}}]
        cohere.then(sse_reply(events, named=True))
        proxy = await start_proxy({"models": [cohere.model(COHERE)]})
        stream = await proxy.client.chat.completions.create(
            model=COHERE, messages=[{"role": "user", "content": "Hi"}], logprobs=True,
            stream=True)
        chunks = [chunk async for chunk in stream]
        assert cohere.seen[0].body["logprobs"] is True
        tokens = [(t.token, t.logprob) for c in chunks if c.choices and c.choices[0].logprobs
                  for t in c.choices[0].logprobs.content or []]
        assert tokens == [("Hello", -0.25), (" world", -0.625)]

    async def test_top_logprobs_is_refused(self, start_proxy: StartProxy,
                                           cohere: FakeCohere) -> None:
        proxy = await start_proxy({"models": [cohere.model(COHERE)]})
        response = await proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                         json={"model": COHERE, "logprobs": True,
                                               "top_logprobs": 3,
                                               "messages": [{"role": "user", "content": "Hi"}]})
        assert response.status == 400
        error = json.loads(await response.text())["error"]
        assert error["param"] == "top_logprobs"
        assert cohere.seen == []
