"""Google Gemini provider: OpenAI chat completions and embeddings over the Gemini API (v1beta).

Gemini speaks its own dialect (``contents``/``parts``, ``generationConfig``,
``functionDeclarations``): ``request`` maps an OpenAI request, ``answer`` maps answers, stream
events and errors back, ``embeddings`` does embeddings. References:

- generateContent / streamGenerateContent: https://ai.google.dev/api/generate-content
- Embeddings: https://ai.google.dev/api/embeddings
- Errors: https://ai.google.dev/gemini-api/docs/troubleshooting
- The API definition itself: https://github.com/googleapis/googleapis/tree/master/google/ai/generativelanguage/v1beta
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import attrs
import orjson

from aiproxy.provider import (
    Capability,
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelConfig,
    Provider,
    StreamAssembler,
    UpstreamError,
    assistant_message,
    chat_completion,
    classify,
    embedding_encoding,
    embeddings_answer,
    json_object,
    protocol_error,
    read_body,
)
from aiproxy_providers.gemini.answer import (
    ERRORS,
    candidate_index,
    check_blocked,
    failure,
    finish_reason,
    logprobs,
    read_parts,
    usage,
)
from aiproxy_providers.gemini.embeddings import BATCH_LIMIT, EMBEDDING_PARAMETERS, plan, vector
from aiproxy_providers.gemini.request import (
    CHAT_PARAMETERS,
    PROVIDER,
    GeminiOptions,
    build_request,
    signature_of,
)

__all__ = ["GeminiOptions", "GeminiProvider"]


class GeminiProvider(Provider):
    """Chat (plain and streamed) and embeddings on the Gemini API, keyed by ``x-goog-api-key``."""

    plugin_api_version = 2
    capabilities = frozenset({Capability.CHAT, Capability.EMBEDDINGS})
    default_url = "https://generativelanguage.googleapis.com/v1beta"
    options_type = GeminiOptions
    chat_parameters = CHAT_PARAMETERS
    embedding_parameters = EMBEDDING_PARAMETERS

    #: Thought signatures remembered per tool call id, for clients that drop extra_content.
    SIGNATURES_KEPT = 2048
    #: batchEmbedContents calls of one embeddings request in flight at once.
    BATCH_CONCURRENCY = 4

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(model, session)
        self._signatures: OrderedDict[str, str] = OrderedDict()
        # The old proxy's url: could end in /models; both forms name the same API root.
        base = self.url.rstrip("/").removesuffix("/models")
        model_id = self.upstream_model
        if not model_id.startswith(("models/", "tunedModels/")):
            model_id = f"models/{model_id}"
        self.model_path = model_id
        resource = f"{base}/{quote(model_id, safe='/')}"
        self.chat_url = f"{resource}:generateContent"
        self.stream_url = f"{resource}:streamGenerateContent?alt=sse"
        self.embed_url = f"{resource}:embedContent"
        self.batch_embed_url = f"{resource}:batchEmbedContents"

    def _headers(self) -> dict[str, str]:
        # The key goes in a header, never the URL, so it cannot end up in logs of URLs.
        headers = {"Content-Type": "application/json"}
        if self.model.token:
            headers["x-goog-api-key"] = self.model.token
        return headers

    def _remember_signatures(self, calls: list[dict[str, Any]]) -> None:
        for call in calls:
            signature = signature_of(call)
            if signature:
                self._signatures[call["id"]] = signature
                while len(self._signatures) > self.SIGNATURES_KEPT:
                    self._signatures.popitem(last=False)

    def build_request(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The GenerateContentRequest for an OpenAI chat request body."""
        return build_request(body, self.model_path, self.options, self._signatures)

    def error_from_response(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError:
        """Gemini's error, a google.rpc.Status, through its error table (``answer.ERRORS``)."""
        read = failure(status, body, headers)
        return classify(attrs.evolve(read, message=self.redact(read.message)), ERRORS)

    async def _post_json(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        resp = await self.send("POST", url, data=orjson.dumps(payload), headers=self._headers())
        return json_object(await read_body(resp, provider=PROVIDER), provider=PROVIDER)

    # --- chat ---------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        data = await self._post_json(self.chat_url, self.build_request(request.body))
        check_blocked(data)
        candidates = data.get("candidates") or []
        if not isinstance(candidates, list):
            raise protocol_error("Gemini: candidates is not an array")
        with_logprobs = request.body.get("logprobs") is True
        choices = []
        for position, candidate in enumerate(candidates):
            text, calls = read_parts(candidate)
            self._remember_signatures(calls)
            choice = {"index": candidate_index(candidate, position),
                      "message": assistant_message(text, calls),
                      "finish_reason": finish_reason(candidate.get("finishReason"), bool(calls))}
            if with_logprobs:
                choice["logprobs"] = logprobs(candidate)
            choices.append(choice)
        if not choices:
            # Unblocked yet empty: answer an empty message rather than a choice-less reply.
            choices.append({"index": 0, "message": assistant_message(""),
                            "finish_reason": "stop"})
            if with_logprobs:
                choices[0]["logprobs"] = None
        return ChatResponse(chat_completion(self.model.name, choices,
                                            usage(data.get("usageMetadata"))))

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        payload = orjson.dumps(self.build_request(request.body))
        resp = await self.send("POST", self.stream_url, data=payload, headers=self._headers())
        out = StreamAssembler(self.model.name, include_usage=request.include_usage,
                              provider=PROVIDER, logprobs=request.body.get("logprobs") is True)
        out.usage = usage(None)  # until Gemini reports its own
        # Gemini has no [DONE]: the end is every candidate having a finishReason.
        async with out.read(resp, done=None, end="a finishReason") as events:
            async for event in events:
                for chunk in self._event_chunks(event.data, out):
                    yield chunk
        for chunk in out.end():
            yield chunk

    def _event_chunks(self, data: dict[str, Any], out: StreamAssembler) -> list[dict[str, Any]]:
        """The OpenAI chunks for one streamed GenerateContentResponse, validated as a whole."""
        error = data.get("error")
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            status = code if isinstance(code, int) and code >= 400 else 500
            raise self.error_from_response(status, orjson.dumps(data), {})
        check_blocked(data)
        if data.get("usageMetadata") is not None:
            out.usage = usage(data["usageMetadata"])  # cumulative: the last one is the total
        candidates = data.get("candidates") or []
        if not isinstance(candidates, list):
            raise protocol_error("Gemini: candidates is not an array")
        read = [read_parts(candidate) for candidate in candidates]  # all valid, or none sent
        chunks: list[dict[str, Any]] = []
        for position, (candidate, (text, calls)) in enumerate(zip(candidates, read,
                                                                  strict=True)):
            self._remember_signatures(calls)
            index = candidate_index(candidate, position)
            if out.finished(index):
                continue
            chunks += out.text(text, index, logprobs=logprobs(candidate) if text else None)
            for call in calls:
                # Gemini sends each function call whole, so one delta carries all of it.
                call_id, fn = call["id"], call["function"]
                extra = {k: v for k, v in call.items() if k not in ("id", "type", "function")}
                chunks += out.tool_call(fn["name"], fn["arguments"], id=call_id, index=index,
                                        **extra)
            if candidate.get("finishReason"):
                chunks += out.finish(finish_reason(candidate["finishReason"],
                                                   out.has_tool_calls(index)), index)
        return chunks

    # --- embeddings ---------------------------------------------------------------------

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        body = request.body
        options: GeminiOptions = self.options
        embed = plan(body, self.model_path, options.task_type)
        encoding = embedding_encoding(body)
        if embed.batch:
            embeddings = await self._batch_embed(list(embed.requests))
        else:
            embeddings = [(await self._post_json(self.embed_url, embed.requests[0]))
                          .get("embedding")]
        vectors = [vector(e, normalise=embed.normalise) for e in embeddings]
        return EmbeddingsResponse(embeddings_answer(vectors, model=self.model.name,
                                                    prompt_tokens=embed.prompt_tokens,
                                                    encoding=encoding))

    async def _batch_embed(self, requests: list[dict[str, Any]]) -> list[Any]:
        """The embeddings of ``requests``, in order, in batches of at most BATCH_LIMIT."""
        batches = [requests[i:i + BATCH_LIMIT] for i in range(0, len(requests), BATCH_LIMIT)]
        results: list[list[Any]] = [[] for _ in batches]
        slots = asyncio.Semaphore(self.BATCH_CONCURRENCY)

        async def run(number: int, batch: list[dict[str, Any]]) -> None:
            async with slots:
                data = await self._post_json(self.batch_embed_url, {"requests": batch})
            embeddings = data.get("embeddings")
            if not isinstance(embeddings, list) or len(embeddings) != len(batch):
                raise protocol_error("Gemini: the number of embeddings does not match the input")
            results[number] = embeddings

        try:
            # One failed batch fails the request and cancels the batches still running.
            async with asyncio.TaskGroup() as group:
                for number, batch in enumerate(batches):
                    group.create_task(run(number, batch))
        except* UpstreamError as failed:
            raise failed.exceptions[0] from None
        return [embedding for result in results for embedding in result]
