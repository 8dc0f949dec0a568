"""Gemini through the whole proxy: the openai SDK -> aiproxy -> a fake Gemini API on 127.0.0.1.

Each test drives one translation fixed for issue 12 and checks both what the client sees and what
Gemini received. The fake (tests/provider_fakes.FakeGemini) answers in the documented v1beta
shapes; answers a test needs beyond its defaults are written here, each beside its doc page.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import struct
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.provider_fakes import FakeGemini, Seen, json_reply, sse_reply, vector_for

FLASH = "gemini/gemini-2.5-flash"
EMBED = "gemini/gemini-embedding-001"
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}
RESULT = {"temp_c": 21, "sky": "clear"}


@pytest.fixture
async def gemini(aiohttp_server: Any) -> FakeGemini:
    return await FakeGemini.start(aiohttp_server)


async def proxy_for(start_proxy: Any, gemini: FakeGemini, *names: str,
                    **extra: Any) -> Any:
    return await start_proxy({"models": [gemini.model(name, **extra) for name in names]})


def answer(parts: list[dict[str, Any]], *, usage: dict[str, Any] | None = None,
           **candidate: Any) -> dict[str, Any]:
    """A GenerateContentResponse with one candidate (https://ai.google.dev/api/generate-content)."""
    data: dict[str, Any] = {"candidates": [{"content": {"parts": parts, "role": "model"},
                                            "finishReason": "STOP", "index": 0, **candidate}],
                            "modelVersion": "gemini-2.5-flash"}
    if usage is not None:
        data["usageMetadata"] = usage
    return data


def generation_config(seen: Seen) -> dict[str, Any]:
    config: dict[str, Any] = seen.body.get("generationConfig", {})
    return config


# ---------------------------------------------------------------------- defect 4: media by URL


class TestMediaUrls:
    # https://ai.google.dev/gemini-api/docs/file-input-methods (public, signed and Files API
    # URLs as fileData); FileData.mimeType is optional in the API definition
    # (googleapis google/ai/generativelanguage/v1beta/content.proto).
    async def test_https_and_files_api_urls_become_file_data(self, start_proxy, gemini):
        proxy = await proxy_for(start_proxy, gemini, FLASH)
        files_uri = "https://generativelanguage.googleapis.com/v1beta/files/abc-123"
        got = await proxy.client.chat.completions.create(model=FLASH, messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "Compare these."},
                {"type": "image_url",
                 "image_url": {"url": "https://example.com/cats/tabby.JPG?w=800", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": files_uri}},
                {"type": "image_url", "image_url": {"url": "https://example.com/render"}},
                {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg=="}},
            ]}])
        assert got.choices[0].message.content == "Hello from Gemini"
        assert gemini.seen[-1].body["contents"] == [{"role": "user", "parts": [
            {"text": "Compare these."},
            {"fileData": {"fileUri": "https://example.com/cats/tabby.JPG?w=800",
                          "mimeType": "image/jpeg"}},
            # No extension: no mimeType; a Files API file carries its own.
            {"fileData": {"fileUri": files_uri}},
            {"fileData": {"fileUri": "https://example.com/render"}},
            {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}},
        ]}]

    async def test_pdf_url_in_a_file_part(self, start_proxy, gemini):
        proxy = await proxy_for(start_proxy, gemini, FLASH)
        await proxy.client.chat.completions.create(model=FLASH, messages=[
            {"role": "user", "content": [
                {"type": "file", "file": {"file_data": "https://example.com/paper.pdf"}},
                {"type": "text", "text": "Summarise"}]}])
        assert gemini.seen[-1].body["contents"][0]["parts"][0] == {
            "fileData": {"fileUri": "https://example.com/paper.pdf",
                         "mimeType": "application/pdf"}}

    async def test_plain_http_is_refused(self, start_proxy, gemini):
        proxy = await proxy_for(start_proxy, gemini, FLASH)
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.chat.completions.create(model=FLASH, messages=[
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}])
        assert info.value.body["param"] == "messages[0].content[0]"
        assert "https://" in info.value.body["message"]
        assert gemini.seen == []


# ------------------------------------------------------------- defect 21: function call ids


