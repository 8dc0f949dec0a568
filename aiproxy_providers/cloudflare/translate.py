"""Workers AI's ``/ai/run`` dialect, both ways: where calls go, the request, the answer (native
``{response, tool_calls}`` or OpenAI-shaped inside Cloudflare's envelope), and its errors.

* REST API: https://developers.cloudflare.com/workers-ai/get-started/rest-api/
* each model's input/output schema: https://developers.cloudflare.com/workers-ai/models/<model>/
* JSON mode: https://developers.cloudflare.com/workers-ai/features/json-mode/
* errors: https://developers.cloudflare.com/workers-ai/platform/errors/
* AI Gateway url form: https://developers.cloudflare.com/ai-gateway/providers/workersai/
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
import orjson

from aiproxy.provider import (
    ConfigError,
    ErrorKind,
    ErrorTable,
    ModelConfig,
    UpstreamError,
    UpstreamFailure,
    bad_request,
    classify,
    data_url,
    max_tokens_of,
    messages_of,
    openai_tool_call,
    openai_usage,
    parts_of,
    protocol_error,
    token_count,
)
from aiproxy_providers.cloudflare.models import MODELS, Family

__all__ = ["ERRORS", "PROVIDER", "Choice", "Endpoints", "chat_input", "choices",
           "cloudflare_error", "endpoints", "envelope_error", "finish", "tool_call", "usage"]

PROVIDER = "Workers AI"

# Workers AI's internal error codes (platform/errors) where the HTTP status alone misleads.
ERRORS = ErrorTable(
    codes={
        "3036": ErrorKind.RATE_LIMITED,  # daily free allocation used up
        "3040": ErrorKind.RATE_LIMITED,  # out of capacity: no data center left to forward to
        "3007": ErrorKind.TIMEOUT,
        "3008": ErrorKind.TIMEOUT,  # aborted
        "3023": ErrorKind.AUTH,  # account blocked
        "3041": ErrorKind.AUTH,  # account not allowed for a private model
        "5016": ErrorKind.AUTH,  # model terms not agreed to
        "5018": ErrorKind.AUTH,
        "10000": ErrorKind.AUTH,  # the Cloudflare API's "Authentication error"
        "3003": ErrorKind.BAD_REQUEST,
        "3006": ErrorKind.BAD_REQUEST,  # request too large
        "3042": ErrorKind.BAD_REQUEST,  # invalid model name
        "5004": ErrorKind.BAD_REQUEST,
        "5007": ErrorKind.BAD_REQUEST,  # no such model
    },
    # Workers AI has no code for a prompt that does not fit the model, only its wording.
    context_length=re.compile(r"input is too long|prompt is too long", re.IGNORECASE),
)


# --- Where calls go ---------------------------------------------------------------------------


@attrs.frozen
class Endpoints:
    run_base: str  # ".../ai/run": model ids are appended
    model_in_url: str | None  # a model id an old run url ends with
    compat_base: str | None  # ".../ai/v1", the account's OpenAI-compatible endpoint
    compat_chat: bool  # url: named the OpenAI-compatible endpoint: chat goes there


def endpoints(model: ModelConfig, account_id: str | None, url: str) -> Endpoints:
    url = url.rstrip("/")
    for marker in ("/ai/v1", "/ai/run"):
        head, found, tail = url.partition(marker)
        if not found:
            continue
        if account_id and f"/accounts/{account_id}/" not in head + "/":
            raise ConfigError([f"{model.name}: options.account_id does not match the account "
                               "in url:"])
        if marker == "/ai/v1":  # what follows (/chat/completions, /embeddings) is ours to add
            return Endpoints(head + "/ai/run", None, head + marker, compat_chat=True)
        # An old config may give the whole run url, model id included.
        return Endpoints(head + marker, tail.strip("/") or None, head + "/ai/v1", False)
    if url.endswith("/workers-ai"):
        # AI Gateway: https://gateway.ai.cloudflare.com/v1/{account}/{gateway}/workers-ai/{model}
        return Endpoints(url, None, None, compat_chat=False)
    if not account_id:
        raise ConfigError([f"{model.name}: options.account_id: required unless url: is the "
                           "https://api.cloudflare.com/client/v4/accounts/<id>/ai/run/ base"])
    account = f"{url}/accounts/{account_id}"
    return Endpoints(f"{account}/ai/run", None, f"{account}/ai/v1", compat_chat=False)


# --- The request ------------------------------------------------------------------------------


def _image_bytes(url: Any, where: str) -> list[int]:
    """A ``data:<mime>;base64,...`` image as the integer array llama-3.2-vision's ``image``
    takes (its schema: "an array of integers ... 8-bit unsigned integer values")."""
    image = data_url(url)
    if image is None:
        raise bad_request(f"{where}: this Workers AI model takes images as data: URLs "
                          "(data:image/png;base64,...), not http(s) URLs", param=where)
    data = image.decode()
    if data is None:
        raise bad_request(f"{where}: the image is not valid base64", param=where)
    return list(data)


def _messages(body: Mapping[str, Any], family: Family) -> tuple[list[Any], list[int] | None]:
    """OpenAI messages as Workers AI takes them, and a vision-family model's top-level image."""
    out: list[Any] = []
    image: list[int] | None = None
    for message in messages_of(body, provider=PROVIDER):
        # developer is OpenAI's newer name for system; the Workers AI schemas name it system.
        msg = {**message.raw, "role": message.role}
        content = message.content
        if content is None:
            # OpenAI allows null content beside tool_calls; the schemas want a string.
            msg["content"] = ""
        elif isinstance(content, list):
            kinds = ("text", "image_url") if family.top_level_image else None
            parts = parts_of(content, message.where, provider=PROVIDER,
                             **({"kinds": kinds} if kinds else {}))
            if family.top_level_image or all(part.kind == "text" for part in parts):
                images = [_image_bytes(part.url, part.where) for part in parts
                          if part.kind == "image_url"]
                if images and (image is not None or len(images) > 1):
                    raise bad_request("this Workers AI model takes one image a request",
                                      param="messages")
                image = images[0] if images else image
                msg["content"] = "\n".join(part.text or "" for part in parts
                                           if part.kind == "text")
            # Otherwise image parts stay for the models that read OpenAI's parts.
        out.append(msg)
    return out, image


