"""HTTP handlers for embeddings and images: the OpenAI endpoints and the old ``POST /image``."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
from aiohttp import web

from aiproxy.errors import ProxyError
from aiproxy.http.body import read_json
from aiproxy.http.chat import JSON_HEADERS, route_headers
from aiproxy.http.state import generation_of, trace_of
from aiproxy.provider import (
    EmbeddingsRequest,
    ImageRequest,
    ImageResponse,
    embedding_base64,
)

__all__ = ["add_routes"]

MAX_IMAGES = 10
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own bound for one embeddings request
MAX_DIMENSIONS = 65536


def _embedding_input_ok(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value)
    if not isinstance(value, list) or not value:
        return False
    if all(isinstance(v, str) for v in value):
        return True
    if all(_token(v) for v in value):
        return True  # one tokenised input
    return all(isinstance(v, list) and v and all(_token(t) for t in v) for v in value)


def _token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32


async def embeddings(request: web.Request) -> web.Response:
    body, raw = await read_json(request)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ProxyError(400, "'model' is required and must be a non-empty string",
                         param="model")
    if not _embedding_input_ok(body.get("input")):
        raise ProxyError(400, "'input' must be a non-empty string, array of strings, or array "
                         "of token arrays", param="input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise ProxyError(400, "'encoding_format' must be 'float' or 'base64'",
                         param="encoding_format")
    inputs = body["input"]
    if isinstance(inputs, list) and len(inputs) > MAX_EMBEDDING_INPUTS and not all(
            _token(v) for v in inputs):
        raise ProxyError(400, f"'input' may hold at most {MAX_EMBEDDING_INPUTS} inputs",
                         param="input")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int)
                             or not 1 <= dims <= MAX_DIMENSIONS):
        raise ProxyError(400, f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}",
                         param="dimensions")
    trace = trace_of(request)
    trace.requested = model
    served = await generation_of(request).router.embeddings(
        trace, trace.grant, EmbeddingsRequest(body=body, raw=raw))
    data = served.result.data
    data["model"] = served.route.name
    if encoding == "base64":
        for item in data.get("data") or ():
            if isinstance(item, dict) and isinstance(item.get("embedding"), list):
                item["embedding"] = embedding_base64(item["embedding"])
    return web.Response(body=orjson.dumps(data), headers={**JSON_HEADERS,
                                                          **route_headers(served)})


def _image_request(body: dict[str, Any], prompt_keys: tuple[str, ...]) -> ImageRequest:
    # Every spelling given is checked, not only the one used: the proxy never lets through
    # what the document refuses (POST /image with a good prompt and "inputs": 0).
    for key in prompt_keys:
        if key in body and (not isinstance(body[key], str) or not body[key].strip()):
            raise ProxyError(400, f"'{key}' must be a non-empty string", param=key)
    prompt = next((body[k] for k in prompt_keys if k in body), None)
    if prompt is None:
        raise ProxyError(400, "'prompt' is required and must be a non-empty string",
                         param="prompt")
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise ProxyError(400, f"'n' must be an integer from 1 to {MAX_IMAGES}", param="n")
    size = body.get("size")
    if size is not None and not isinstance(size, str):
        raise ProxyError(400, "'size' must be a string such as '1024x1024'", param="size")
    clean = {k: v for k, v in body.items() if k not in prompt_keys}
    clean["prompt"] = prompt
    clean["n"] = n
    return ImageRequest(body=clean, raw=orjson.dumps(clean))


async def _generate(request: web.Request, model: str | None,
                    image_request: ImageRequest) -> tuple[ImageResponse, dict[str, str]]:
    trace = trace_of(request)
    trace.requested = model or "all"
    served = await generation_of(request).router.images(
        trace, trace.grant, None if not model or model == "all" else model, image_request)
    return served.result, route_headers(served)


async def images_generations(request: web.Request) -> web.Response:
    """OpenAI ``POST /v1/images/generations``; ``model`` may be omitted (any image model)."""
    body, _ = await read_json(request)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ProxyError(400, "'model' must be a string", param="model")
    response_format = body.pop("response_format", None)
    if response_format not in (None, "b64_json", "url"):
        raise ProxyError(400, "'response_format' must be 'b64_json' or 'url'",
                         param="response_format")
    result, headers = await _generate(request, model, _image_request(body, ("prompt",)))
    items = []
    for data, media_type in result.images:
        encoded = base64.b64encode(data).decode()
        # We host no files: a "url" answer is a data URL that carries the image itself.
        items.append({"url": f"data:{media_type};base64,{encoded}"} if response_format == "url"
                     else {"b64_json": encoded})
    answer = {"created": int(time.time()), "data": items}
    return web.Response(body=orjson.dumps(answer), headers={**JSON_HEADERS, **headers})


async def image(request: web.Request) -> web.Response:
    """The old proxy's ``POST /image``: ``{"model", "prompt"|"inputs"}`` → the image bytes."""
    body, _ = await read_json(request)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ProxyError(400, "'model' must be a string", param="model")
    image_request = _image_request({k: v for k, v in body.items() if k != "model"},
                                   ("prompt", "inputs"))
    result, headers = await _generate(request, model, image_request)
    data, media_type = result.images[0]
    return web.Response(body=data, headers={"Content-Type": media_type,
                                            "Cache-Control": "no-store", **headers})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/image", image)
    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/embeddings", embeddings)
        app.router.add_post(f"{prefix}/images/generations", images_generations)