class TestFunctionCallIds:
    # https://ai.google.dev/api/caching#FunctionCall: "If populated, the client to execute the
    # functionCall and return the response with the matching id"; FunctionResponse.id is "the
    # id of the function call this response is for"
    # (https://ai.google.dev/gemini-api/docs/function-calling).
    async def round_trip(self, proxy: Any) -> Any:
        first = await proxy.client.chat.completions.create(model=FLASH, messages=[QUESTION],
                                                           tools=[WEATHER_TOOL])
        [call] = first.choices[0].message.tool_calls
        await proxy.client.chat.completions.create(model=FLASH, tools=[WEATHER_TOOL], messages=[
            QUESTION, first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps(RESULT)}])
        return call

    async def test_gemini_id_goes_back_on_call_and_response(self, start_proxy, gemini):
        gemini.then(json_reply(answer([{"functionCall": {
            "id": "fc-7d1x", "name": "get_weather", "args": {"city": "Paris"}}}])))
        proxy = await proxy_for(start_proxy, gemini, FLASH)
        call = await self.round_trip(proxy)
        assert call.id == "fc-7d1x"
        assert gemini.seen[1].body["contents"][1:] == [
            {"role": "model", "parts": [{"functionCall": {
                "name": "get_weather", "args": {"city": "Paris"}, "id": "fc-7d1x"}}]},
            {"role": "user", "parts": [{"functionResponse": {
                "name": "get_weather", "response": RESULT, "id": "fc-7d1x"}}]},
        ]

    async def test_an_id_we_made_up_is_not_sent(self, start_proxy, gemini):
        gemini.then(json_reply(answer([{"functionCall": {
            "name": "get_weather", "args": {"city": "Paris"}}}])))
        proxy = await proxy_for(start_proxy, gemini, FLASH)
        call = await self.round_trip(proxy)
        assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
        model_turn, tool_turn = gemini.seen[1].body["contents"][1:]
        assert "id" not in model_turn["parts"][0]["functionCall"]
        assert "id" not in tool_turn["parts"][0]["functionResponse"]


# ------------------------------------------------------------------------ defect 22: usage


class TestUsage:
    # UsageMetadata (https://ai.google.dev/api/generate-content#UsageMetadata): totalTokenCount
    # is prompt + toolUsePrompt + candidates + thoughts; cachedContentTokenCount is part of the
    # prompt.
    USAGE = {"promptTokenCount": 100, "cachedContentTokenCount": 40,
             "toolUsePromptTokenCount": 30, "candidatesTokenCount": 20,
             "thoughtsTokenCount": 50, "totalTokenCount": 200}

    def check(self, usage: Any) -> None:
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (130, 70, 200)
        assert usage.prompt_tokens + usage.completion_tokens == usage.total_tokens
        assert usage.prompt_tokens_details.cached_tokens == 40
        assert usage.completion_tokens_details.reasoning_tokens == 50

    async def test_plain(self, start_proxy, gemini):
        gemini.then(json_reply(answer([{"text": "Sunny."}], usage=self.USAGE)))
        proxy = await proxy_for(start_proxy, gemini, FLASH)
        got = await proxy.client.chat.completions.create(model=FLASH, messages=[QUESTION])
        self.check(got.usage)

    async def test_streamed(self, start_proxy, gemini):
        first = answer([{"text": "Sun"}], usage={"promptTokenCount": 100,
                                                  "totalTokenCount": 100})
        del first["candidates"][0]["finishReason"]
        gemini.then(sse_reply([first, answer([{"text": "ny."}], usage=self.USAGE)],
                              sep=b"\r\n\r\n"))
        proxy = await proxy_for(start_proxy, gemini, FLASH)
        chunks = [c async for c in await proxy.client.chat.completions.create(
            model=FLASH, messages=[QUESTION], stream=True,
            stream_options={"include_usage": True})]
        self.check(chunks[-1].usage)


# ------------------------------------------------------------- defect 16: reasoning_effort


