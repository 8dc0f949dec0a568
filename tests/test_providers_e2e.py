"""Native providers end to end: the official openai SDK → aiproxy → a fake native upstream.

For Gemini, Cohere, GigaChat (with its OAuth endpoint) and Cloudflare Workers AI: plain and
streamed completions, a tool-call round trip (the fake checks the native shape it receives),
typed upstream errors and failover, embeddings and images. No upstream credential may reach the
client: the fakes quote back the credentials they get in their error messages, and every answer
the SDK sees is checked for them.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.provider_fakes import (
    CF_ACCOUNT,
    JPEG,
    FakeCloudflare,
    FakeCohere,
    FakeGemini,
    FakeGigaChat,
    FakeUpstream,
    cf_envelope,
    cf_failure,
    cohere_text,
    cohere_tool_call,
    gemini_call,
    gemini_error,
    gemini_text,
    giga_completion,
    json_reply,
    retry_info,
    vector_for,
)

GEMINI = "gemini/gemini-2.0-flash"
GEMINI_EMBED = "gemini/gemini-embedding-001"
COHERE = "cohere/command-r-plus"
COHERE_EMBED = "cohere/embed-v4.0"
GIGA = "gigachat/GigaChat"
GIGA_EMBED = "gigachat/Embeddings"
CF_LLAMA_ID = "@cf/meta/llama-3.1-8b-instruct"
CF_FLUX_ID = "@cf/black-forest-labs/flux-1-schnell"
CF_LLAMA = f"cloudflare/{CF_LLAMA_ID}"
CF_FLUX = f"cloudflare/{CF_FLUX_ID}"

WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"}},
                  "required": ["city"]}
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": WEATHER_PARAMS}}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}
RESULT = {"temp_c": 21, "sky": "clear"}


@pytest.fixture
async def gemini(aiohttp_server: Any) -> FakeGemini:
    return await FakeGemini.start(aiohttp_server)


@pytest.fixture
async def cohere(aiohttp_server: Any) -> FakeCohere:
    return await FakeCohere.start(aiohttp_server)


@pytest.fixture
async def gigachat(aiohttp_server: Any) -> FakeGigaChat:
    return await FakeGigaChat.start(aiohttp_server)


@pytest.fixture
async def cloudflare(aiohttp_server: Any) -> FakeCloudflare:
    return await FakeCloudflare.start(aiohttp_server)


# ------------------------------------------------------------------------------------ helpers


def assert_clean(text: str, *fakes: FakeUpstream) -> None:
    """No credential of any fake upstream appears in ``text``."""
    for fake in fakes:
        for secret in fake.secrets:
            assert secret not in text, f"upstream credential leaked: {text!r}"


async def complete(proxy: Any, model: str, *fakes: FakeUpstream,
                   **kwargs: Any) -> tuple[Any, Any]:
    """A plain completion through the SDK: (parsed answer, raw HTTP response), checked clean."""
    kwargs.setdefault("messages", [{"role": "user", "content": "Hi"}])
    raw = await proxy.client.chat.completions.with_raw_response.create(model=model, **kwargs)
    assert_clean(raw.text, *fakes)
    return raw.parse(), raw


async def stream(proxy: Any, model: str, **kwargs: Any) -> list[Any]:
    kwargs.setdefault("messages", [{"role": "user", "content": "Hi"}])
    chunks = await proxy.client.chat.completions.create(model=model, stream=True, **kwargs)
    return [chunk async for chunk in chunks]


def check_stream(chunks: list[Any], *, model: str, text: str, finish: str = "stop",
                 usage: tuple[int, int, int] | None = None) -> None:
    """The SDK's chunks: the text, one id, the configured model, a finish on the last choice
    chunk (and only there), then the usage chunk if asked for."""
    assert len({c.id for c in chunks}) == 1
    assert {c.model for c in chunks} == {model}
    with_choices = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == text
    finishes = [c.choices[0].finish_reason for c in with_choices]
    assert finishes[-1] == finish
    assert all(f is None for f in finishes[:-1])
    if usage is None:
        assert all(c.usage is None for c in chunks)
    else:
        last = chunks[-1]
        assert last.choices == []
        assert (last.usage.prompt_tokens, last.usage.completion_tokens,
                last.usage.total_tokens) == usage
        assert all(c.usage is None for c in chunks[:-1])


async def tool_round_trip(proxy: Any, model: str) -> tuple[Any, Any, dict[str, Any]]:
    """Ask with tools; expect one get_weather call; answer it; return (call, final answer,
    the arguments the SDK parsed)."""
    first = await proxy.client.chat.completions.create(model=model, messages=[QUESTION],
                                                       tools=[WEATHER_TOOL])
    assert first.model == model
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.id
    arguments = json.loads(call.function.arguments)
    messages = [QUESTION, choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps(RESULT)}]
    final = await proxy.client.chat.completions.create(model=model, messages=messages,
                                                       tools=[WEATHER_TOOL])
    return call, final, arguments


def retry_after(exc: openai.APIStatusError) -> str | None:
    return exc.response.headers.get("retry-after")


def error_text(exc: openai.APIError) -> str:
    """Everything of an SDK error a client could show or log."""
    response = getattr(exc, "response", None)
    raw = response.text if isinstance(exc, openai.APIStatusError) and response else ""
    return f"{exc} {exc.message} {exc.body} {raw}"


# ------------------------------------------------------------------------------------- Gemini


class TestGemini:
    async def test_plain_completion(self, start_proxy, gemini):
        gemini.then(json_reply(gemini_text("Bonjour !", prompt=11, output=4)))
        proxy = await start_proxy({"models": [gemini.model(GEMINI)]})
        answer, raw = await complete(proxy, GEMINI, gemini, temperature=0.3, max_tokens=50,
                                     messages=[{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Salut"}])
        assert answer.choices[0].message.content == "Bonjour !"
        assert answer.choices[0].finish_reason == "stop"
        assert answer.model == GEMINI
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens,
                answer.usage.total_tokens) == (11, 4, 15)
        assert raw.headers["x-aiproxy-provider"] == "gemini"
        [seen] = gemini.seen
        assert seen.path == "/v1beta/models/gemini-2.0-flash:generateContent"
        assert seen.query == {}  # the key travels in a header, never in the URL
        assert seen.body == {
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [{"role": "user", "parts": [{"text": "Salut"}]}],
            "generationConfig": {"temperature": 0.3, "maxOutputTokens": 50},
        }

    async def test_streaming(self, start_proxy, gemini):
        proxy = await start_proxy({"models": [gemini.model(GEMINI)]})
        chunks = await stream(proxy, GEMINI, stream_options={"include_usage": True})
        check_stream(chunks, model=GEMINI, text="Hello from Gemini", usage=(4, 3, 7))
        seen = gemini.seen[-1]
        assert seen.path == "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
        assert seen.query == {"alt": "sse"}
        # Without include_usage: the same text and finish, no usage chunk.
        check_stream(await stream(proxy, GEMINI), model=GEMINI, text="Hello from Gemini")

    async def test_tool_call_round_trip(self, start_proxy, gemini):
        gemini.then(json_reply(gemini_call("get_weather", {"city": "Paris"},
                                           signature="c2lnLWUyZQ==")),
                    json_reply(gemini_text("It is 21°C and clear in Paris.")))
        proxy = await start_proxy({"models": [gemini.model(GEMINI)]})
        call, final, arguments = await tool_round_trip(proxy, GEMINI)
        assert arguments == {"city": "Paris"}
        assert final.choices[0].message.content == "It is 21°C and clear in Paris."
        assert final.choices[0].finish_reason == "stop"
        first, second = gemini.seen
        assert first.body["tools"] == [{"functionDeclarations": [{
            "name": "get_weather", "description": "Current weather in a city",
            "parametersJsonSchema": WEATHER_PARAMS}]}]
        # The answer to the call comes back as Gemini's functionCall / functionResponse turns;
        # the thought signature survives the trip through the SDK.
        assert second.body["contents"] == [
            {"role": "user", "parts": [{"text": "What is the weather in Paris?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather",
                                                          "args": {"city": "Paris"}},
                                         "thoughtSignature": "c2lnLWUyZQ=="}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                             "response": RESULT}}]},
        ]

    async def test_rate_limit_with_retry_info(self, start_proxy, gemini):
        gemini.always(gemini.echo_error(429))
        proxy = await start_proxy({"models": [gemini.model(GEMINI)]})
        with pytest.raises(openai.RateLimitError) as info:
            await proxy.client.chat.completions.create(
                model=GEMINI, messages=[{"role": "user", "content": "Hi"}])
        assert info.value.status_code == 429
        assert retry_after(info.value) == "30"  # from google.rpc.RetryInfo retryDelay "30s"
        assert_clean(error_text(info.value), gemini)
        assert len(gemini.seen) == 1  # a wait longer than we hold a client: answered at once
        # The model is parked for the delay Gemini asked for: refused without asking again.
        with pytest.raises(openai.RateLimitError) as again:
            await proxy.client.chat.completions.create(
                model=GEMINI, messages=[{"role": "user", "content": "Hi"}])
        assert 1 <= int(retry_after(again.value)) <= 30
        assert len(gemini.seen) == 1

    async def test_embeddings_single_and_batch(self, start_proxy, gemini):
        proxy = await start_proxy({"models": [gemini.model(GEMINI_EMBED)]})
        # The SDK asks for base64 by default and decodes it.
        one = await proxy.client.embeddings.create(model=GEMINI_EMBED, input="hello",
                                                   dimensions=3)
        assert one.model == GEMINI_EMBED
        # Truncated to 3 dimensions, the vector is L2-normalised as OpenAI's are (Gemini says
        # to normalise truncated embeddings: https://ai.google.dev/gemini-api/docs/embeddings).
        raw = vector_for("hello")
        norm = sum(x * x for x in raw) ** 0.5
        assert one.data[0].embedding == pytest.approx([x / norm for x in raw])
        assert gemini.seen[-1].path == "/v1beta/models/gemini-embedding-001:embedContent"
        assert gemini.seen[-1].body == {"model": "models/gemini-embedding-001",
                                        "content": {"parts": [{"text": "hello"}]},
                                        "outputDimensionality": 3}
        batch = await proxy.client.embeddings.create(model=GEMINI_EMBED, input=["a", "bcd"],
                                                     encoding_format="float")
        assert [d.embedding for d in batch.data] == [vector_for("a"), vector_for("bcd")]
        assert [d.index for d in batch.data] == [0, 1]
        # Gemini's embed answers carry no token counts: an estimate (4 bytes a token, rounded
        # up, per input), so token-budgeted keys never embed for free.
        assert batch.usage.prompt_tokens == 2
        seen = gemini.seen[-1]
        assert seen.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
        assert seen.body == {"requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "bcd"}]}},
        ]}


# ------------------------------------------------------------------------------------- Cohere


class TestCohere:
    async def test_plain_completion(self, start_proxy, cohere):
        cohere.then(json_reply(cohere_text("LLM means large language model.", prompt=71,
                                           output=9)))
        proxy = await start_proxy({"models": [cohere.model(COHERE)]})
        answer, raw = await complete(proxy, COHERE, cohere, top_p=1.0, max_tokens=20,
                                     messages=[{"role": "developer", "content": "Be brief."},
                                               {"role": "user", "content": "What is an LLM?"}])
        assert answer.choices[0].message.content == "LLM means large language model."
        assert answer.choices[0].finish_reason == "stop"
        assert answer.model == COHERE
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens,
                answer.usage.total_tokens) == (71, 9, 80)
        assert raw.headers["x-aiproxy-provider"] == "cohere"
        [seen] = cohere.seen
        assert seen.path == "/v2/chat"
        assert seen.body == {
            "model": "command-r-plus",
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "What is an LLM?"}],
            "stream": False, "p": 0.99, "max_tokens": 20,
        }

    async def test_streaming(self, start_proxy, cohere):
        proxy = await start_proxy({"models": [cohere.model(COHERE)]})
        chunks = await stream(proxy, COHERE, stream_options={"include_usage": True})
        check_stream(chunks, model=COHERE, text="Hello from Cohere", usage=(186, 3, 189))
        assert cohere.seen[-1].body["stream"] is True
        assert cohere.seen[-1].headers["Accept"] == "text/event-stream"
        check_stream(await stream(proxy, COHERE), model=COHERE, text="Hello from Cohere")

    async def test_tool_call_round_trip(self, start_proxy, cohere):
        cohere.then(json_reply(cohere_tool_call("get_weather_1byjy32y4hvq", "get_weather",
                                                '{"city":"Paris"}')),
                    json_reply(cohere_text("It is 21°C and clear in Paris.")))
        proxy = await start_proxy({"models": [cohere.model(COHERE)]})
        call, final, arguments = await tool_round_trip(proxy, COHERE)
        assert arguments == {"city": "Paris"}
        assert call.id == "get_weather_1byjy32y4hvq"
        assert final.choices[0].message.content == "It is 21°C and clear in Paris."
        first, second = cohere.seen
        assert first.body["tools"] == [WEATHER_TOOL]
        # v2 messages: the assistant's tool_calls as they came, then a tool message by id.
        assert second.body["messages"] == [
            QUESTION,
            {"role": "assistant", "tool_calls": [{
                "id": "get_weather_1byjy32y4hvq", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "get_weather_1byjy32y4hvq",
             "content": json.dumps(RESULT)},
        ]

    async def test_rate_limit_with_retry_after(self, start_proxy, cohere):
        cohere.always(cohere.echo_error(429))
        proxy = await start_proxy({"models": [cohere.model(COHERE)]})
        with pytest.raises(openai.RateLimitError) as info:
            await proxy.client.chat.completions.create(
                model=COHERE, messages=[{"role": "user", "content": "Hi"}])
        assert retry_after(info.value) == "30"
        assert_clean(error_text(info.value), cohere)
        assert len(cohere.seen) == 1

    async def test_embeddings(self, start_proxy, cohere):
        proxy = await start_proxy({"models": [cohere.model(
            COHERE_EMBED, options={"input_type": "search_query"})]})
        answer = await proxy.client.embeddings.create(model=COHERE_EMBED,
                                                      input=["hello", "goodbye"])
        assert answer.model == COHERE_EMBED
        assert [d.embedding for d in answer.data] == [vector_for("hello"),
                                                      vector_for("goodbye")]
        assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (4, 4)
        [seen] = cohere.seen
        assert seen.path == "/v2/embed"
        assert seen.body == {"model": "embed-v4.0", "texts": ["hello", "goodbye"],
                             "input_type": "search_query", "embedding_types": ["float"]}


# ----------------------------------------------------------------------------------- GigaChat


class TestGigaChat:
    async def test_plain_completion_with_oauth(self, start_proxy, gigachat):
        gigachat.then(json_reply(giga_completion("Привет!", usage={
            "prompt_tokens": 18, "completion_tokens": 6, "total_tokens": 24})))
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        answer, raw = await complete(proxy, GIGA, gigachat, temperature=0.5,
                                     messages=[{"role": "user", "content": "Привет"}])
        assert answer.choices[0].message.content == "Привет!"
        assert answer.choices[0].finish_reason == "stop"
        assert answer.model == GIGA
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens,
                answer.usage.total_tokens) == (18, 6, 24)
        assert raw.headers["x-aiproxy-provider"] == "gigachat"
        [oauth] = gigachat.oauth_calls
        assert oauth.headers["Authorization"] == f"Basic {FakeGigaChat.AUTH_KEY}"
        assert oauth.body == f"scope={FakeGigaChat.SCOPE}"
        [seen] = gigachat.seen
        assert seen.path == "/api/v1/chat/completions"
        assert seen.headers["Authorization"] == f"Bearer {gigachat.issued[0]}"
        assert seen.body == {"model": "GigaChat", "temperature": 0.5,
                             "messages": [{"role": "user", "content": "Привет"}]}

    async def test_one_token_for_concurrent_requests_and_refresh_on_401(self, start_proxy,
                                                                        gigachat):
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        answers = await asyncio.gather(*[proxy.client.chat.completions.create(
            model=GIGA, messages=[{"role": "user", "content": f"q{i}"}]) for i in range(5)])
        assert {a.choices[0].message.content for a in answers} == {"Hello from GigaChat"}
        assert len(gigachat.oauth_calls) == 1
        # The token is revoked upstream: the next request gets a new one, transparently.
        gigachat.revoke()
        answer, _ = await complete(proxy, GIGA, gigachat)
        assert answer.choices[0].message.content == "Hello from GigaChat"
        assert len(gigachat.oauth_calls) == 2
        assert gigachat.seen[-1].headers["Authorization"] == f"Bearer {gigachat.issued[1]}"

    async def test_streaming(self, start_proxy, gigachat):
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        chunks = await stream(proxy, GIGA, stream_options={"include_usage": True})
        check_stream(chunks, model=GIGA, text="Hello from GigaChat", usage=(5, 3, 8))
        assert gigachat.seen[-1].body["stream"] is True
        assert "stream_options" not in gigachat.seen[-1].body
        check_stream(await stream(proxy, GIGA), model=GIGA, text="Hello from GigaChat")

    async def test_tool_call_round_trip(self, start_proxy, gigachat):
        gigachat.then(json_reply(giga_completion("", finish="function_call", function_call={
                          "name": "get_weather", "arguments": {"city": "Paris"}})),
                      json_reply(giga_completion("It is 21°C and clear in Paris.")))
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        _, final, arguments = await tool_round_trip(proxy, GIGA)
        assert arguments == {"city": "Paris"}
        assert final.choices[0].message.content == "It is 21°C and clear in Paris."
        first, second = gigachat.seen
        assert first.body["functions"] == [{"name": "get_weather",
                                            "description": "Current weather in a city",
                                            "parameters": WEATHER_PARAMS}]
        assert first.body["function_call"] == "auto"
        # GigaChat's own shape: function_call with object arguments, a "function" result.
        assert second.body["messages"] == [
            QUESTION,
            {"role": "assistant", "content": "",
             "function_call": {"name": "get_weather", "arguments": {"city": "Paris"}},
             # Sent back as GigaChat answered it (post-chat: functions_state_id).
             "functions_state_id": "77d3fb14-457a-46ba-937e-8d856156d003"},
            {"role": "function", "name": "get_weather", "content": json.dumps(RESULT)},
        ]

    async def test_rate_limit_with_retry_after(self, start_proxy, gigachat):
        gigachat.always(gigachat.echo_error(429))
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        with pytest.raises(openai.RateLimitError) as info:
            await proxy.client.chat.completions.create(
                model=GIGA, messages=[{"role": "user", "content": "Hi"}])
        assert retry_after(info.value) == "30"
        assert_clean(error_text(info.value), gigachat)

    async def test_oauth_refusal_never_shows_the_credentials(self, start_proxy, gigachat):
        async def refuse(request, body):
            # A careless OAuth server quoting the Basic credentials back.
            return web.json_response({"code": 6, "message": "credentials doesn't match: "
                                      + request.headers.get("Authorization", "")}, status=401)

        gigachat.oauth_reply = refuse
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        with pytest.raises(openai.APIStatusError) as info:
            await proxy.client.chat.completions.create(
                model=GIGA, messages=[{"role": "user", "content": "Hi"}])
        assert info.value.status_code == 502
        assert_clean(error_text(info.value), gigachat)
        assert gigachat.seen == []  # no API call without a token

    async def test_embeddings(self, start_proxy, gigachat):
        proxy = await start_proxy({"models": [gigachat.model(GIGA_EMBED)]})
        answer = await proxy.client.embeddings.create(model=GIGA_EMBED, input=["один", "два"])
        assert answer.model == GIGA_EMBED
        assert [d.embedding for d in answer.data] == [vector_for("один"), vector_for("два")]
        assert answer.usage.prompt_tokens == 6
        [seen] = gigachat.seen
        assert seen.path == "/api/v1/embeddings"
        assert seen.body == {"model": "Embeddings", "input": ["один", "два"]}


# --------------------------------------------------------------------------------- Cloudflare


class TestCloudflare:
    def config(self, cloudflare: FakeCloudflare) -> dict[str, Any]:
        return {"models": [cloudflare.model(CF_LLAMA, serves=["chat"]),
                           cloudflare.model(CF_FLUX, serves=["images"])]}

    async def test_plain_completion(self, start_proxy, cloudflare):
        proxy = await start_proxy(self.config(cloudflare))
        answer, raw = await complete(proxy, CF_LLAMA, cloudflare, max_tokens=64, seed=7)
        assert answer.choices[0].message.content == "Hello from Workers AI"
        assert answer.choices[0].finish_reason == "stop"
        assert answer.model == CF_LLAMA
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens,
                answer.usage.total_tokens) == (12, 4, 16)
        assert raw.headers["x-aiproxy-provider"] == "cloudflare"
        [seen] = cloudflare.seen
        assert seen.path == f"/client/v4/accounts/{CF_ACCOUNT}/ai/run/{CF_LLAMA_ID}"
        assert seen.body == {"messages": [{"role": "user", "content": "Hi"}],
                             "max_tokens": 64, "seed": 7}

    async def test_streaming(self, start_proxy, cloudflare):
        proxy = await start_proxy(self.config(cloudflare))
        chunks = await stream(proxy, CF_LLAMA, stream_options={"include_usage": True})
        check_stream(chunks, model=CF_LLAMA, text="Hello from Workers AI", usage=(8, 3, 11))
        assert cloudflare.seen[-1].body == {"messages": [{"role": "user", "content": "Hi"}],
                                            "stream": True}
        check_stream(await stream(proxy, CF_LLAMA), model=CF_LLAMA,
                     text="Hello from Workers AI")

    async def test_tool_call_round_trip(self, start_proxy, cloudflare):
        cloudflare.then(
            json_reply(cf_envelope({"response": None, "tool_calls": [
                {"name": "get_weather", "arguments": {"city": "Paris"}}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}})),
            json_reply(cf_envelope({"response": "It is 21°C and clear in Paris."})))
        proxy = await start_proxy(self.config(cloudflare))
        call, final, arguments = await tool_round_trip(proxy, CF_LLAMA)
        assert arguments == {"city": "Paris"}
        assert final.choices[0].message.content == "It is 21°C and clear in Paris."
        first, second = cloudflare.seen
        assert first.body == {"messages": [QUESTION], "tools": [WEATHER_TOOL]}
        # Workers AI takes OpenAI-shaped history: the call and the tool result by id. (Its
        # schema wants a string content on every message: "" is as good as none here.)
        question, assistant, tool = second.body["messages"]
        assert question == QUESTION
        assert assistant.pop("content", "") == ""
        assert assistant == {"role": "assistant", "tool_calls": [{
            "id": call.id, "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}
        assert tool == {"role": "tool", "tool_call_id": call.id, "content": json.dumps(RESULT)}

    async def test_rate_limit_with_retry_after(self, start_proxy, cloudflare):
        cloudflare.always(cloudflare.echo_error(429))
        proxy = await start_proxy(self.config(cloudflare))
        with pytest.raises(openai.RateLimitError) as info:
            await proxy.client.chat.completions.create(
                model=CF_LLAMA, messages=[{"role": "user", "content": "Hi"}])
        assert retry_after(info.value) == "30"
        assert_clean(error_text(info.value), cloudflare)

    async def test_images_generate_b64_json(self, start_proxy, cloudflare):
        proxy = await start_proxy(self.config(cloudflare))
        answer = await proxy.client.images.generate(
            model=CF_FLUX, prompt="a cyberpunk lizard", size="1024x1024",
            response_format="b64_json", extra_body={"steps": 4})
        [image] = answer.data
        assert base64.b64decode(image.b64_json) == JPEG
        [seen] = cloudflare.seen
        assert seen.path == f"/client/v4/accounts/{CF_ACCOUNT}/ai/run/{CF_FLUX_ID}"
        # flux-1-schnell takes only prompt and steps (models/flux-1-schnell/): size is dropped.
        assert seen.body == {"prompt": "a cyberpunk lizard", "steps": 4}

    async def test_old_image_endpoint_returns_the_bytes(self, start_proxy, cloudflare):
        proxy = await start_proxy(self.config(cloudflare))
        for payload in ({"model": CF_FLUX, "prompt": "a red square"},
                        {"model": "all", "inputs": "a red square"}):
            async with proxy.http.post(proxy.url("/image"), headers=proxy.auth,
                                       json=payload) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "image/jpeg"
                assert resp.headers["x-aiproxy-model"] == CF_FLUX
                assert await resp.read() == JPEG
        assert [s.body for s in cloudflare.seen] == [{"prompt": "a red square"}] * 2

    async def test_image_rate_limit(self, start_proxy, cloudflare):
        cloudflare.always(json_reply(cf_failure(3036, "daily free allocation used up"), 429,
                                     {"Retry-After": "30"}))
        proxy = await start_proxy(self.config(cloudflare))
        with pytest.raises(openai.RateLimitError) as info:
            await proxy.client.images.generate(model=CF_FLUX, prompt="x",
                                               response_format="b64_json")
        assert retry_after(info.value) == "30"


# ------------------------------------------------------------------- failover across providers


class TestFailover:
    async def test_rate_limited_model_falls_over_to_the_next_in_the_group(
            self, start_proxy, gemini, cohere):
        gemini.always(json_reply(gemini_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.",
                                              retry_info(30)), 429))
        proxy = await start_proxy({"models": [gemini.model(GEMINI, priority=1),
                                              cohere.model(COHERE, priority=2)],
                                   "groups": {"pool": [GEMINI, COHERE]}})
        answer, raw = await complete(proxy, "pool", gemini, cohere)
        assert answer.choices[0].message.content == "Hello from Cohere"
        assert answer.model == COHERE
        assert raw.headers["x-aiproxy-model"] == COHERE
        assert raw.headers["x-aiproxy-attempts"] == "2"
        assert len(gemini.seen) == 1 and len(cohere.seen) == 1
        # Gemini is parked for its retry delay: the next request goes straight to Cohere.
        await complete(proxy, "pool", gemini, cohere)
        assert len(gemini.seen) == 1 and len(cohere.seen) == 2

    async def test_stream_falls_over_before_the_first_chunk(self, start_proxy, gigachat,
                                                            cloudflare):
        gigachat.always(gigachat.echo_error(500))
        proxy = await start_proxy({"models": [
            gigachat.model(GIGA, priority=1), cloudflare.model(CF_LLAMA, priority=2)],
            "groups": {"pool": [GIGA, CF_LLAMA]}})
        chunks = await stream(proxy, "pool", stream_options={"include_usage": True})
        check_stream(chunks, model=CF_LLAMA, text="Hello from Workers AI", usage=(8, 3, 11))
        assert len(gigachat.seen) == 2  # a 5xx: one quick retry on the same model, then over

    async def test_bad_credentials_fall_over_and_are_never_shown(self, start_proxy, cohere,
                                                                 cloudflare):
        proxy = await start_proxy({"models": [
            {**cohere.model(COHERE, priority=1), "token": "wrong-cohere-key-000"},
            cloudflare.model(CF_LLAMA, priority=2)], "groups": {"pool": [COHERE, CF_LLAMA]}})
        answer, _ = await complete(proxy, "pool", cohere, cloudflare)
        assert answer.model == CF_LLAMA
        # Alone, the misconfigured model is a 502 for the client, naming no key.
        with pytest.raises(openai.InternalServerError) as info:
            await proxy.client.chat.completions.create(
                model=COHERE, messages=[{"role": "user", "content": "Hi"}])
        assert info.value.status_code == 502
        assert "wrong-cohere-key-000" not in error_text(info.value)
        assert_clean(error_text(info.value), cohere, cloudflare)


# ------------------------------------------------------------------- credentials never leak

NATIVE = {
    "gemini": (FakeGemini, GEMINI),
    "cohere": (FakeCohere, COHERE),
    "gigachat": (FakeGigaChat, GIGA),
    "cloudflare": (FakeCloudflare, CF_LLAMA),
}


@pytest.fixture(params=list(NATIVE))
async def native(request: Any, aiohttp_server: Any) -> tuple[Any, str]:
    """Each native fake in turn, with the model name configured for it."""
    cls, model = NATIVE[request.param]
    return await cls.start(aiohttp_server), model


@pytest.mark.parametrize(("status", "exc_type", "client_status"), [
    (400, openai.BadRequestError, 400),
    (401, openai.InternalServerError, 502),
    (429, openai.RateLimitError, 429),
    (500, openai.InternalServerError, 502),
])
async def test_upstream_error_quoting_credentials_is_scrubbed(
        start_proxy, native, status, exc_type, client_status):
    fake, model = native
    fake.always(fake.echo_error(status))
    proxy = await start_proxy({"models": [fake.model(model)]})
    with pytest.raises(exc_type) as info:
        await proxy.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}])
    assert info.value.status_code == client_status
    assert fake.seen  # the upstream was asked, and quoted the credentials back
    assert_clean(error_text(info.value), fake)


async def test_mid_stream_error_quoting_credentials_is_scrubbed(start_proxy, native):
    fake, model = native
    fake.always(fake.echo_stream_error())
    proxy = await start_proxy({"models": [fake.model(model)]})
    chunks = await proxy.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], stream=True)
    text = ""
    with pytest.raises(openai.APIError) as info:
        async for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text == "Partial"  # what came before the failure reached the client
    assert "interrupted" in info.value.message
    assert_clean(error_text(info.value), fake)
    assert len(fake.seen) == 1  # no retry once text has gone out


async def test_streamed_tool_call_accumulates_in_the_sdk(start_proxy, native):
    """The SDK's stream helper assembles the call from the chunks (Cohere's arguments arrive
    in pieces; the others send a call whole)."""
    fake, model = native
    fake.then(fake.tool_call_stream("get_weather", {"city": "Paris"}))
    proxy = await start_proxy({"models": [fake.model(model)]})
    async with proxy.client.chat.completions.stream(
            model=model, messages=[QUESTION], tools=[WEATHER_TOOL],
            stream_options={"include_usage": True}) as events:
        final = await events.get_final_completion()
    assert final.model == model
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.id and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert final.usage is not None and final.usage.total_tokens > 0
