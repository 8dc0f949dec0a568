"""The embeddings and image checks, for providers that declare those capabilities."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from aiproxy.provider import (
    Capability,
    EmbeddingsResponse,
    ErrorKind,
    ImageResponse,
    image_media_type,
)
from aiproxy.testing.adapter import (
    EMBEDDING_INPUTS,
    ERROR_KINDS,
    IMAGE,
    IMAGE_PROMPT,
    ConformanceAdapter,
    embedding_for,
)
from aiproxy.testing.calls import embeddings_request, image_request
from aiproxy.testing.checks import answer_error, has_error
from aiproxy.testing.upstream import RecordedRequest
from aiproxy.testing.world import Check, ConformanceFailure, Run, answer, expect

__all__ = ["MEDIA_CHECKS"]


def _vector(value: Any, where: str) -> list[float]:
    """An embedding as a list: floats, or OpenAI's base64 of little-endian float32."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            raise ConformanceFailure(f"{where}: embedding is a string but not base64") from None
        expect(len(raw) % 4 == 0, f"{where}: base64 embedding is not float32 values")
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    expect(isinstance(value, list) and value and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value),
        f"{where}: embedding is {str(value)[:80]!r}, not a list of numbers")
    return [float(x) for x in value]


def _check_embeddings(data: Any, texts: Sequence[str], exact: bool, what: str) -> None:
    expect(isinstance(data, dict) and data.get("object") == "list",
           f"{what}: object is not 'list'")
    items = data.get("data")
    expect(isinstance(items, list) and len(items) == len(texts),
           f"{what}: {len(items) if isinstance(items, list) else items!r} embeddings for "
           f"{len(texts)} inputs")
    sizes = set()
    for i, (item, text) in enumerate(zip(items, texts, strict=True)):
        where = f"{what}: data[{i}]"
        expect(isinstance(item, dict) and item.get("object") == "embedding",
               f"{where}: object is not 'embedding'")
        expect(item.get("index") == i, f"{where}: index is {item.get('index')!r} (the inputs' "
               "order must be kept, also across batches)")
        vector = _vector(item.get("embedding"), where)
        sizes.add(len(vector))
        if exact:
            want = embedding_for(text)
            expect(len(vector) == len(want) and all(
                math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(vector, want,
                                                                                strict=True)),
                f"{where}: {vector} is not the upstream's vector {want} for {text!r}")
    expect(len(sizes) == 1, f"{what}: the vectors differ in length ({sorted(sizes)})")
    usage = data.get("usage")
    expect(isinstance(usage, dict), f"{what}: no usage object")
    for key in ("prompt_tokens", "total_tokens"):
        value = usage.get(key)
        expect(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
               f"{what}: usage.{key} is {value!r}, not a non-negative int")


async def _embed(run: Run, texts: str | list[str], **fields: Any) -> Any:
    run.fake.requests.clear()
    try:
        got = await run.provider.embeddings(embeddings_request(texts, **fields))
    except Exception as exc:  # noqa: BLE001 - a failure of the provider is a failed check
        raise ConformanceFailure(f"embeddings() raised {exc!r}") from None
    expect(isinstance(got, EmbeddingsResponse), "embeddings() did not return an "
           "EmbeddingsResponse")
    return got.data


async def _embeddings(run: Run) -> None:
    adapter = run.adapter
    expect(adapter.embeddings_paths or not adapter.has_upstream,
           "the adapter overrides answer_embeddings but lists no embeddings_paths")

    async def handler(request: web.Request) -> web.StreamResponse:
        return answer(adapter.answer_embeddings(await RecordedRequest.of(request)),
                      "answer_embeddings")

    run.serve(handler, adapter.embeddings_paths)
    exact = adapter.has_upstream
    texts = list(EMBEDDING_INPUTS)
    _check_embeddings(await _embed(run, texts), texts, exact, "a list of inputs")
    if adapter.has_upstream:
        run.expect_routed("embeddings()", adapter.embeddings_paths)
        sent = {s for r in run.calls_to(adapter.embeddings_paths) for s in _strings(r.json)}
        expect(all(t in sent for t in texts), "the upstream was not sent every input text")
    _check_embeddings(await _embed(run, texts[0]), texts[:1], exact, "a single string input")
    # The openai SDK asks for base64 unless told otherwise.
    _check_embeddings(await _embed(run, texts, encoding_format="base64"), texts, exact,
                      "encoding_format base64")