class TestReasoningEffort:
    # ThinkingConfig (https://ai.google.dev/gemini-api/docs/thinking): thinkingBudget on 2.5
    # (0 = off; 2.5 Pro cannot turn it off, 128 at least), thinkingLevel on Gemini 3 (no off;
    # Pro has no MINIMAL, 3 Pro only LOW/HIGH). Budgets as Google's OpenAI-compatible endpoint
    # maps low/medium/high (https://ai.google.dev/gemini-api/docs/openai).
    @pytest.mark.parametrize(("model", "effort", "thinking"), [
        ("gemini-2.5-flash", "none", {"thinkingBudget": 0}),
        ("gemini-2.5-flash", "minimal", {"thinkingBudget": 1024}),
        ("gemini-2.5-flash", "low", {"thinkingBudget": 1024}),
        ("gemini-2.5-flash", "medium", {"thinkingBudget": 8192}),
        ("gemini-2.5-flash-lite", "high", {"thinkingBudget": 24576}),
        ("gemini-2.5-pro", "none", {"thinkingBudget": 128}),
        ("gemini-flash-latest", "low", {"thinkingBudget": 1024}),
        ("gemini-3-flash-preview", "none", {"thinkingLevel": "MINIMAL"}),
        ("gemini-3-flash-preview", "minimal", {"thinkingLevel": "MINIMAL"}),
        ("gemini-3-flash-preview", "medium", {"thinkingLevel": "MEDIUM"}),
        ("gemini-3-flash-preview", "xhigh", {"thinkingLevel": "HIGH"}),
        ("gemini-3-pro-preview", "none", {"thinkingLevel": "LOW"}),
        ("gemini-3-pro-preview", "medium", {"thinkingLevel": "HIGH"}),
        ("gemini-3.1-pro-preview", "minimal", {"thinkingLevel": "LOW"}),
        ("gemini-3.1-pro-preview", "medium", {"thinkingLevel": "MEDIUM"}),
        ("gemini-2.0-flash", "high", None),  # no thinking: nothing to set
    ])
    async def test_mapping(self, start_proxy, gemini, model, effort, thinking):
        name = f"gemini/{model}"
        proxy = await proxy_for(start_proxy, gemini, name)
        await proxy.client.chat.completions.create(model=name, messages=[QUESTION],
                                                   reasoning_effort=effort)
        assert gemini.seen[-1].path == f"/v1beta/models/{model}:generateContent"
        assert generation_config(gemini.seen[-1]).get("thinkingConfig") == thinking

    async def test_absent_sends_nothing(self, start_proxy, gemini):
        proxy = await proxy_for(start_proxy, gemini, FLASH)
        await proxy.client.chat.completions.create(model=FLASH, messages=[QUESTION])
        assert "generationConfig" not in gemini.seen[-1].body

    async def test_unknown_effort_is_a_400(self, start_proxy, gemini):
        proxy = await proxy_for(start_proxy, gemini, FLASH)
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.chat.completions.create(
                model=FLASH, messages=[QUESTION], extra_body={"reasoning_effort": "lots"})
        assert info.value.body["param"] == "reasoning_effort"
        assert gemini.seen == []


# --------------------------------------------------------------------- defect 18: logprobs


def logprobs_result(*steps: tuple[str, float, list[tuple[str, float]]]) -> dict[str, Any]:
    """Candidate.logprobsResult (https://ai.google.dev/api/generate-content#LogprobsResult)."""
    return {
        "chosenCandidates": [{"token": t, "logProbability": p} for t, p, _ in steps],
        "topCandidates": [{"candidates": [{"token": t, "logProbability": p} for t, p in top]}
                          for _, _, top in steps],
    }


