"""Building OpenAI answers from an upstream's: ids, messages, tool calls, finish reasons,
embeddings, and reading the upstream's JSON.

Shapes: https://platform.openai.com/docs/api-reference/chat/object and
https://platform.openai.com/docs/api-reference/embeddings/object
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import aiohttp
import orjson

from aiproxy.kit.errors import bad_request, protocol_error
from aiproxy.upstream import UpstreamResponse

__all__ = [
    "assistant_message",
    "chat_completion",
    "completion_id",
    "embedding_base64",
    "embedding_encoding",
    "embedding_texts",
    "embeddings_answer",
    "image_media_type",
    "json_object",
    "max_tokens_of",
    "openai_finish_reason",
    "openai_tool_call",
    "read_body",
    "stop_of",
    "tool_call_id",
]


def completion_id() -> str:
    """A new chat completion id in OpenAI's form: ``chatcmpl-`` and 32 hex digits."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def tool_call_id() -> str:
    """A new id for a tool call the upstream sent without one: ``call_`` and 24 hex digits.

    The client needs one to answer the call with (the ``tool_call_id`` of its ``tool`` message).
    """
    return f"call_{uuid.uuid4().hex[:24]}"


# --- The request's own fields -------------------------------------------------------------------


def max_tokens_of(body: Mapping[str, Any]) -> Any:
    """The answer's token bound: ``max_completion_tokens``, else the older ``max_tokens``."""
    value = body.get("max_completion_tokens")
    return body.get("max_tokens") if value is None else value


def stop_of(body: Mapping[str, Any]) -> list[str] | None:
    """``stop`` as a list of strings (it may be one string); ``None`` when absent or empty."""
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad_request("stop must be a string or an array of strings", param="stop")
    return stop or None


# --- Chat answers -------------------------------------------------------------------------------


def openai_tool_call(name: str, arguments: Any, *, id: str | None = None,
                     **extra: Any) -> dict[str, Any]:
    """An OpenAI tool call: ``arguments`` as JSON text (an upstream's object is encoded), and a
    new ``call_...`` id when the upstream gave none. ``extra`` adds fields (``extra_content``)."""
    text = arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()
    return {"id": id or tool_call_id(), "type": "function",
            "function": {"name": name, "arguments": text}, **extra}


def assistant_message(text: str | None, tool_calls: Sequence[Mapping[str, Any]] = ()
                      ) -> dict[str, Any]:
    """The answer's ``message``: ``content`` is ``null`` beside tool calls that came without
    text, as OpenAI answers it."""
    message: dict[str, Any] = {"role": "assistant",
                               "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = list(tool_calls)
    return message


def openai_finish_reason(raw: Any, table: Mapping[str, str], *, tool_calls: bool = False,
                  default: str = "stop") -> str:
    """An upstream finish reason through the plugin's ``table``; an unknown one (a value added
    after the plugin was written) is ``default``. An answer that called tools and stopped
    finished with ``tool_calls``, as OpenAI reports it."""
    mapped = table.get(raw, default) if isinstance(raw, str) else default
    return "tool_calls" if tool_calls and mapped == "stop" else mapped


def chat_completion(model: str, choices: Sequence[Mapping[str, Any]],
                    usage: Mapping[str, Any] | None, *, id: str | None = None,
                    created: int | None = None) -> dict[str, Any]:
    """A ``chat.completion`` object. ``choices`` hold ``index``, ``message``, ``finish_reason``
    (and ``logprobs`` where asked); ``usage`` is left out only when the upstream gave none."""
    out: dict[str, Any] = {"id": id or completion_id(), "object": "chat.completion",
                           "created": int(time.time()) if created is None else created,
                           "model": model, "choices": list(choices)}
    if usage is not None:
        out["usage"] = usage
    return out


# --- Embeddings ---------------------------------------------------------------------------------


def embedding_texts(body: Mapping[str, Any], *, provider: str) -> list[str]:
    """``input`` as a list of strings; token arrays and an empty list are a 400."""
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise bad_request(f"input must be a string or a non-empty array of strings: {provider} "
                          "embeds text, not token arrays", param="input")
    return texts


def embedding_encoding(body: Mapping[str, Any]) -> Literal["float", "base64"]:
    """``encoding_format``: ``float`` (the default) or ``base64``."""
    encoding = body.get("encoding_format") or "float"
    if encoding == "float":
        return "float"
    if encoding == "base64":
        return "base64"
    raise bad_request("encoding_format must be float or base64", param="encoding_format")


def embedding_base64(vector: Sequence[float]) -> str:
    """An embedding as OpenAI answers ``encoding_format: base64``: little-endian float32 bytes,
    base64-encoded (the form its SDKs decode)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embeddings_answer(vectors: Sequence[Sequence[float]], *, model: str, prompt_tokens: int,
                      encoding: Literal["float", "base64"] = "float") -> dict[str, Any]:
    """The OpenAI embeddings answer: one item per vector, in input order."""
    data = [{"object": "embedding", "index": i,
             "embedding": embedding_base64(v) if encoding == "base64" else list(v)}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def image_media_type(data: bytes) -> str | None:
    """The media type of image bytes by their magic number (PNG, JPEG, WebP, GIF), else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


# --- Reading the upstream -----------------------------------------------------------------------


async def read_body(resp: UpstreamResponse, *, provider: str) -> bytes:
    """A 2xx answer's body, and the connection back to the pool; a cut is ``PROTOCOL``."""
    try:
        return await resp.read()
    except (aiohttp.ClientError, TimeoutError):
        raise protocol_error(f"{provider}: the answer was cut off") from None
    finally:
        resp.release()


def json_object(raw: bytes | str, *, provider: str, what: str = "the answer") -> dict[str, Any]:
    """``raw`` as a JSON object; anything else is ``PROTOCOL`` (retryable, like a 502)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise protocol_error(f"{provider}: {what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise protocol_error(f"{provider}: {what} is not a JSON object")
    return data