def _response_format(fmt: Any, family: Family) -> dict[str, Any] | None:
    """JSON mode: https://developers.cloudflare.com/workers-ai/features/json-mode/."""
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if family.openai_schema:
        return fmt  # the OpenAI shape is the one these models' schema declares
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] != "json_schema":
        raise bad_request("response_format.type: expected text, json_object or json_schema",
                          param="response_format")
    spec = fmt.get("json_schema")
    # OpenAI wraps the schema as {name, schema, strict}; native models read json_schema as the
    # JSON schema itself. A client that sent the bare schema keeps it.
    if isinstance(spec, dict) and isinstance(spec.get("schema"), dict) \
            and "properties" not in spec:
        spec = spec["schema"]
    return {"type": "json_schema", "json_schema": spec}


# Sent as they are when the client sets them: every family's schema has them.
_SAMPLING = ("temperature", "top_p", "top_k", "seed", "repetition_penalty",
             "frequency_penalty", "presence_penalty")
# Only the OpenAI-schema family takes these (e.g. models/glm-4.7-flash/).
_OPENAI_ONLY = ("stop", "n", "logprobs", "top_logprobs", "logit_bias", "tool_choice",
                "parallel_tool_calls", "reasoning_effort", "max_tokens", "max_completion_tokens")


def chat_input(body: Mapping[str, Any], family: Family, model_id: str, *, stream: bool,
               include_usage: bool) -> tuple[dict[str, Any], int | None]:
    """The ``/ai/run`` input for an OpenAI request, and the token budget of the answer."""
    family.parameters.check(body)
    messages, image = _messages(body, family)
    out: dict[str, Any] = {"messages": messages}
    if image is not None:
        out["image"] = image
    max_tokens = max_tokens_of(body)
    if family.openai_schema:
        out.update((k, body[k]) for k in _OPENAI_ONLY if body.get(k) is not None)
        if body.get("tools"):
            out["tools"] = body["tools"]
        if stream and include_usage:
            out["stream_options"] = {"include_usage": True}
    else:
        if body.get("tool_choice") not in (None, "auto", "none"):
            page = f"{MODELS}{model_id.rsplit('/', 1)[-1]}/"
            raise bad_request(f"tool_choice may be auto or none: {model_id}'s input schema "
                              f"({page}) has no such input; the model decides on tool use "
                              "itself", param="tool_choice")
        if body.get("tools") and body.get("tool_choice") != "none":
            out["tools"] = body["tools"]  # the OpenAI tool shape is one the schemas take
        if max_tokens is not None:
            out["max_tokens"] = max_tokens
    out.update((k, body[k]) for k in _SAMPLING if body.get(k) is not None)
    fmt = _response_format(body.get("response_format"), family)
    if fmt is not None:
        out["response_format"] = fmt
    if stream:
        out["stream"] = True
    limit = max_tokens if isinstance(max_tokens, int) else family.default_max_tokens
    return out, limit