class TestLogprobs:
    # GenerationConfig.responseLogprobs / logprobs and Candidate.logprobsResult
    # (https://ai.google.dev/api/generate-content#generationconfig).
    async def test_plain(self, start_proxy, gemini):
        gemini.then(json_reply(answer(
            [{"text": "Hi there"}], avgLogprobs=-0.2,
            logprobsResult=logprobs_result(("Hi", -0.1, [("Hi", -0.1), ("Hello", -2.5)]),
                                           (" there", -0.3, [(" there", -0.3), ("!", -1.5)])))))
        proxy = await proxy_for(start_proxy, gemini, FLASH)
        got = await proxy.client.chat.completions.create(model=FLASH, messages=[QUESTION],
                                                         logprobs=True, top_logprobs=2)
        assert generation_config(gemini.seen[-1]) == {"responseLogprobs": True, "logprobs": 2}
        content = got.choices[0].logprobs.content
        assert [(t.token, t.logprob, t.bytes) for t in content] == [
            ("Hi", -0.1, [72, 105]), (" there", -0.3, list(b" there"))]
        assert [(t.token, t.logprob) for t in content[0].top_logprobs] == [
            ("Hi", -0.1), ("Hello", -2.5)]

    async def test_without_top_logprobs(self, start_proxy, gemini):
        proxy = await proxy_for(start_proxy, gemini, FLASH)
        got = await proxy.client.chat.completions.create(model=FLASH, messages=[QUESTION],
                                                         logprobs=True)
        assert generation_config(gemini.seen[-1]) == {"responseLogprobs": True}
        assert got.choices[0].logprobs is None  # the model sent no logprobsResult

    async def test_streamed(self, start_proxy, gemini):
        first = answer([{"text": "Hi"}],
                       logprobsResult=logprobs_result(("Hi", -0.1, [("Hi", -0.1)])))
        del first["candidates"][0]["finishReason"]
        last = answer([{"text": "!"}], logprobsResult=logprobs_result(("!", -0.7, [("!", -0.7)])))
        gemini.then(sse_reply([first, last], sep=b"\r\n\r\n"))
        proxy = await proxy_for(start_proxy, gemini, FLASH)
        chunks = [c async for c in await proxy.client.chat.completions.create(
            model=FLASH, messages=[QUESTION], stream=True, logprobs=True, top_logprobs=1)]
        tokens = [(t.token, t.logprob) for c in chunks if c.choices and c.choices[0].logprobs
                  for t in c.choices[0].logprobs.content or []]
        assert tokens == [("Hi", -0.1), ("!", -0.7)]

    @pytest.mark.parametrize("extra", [{"top_logprobs": 2}, {"logprobs": True, "top_logprobs": 21}])
    async def test_bad_combinations_are_a_400(self, start_proxy, gemini, extra):
        proxy = await proxy_for(start_proxy, gemini, FLASH)
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.chat.completions.create(model=FLASH, messages=[QUESTION],
                                                       extra_body=extra)
        assert info.value.body["param"] == "top_logprobs"
        assert gemini.seen == []


# ------------------------------------------------------------- embeddings: 5, 13, 17 and 23


def texts_of(seen: Seen) -> list[str]:
    return [r["content"]["parts"][0]["text"] for r in seen.body["requests"]]


