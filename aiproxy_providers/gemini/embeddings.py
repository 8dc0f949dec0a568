"""OpenAI embeddings requests as Gemini ``EmbedContentRequest``s, and their answers.

https://ai.google.dev/api/embeddings and https://ai.google.dev/gemini-api/docs/embeddings
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from aiproxy.provider import Parameters, bad_request, embedding_texts, protocol_error
from aiproxy_providers.gemini.request import PROVIDER, TASK_TYPES, task_type

__all__ = ["BATCH_LIMIT", "EMBEDDING_PARAMETERS", "EmbedPlan", "estimate_tokens", "plan",
           "vector"]

EMBEDDING_PARAMETERS = Parameters(PROVIDER, supported={"dimensions", "encoding_format"},
                                  ignored={"user"}, extensions={"task_type"}, api="embeddings")

#: batchEmbedContents takes at most this many requests
#: (https://ai.google.dev/api/embeddings#method:-models.batchembedcontents).
BATCH_LIMIT = 100
#: Characters (UTF-8 bytes) per token for the usage estimate: Google's rule of thumb for Gemini
#: models (https://ai.google.dev/gemini-api/docs/tokens).
BYTES_PER_TOKEN = 4


@attrs.frozen
class EmbedPlan:
    """What one embeddings request becomes: an EmbedContentRequest per input text."""

    requests: tuple[dict[str, Any], ...]
    batch: bool  # the input was a list: batchEmbedContents, even for one text
    normalise: bool  # dimensions given: Gemini's truncated vectors need unit length
    prompt_tokens: int


def estimate_tokens(text: str) -> int:
    """About how many tokens ``text`` is: at least 1 when it is not empty."""
    return math.ceil(len(text.encode()) / BYTES_PER_TOKEN)


def plan(body: Mapping[str, Any], model_path: str, default_task: str | None) -> EmbedPlan:
    EMBEDDING_PARAMETERS.check(body)
    texts = embedding_texts(body, provider=PROVIDER)
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int)
                                   or isinstance(dimensions, bool) or dimensions < 1):
        raise bad_request("dimensions must be a positive integer", param="dimensions")
    task = default_task
    if body.get("task_type") is not None:
        task = task_type(body["task_type"])
        if task is None:
            raise bad_request(f"task_type must be one of {', '.join(sorted(TASK_TYPES))}",
                              param="task_type")

    def one(text: str) -> dict[str, Any]:
        request: dict[str, Any] = {"model": model_path, "content": {"parts": [{"text": text}]}}
        if task is not None:
            request["taskType"] = task.upper()
        if dimensions is not None:
            request["outputDimensionality"] = dimensions
        return request

    # Gemini's embed answers carry no token counts: an estimate, so token budgets count them.
    return EmbedPlan(tuple(one(text) for text in texts), isinstance(body["input"], list),
                     dimensions is not None, sum(estimate_tokens(t) for t in texts))


def vector(embedding: Any, *, normalise: bool) -> list[float]:
    """A ContentEmbedding's ``values``; L2-normalised when ``normalise``.

    Only Gemini's full-size embeddings come normalised; truncated ones must be normalised by
    the caller (https://ai.google.dev/gemini-api/docs/embeddings, "Ensuring quality for smaller
    dimensions"). OpenAI's are always unit length, and normalising a unit vector changes
    nothing, so any ``dimensions`` do.
    """
    values = embedding.get("values") if isinstance(embedding, dict) else None
    if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise protocol_error("Gemini: an embedding has no list of numbers")
    if not normalise:
        return values
    norm = math.sqrt(math.fsum(v * v for v in values))
    return [v / norm for v in values] if norm else [float(v) for v in values]