# --- The answer -------------------------------------------------------------------------------


def tool_call(raw: Any) -> dict[str, Any]:
    """A Workers AI tool call (``{name, arguments: object}``, or OpenAI-shaped) → OpenAI."""
    if not isinstance(raw, dict):
        raise protocol_error("Workers AI sent a malformed tool call")
    fn: dict[str, Any] = raw["function"] if isinstance(raw.get("function"), dict) else raw
    return openai_tool_call(str(fn.get("name") or ""), fn.get("arguments"), id=raw.get("id"))


def usage(raw: Any) -> dict[str, Any] | None:
    """Workers AI's usage; the OpenAI-schema models also report cached and reasoning tokens
    (models/glm-4.7-flash/ output schema), which are carried over."""
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details")
    reasoning = raw.get("completion_tokens_details")
    return openai_usage(
        raw.get("prompt_tokens"), raw.get("completion_tokens"), total=raw.get("total_tokens"),
        cached=details.get("cached_tokens") if isinstance(details, dict) else None,
        reasoning=reasoning.get("reasoning_tokens") if isinstance(reasoning, dict) else None)


def finish(upstream: Any, called: bool, answer_usage: Mapping[str, Any] | None,
           limit: int | None) -> str:
    if upstream in ("length", "content_filter"):
        return str(upstream)
    if called:
        return "tool_calls"
    if isinstance(upstream, str) and upstream:
        return upstream
    # A native answer says nothing of truncation: one that used the whole budget (the client's,
    # or the schema's default of 256) was cut by it.
    completion = token_count((answer_usage or {}).get("completion_tokens"))
    if limit and completion is not None and completion >= limit:
        return "length"
    return "stop"


@attrs.frozen
class Choice:
    index: int
    content: Any
    calls: list[dict[str, Any]]
    finish: Any
    logprobs: Any = None


def choices(result: Mapping[str, Any]) -> list[Choice]:
    """The choices of a text ``result``: the OpenAI shape newer models answer, or the native
    ``{response, tool_calls}``."""
    raw = result.get("choices")
    if isinstance(raw, list) and raw:
        out = []
        for k, choice in enumerate(raw):
            if not isinstance(choice, dict):
                raise protocol_error("Workers AI sent a malformed choice")
            message = choice.get("message") or {}
            index = choice.get("index")
            out.append(Choice(index if isinstance(index, int) else k, message.get("content"),
                              [tool_call(c) for c in message.get("tool_calls") or []],
                              choice.get("finish_reason"), choice.get("logprobs")))
        return out
    response = result.get("response")
    calls = [tool_call(c) for c in result.get("tool_calls") or []]
    if response is None and not calls:
        raise protocol_error("Workers AI answered without a response")
    if response is not None and not isinstance(response, str):
        response = orjson.dumps(response).decode()  # JSON mode answers an object
    return [Choice(0, response, calls, None)]


# --- Errors -----------------------------------------------------------------------------------


def envelope_error(data: Mapping[str, Any]) -> tuple[str, int | None]:
    """The message and first code of Cloudflare's ``{"errors": [{"code", "message"}]}``."""
    errors = data.get("errors")
    messages, code = [], None
    if isinstance(errors, list):
        for err in errors:
            if isinstance(err, dict):
                if err.get("message"):
                    messages.append(str(err["message"]))
                if code is None and isinstance(err.get("code"), int):
                    code = err["code"]
    elif isinstance(data.get("error"), str):  # some gateway and worker errors
        messages.append(data["error"])
    return "; ".join(messages), code


def cloudflare_error(status: int, message: str, code: int | None,
                     headers: Mapping[str, str]) -> UpstreamError:
    """An error from the envelope (``status`` 200 for one inside an answer or a stream)."""
    text = f"Workers AI: {message or f'upstream answered HTTP {status}'}"
    if code is not None:
        text += f" (code {code})"
    codes = (str(code),) if code is not None else ()
    return classify(UpstreamFailure(status, text, codes, headers=headers), ERRORS)