def _strings(value: Any) -> list[str]:
    """Every string in a JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _media_error_kind(adapter: ConformanceAdapter) -> ErrorKind | None:
    return next((k for k in ERROR_KINDS if has_error(adapter, k)), None)


async def _embeddings_error(run: Run) -> None:
    kind = _media_error_kind(run.adapter)
    assert kind is not None  # guaranteed by the skip

    async def handler(request: web.Request) -> web.StreamResponse:
        return await answer_error(run.adapter, kind, "conformance embeddings failure",
                                   request)

    run.serve(handler, run.adapter.embeddings_paths)
    try:
        await run.provider.embeddings(embeddings_request(list(EMBEDDING_INPUTS)))
        error: Exception | None = None
    except Exception as exc:  # noqa: BLE001 - judged below
        error = exc
    run.expect_error(error, kind, f"{kind.name} from the upstream (embeddings)")


async def _images(run: Run) -> None:
    adapter = run.adapter
    expect(adapter.image_paths or not adapter.has_upstream,
           "the adapter overrides answer_image but lists no image_paths")

    async def handler(request: web.Request) -> web.StreamResponse:
        return answer(adapter.answer_image(IMAGE, await RecordedRequest.of(request)),
                      "answer_image")

    run.serve(handler, adapter.image_paths)
    run.fake.requests.clear()
    try:
        got = await run.provider.images(image_request(IMAGE_PROMPT, n=1))
    except Exception as exc:  # noqa: BLE001 - a failure of the provider is a failed check
        raise ConformanceFailure(f"images() raised {exc!r}") from None
    expect(isinstance(got, ImageResponse), "images() did not return an ImageResponse")
    expect(isinstance(got.images, tuple) and len(got.images) == 1,
           f"images() gave {len(got.images)} images for n=1")
    data, media_type = got.images[0]
    expect(isinstance(data, bytes) and data, "the image is not bytes")
    expect(media_type == image_media_type(data),
           f"the media type {media_type!r} does not match the bytes "
           f"({image_media_type(data)!r})")
    if adapter.has_upstream:
        expect(data == IMAGE, "the image bytes are not the upstream's")
        sent = run.expect_one_call("images()", adapter.image_paths)
        expect(IMAGE_PROMPT.encode() in sent.raw, "the upstream was not sent the prompt")


def _skip(capability: Capability, method: str) -> Any:
    def skip(adapter: ConformanceAdapter) -> str | None:
        if capability not in adapter.provider.capabilities:
            return f"the provider does not declare Capability.{capability.name}"
        if adapter.has_upstream and (getattr(type(adapter), method)
                                     is getattr(ConformanceAdapter, method)):
            return f"the adapter describes no {capability.value} answer ({method} not overridden)"
        return None
    return skip


def _error_skip(adapter: ConformanceAdapter) -> str | None:
    reason = _skip(Capability.EMBEDDINGS, "answer_embeddings")(adapter)
    if reason:
        return str(reason)
    if not adapter.has_upstream:
        return "the provider calls no upstream"
    return None if _media_error_kind(adapter) else "the adapter's upstream answers no errors"


MEDIA_CHECKS: tuple[Check, ...] = (
    Check("embeddings", "embeddings in the OpenAI shape, in order, float and base64",
          _embeddings, _skip(Capability.EMBEDDINGS, "answer_embeddings")),
    Check("embeddings_error", "an upstream error on embeddings is an UpstreamError of its kind",
          _embeddings_error, _error_skip),
    Check("images", "generated images as bytes with their media type", _images,
          _skip(Capability.IMAGES, "answer_image")),
)