class TestEmbeddings:
    # batchEmbedContents takes at most 100 requests
    # (https://ai.google.dev/api/embeddings#method:-models.batchembedcontents).
    async def test_more_than_100_inputs_in_batches_of_100(self, start_proxy, gemini):
        async def slow_first_batch(request: web.Request, body: Any) -> web.StreamResponse:
            # The first batch answers last: the vectors must still come back in input order.
            if body["requests"][0]["content"]["parts"][0]["text"] == "x":
                await asyncio.sleep(0.1)
            return await json_reply({"embeddings": [
                {"values": vector_for(r["content"]["parts"][0]["text"])}
                for r in body["requests"]]})(request, body)

        gemini.always(slow_first_batch)
        proxy = await proxy_for(start_proxy, gemini, EMBED)
        inputs = ["x" * (i + 1) for i in range(250)]
        got = await proxy.client.embeddings.create(model=EMBED, input=inputs,
                                                   encoding_format="float")
        batches = gemini.calls("batchEmbedContents")
        assert sorted(len(b.body["requests"]) for b in batches) == [50, 100, 100]
        assert sorted(t for b in batches for t in texts_of(b)) == sorted(inputs)
        assert [d.index for d in got.data] == list(range(250))
        assert [d.embedding for d in got.data] == [vector_for(t) for t in inputs]
        tokens = sum(math.ceil(len(t) / 4) for t in inputs)
        assert (got.usage.prompt_tokens, got.usage.total_tokens) == (tokens, tokens)

    async def test_a_failed_batch_fails_the_request(self, start_proxy, gemini):
        async def refuse_the_short_batch(request: web.Request, body: Any) -> web.StreamResponse:
            if len(body["requests"]) < 100:
                return await json_reply({"error": {
                    "code": 400, "status": "INVALID_ARGUMENT",
                    "message": "Request contains an invalid argument."}}, status=400)(
                        request, body)
            return await json_reply({"embeddings": [{"values": [1.0]}] * 100})(request, body)

        gemini.always(refuse_the_short_batch)
        proxy = await proxy_for(start_proxy, gemini, EMBED)
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.embeddings.create(model=EMBED, input=["a"] * 150)
        assert info.value.body["message"].endswith("Request contains an invalid argument.")
        assert sorted(len(b.body["requests"]) for b in gemini.calls("batchEmbedContents")) == \
            [50, 100]

    # "For other dimensions, including 768 and 1536, you need to normalize the embeddings"
    # (https://ai.google.dev/gemini-api/docs/embeddings).
    async def test_truncated_embeddings_are_normalised(self, start_proxy, gemini):
        proxy = await proxy_for(start_proxy, gemini, EMBED)
        got = await proxy.client.embeddings.create(model=EMBED, input=["hello", "hi"],
                                                   dimensions=3, encoding_format="float")
        assert all(r["outputDimensionality"] == 3
                   for r in gemini.calls("batchEmbedContents")[0].body["requests"])
        for item, text in zip(got.data, ["hello", "hi"], strict=True):
            raw = vector_for(text)
            norm = math.sqrt(sum(v * v for v in raw))
            assert item.embedding == pytest.approx([v / norm for v in raw])
            assert math.fsum(v * v for v in item.embedding) == pytest.approx(1.0)

    async def test_normalised_through_base64_too(self, start_proxy, gemini):
        proxy = await proxy_for(start_proxy, gemini, EMBED)
        raw = await proxy.client.embeddings.with_raw_response.create(
            model=EMBED, input="hello", dimensions=3, encoding_format="base64")
        encoded = raw.http_response.json()["data"][0]["embedding"]
        values = struct.unpack("<3f", base64.b64decode(encoded))
        assert math.fsum(v * v for v in values) == pytest.approx(1.0, rel=1e-6)

    async def test_full_size_embeddings_are_left_alone(self, start_proxy, gemini):
        proxy = await proxy_for(start_proxy, gemini, EMBED)
        got = await proxy.client.embeddings.create(model=EMBED, input="hello",
                                                   encoding_format="float")
        assert got.data[0].embedding == vector_for("hello")

    # EmbedContentRequest.taskType (https://ai.google.dev/api/embeddings#tasktype).
    async def test_task_type_from_the_request(self, start_proxy, gemini):
        proxy = await proxy_for(start_proxy, gemini, EMBED, options={"task_type": "CLUSTERING"})
        await proxy.client.embeddings.create(model=EMBED, input=["a", "b"],
                                             extra_body={"task_type": "retrieval_document"})
        assert [r["taskType"] for r in gemini.seen[-1].body["requests"]] == \
            ["RETRIEVAL_DOCUMENT", "RETRIEVAL_DOCUMENT"]

    async def test_task_type_from_the_model_options(self, start_proxy, gemini):
        proxy = await proxy_for(start_proxy, gemini, EMBED, options={"task_type": "CLUSTERING"})
        await proxy.client.embeddings.create(model=EMBED, input="a")
        assert gemini.seen[-1].body == {"model": "models/gemini-embedding-001",
                                        "content": {"parts": [{"text": "a"}]},
                                        "taskType": "CLUSTERING"}

    async def test_unknown_task_type_is_a_400(self, start_proxy, gemini):
        proxy = await proxy_for(start_proxy, gemini, EMBED)
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.embeddings.create(model=EMBED, input="a",
                                                 extra_body={"task_type": "SUMMARIES"})
        assert info.value.body["param"] == "task_type"
        assert gemini.seen == []

    # The Gemini API's embed answers carry no token counts
    # (https://ai.google.dev/api/embeddings#EmbedContentResponse): usage is an estimate of
    # 4 bytes a token (https://ai.google.dev/gemini-api/docs/tokens), never 0 for a text.
    async def test_usage_is_estimated(self, start_proxy, gemini):
        proxy = await proxy_for(start_proxy, gemini, EMBED)
        got = await proxy.client.embeddings.create(model=EMBED, input="hello world")
        assert (got.usage.prompt_tokens, got.usage.total_tokens) == (3, 3)
        got = await proxy.client.embeddings.create(model=EMBED, input=["a", "héllo"])
        assert got.usage.prompt_tokens == 1 + 2  # "héllo" is 6 bytes
