"""Google Gemini provider: OpenAI chat completions and embeddings over the Gemini API (v1beta).

Gemini speaks its own dialect (``contents``/``parts``, ``generationConfig``,
``functionDeclarations``), so both directions are translated here. References:

- generateContent / streamGenerateContent: https://ai.google.dev/api/generate-content
- Content, Part, Tool, ToolConfig, FunctionDeclaration: https://ai.google.dev/api/caching
- Function calling: https://ai.google.dev/gemini-api/docs/function-calling
- Structured output: https://ai.google.dev/gemini-api/docs/structured-output
- Embeddings: https://ai.google.dev/api/embeddings, https://ai.google.dev/gemini-api/docs/embeddings
- Thinking: https://ai.google.dev/gemini-api/docs/thinking
- Media by URL: https://ai.google.dev/gemini-api/docs/file-input-methods
- Errors: https://ai.google.dev/gemini-api/docs/troubleshooting
- The API definition itself: https://github.com/googleapis/googleapis/tree/master/google/ai/generativelanguage/v1beta
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import attrs
import orjson

from aiproxy.provider import (
    Capability,
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorKind,
    ModelConfig,
    Provider,
    StreamChunks,
    UpstreamError,
    completion_id,
    embedding_base64,
    end_response,
    error_from_status,
    iter_sse,
    parse_retry_after,
    tool_call_id,
)

__all__ = ["GeminiOptions", "GeminiProvider"]


def _check_safety_settings(
    inst: object, attribute: attrs.Attribute[Any], value: tuple[Mapping[str, Any], ...]
) -> None:
    for i, setting in enumerate(value):
        if not isinstance(setting.get("category"), str) \
                or not isinstance(setting.get("threshold"), str):
            raise ValueError(f"safety_settings[{i}]: needs string category and threshold "
                             "(https://ai.google.dev/gemini-api/docs/safety-settings)")


# EmbedContentRequest.taskType values (https://ai.google.dev/api/embeddings#tasktype).
TASK_TYPES = frozenset({"RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY",
                        "CLASSIFICATION", "CLUSTERING", "QUESTION_ANSWERING",
                        "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY"})


def _task_type(value: Any) -> str | None:
    """A task type as Gemini spells it (upper case), or None if it names none."""
    if not isinstance(value, str) or value.upper() not in TASK_TYPES:
        return None
    return value.upper()


def _check_task_type(inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and _task_type(value) is None:
        raise ValueError(f"task_type: {value!r} is not one of {', '.join(sorted(TASK_TYPES))} "
                         "(https://ai.google.dev/api/embeddings#tasktype)")


@attrs.frozen
class GeminiOptions:
    """``options:`` of a Gemini model.

    ``safety_settings`` is sent as the request's ``safetySettings`` (a list of
    ``{category, threshold}``): Gemini's default thresholds block some answers outright, and
    OpenAI requests have no field to loosen them, so the operator sets them per model.
    ``task_type`` is the embedding ``taskType`` sent when a request names none (OpenAI's
    embeddings request has no such field; clients may add ``task_type`` to the body).
    """

    safety_settings: tuple[Mapping[str, Any], ...] = attrs.field(
        default=(), validator=_check_safety_settings)
    task_type: str | None = attrs.field(default=None, validator=_check_task_type)


# Candidate.FinishReason -> OpenAI finish_reason; anything else (OTHER, LANGUAGE,
# MALFORMED_FUNCTION_CALL, ...) is reported as "stop".
_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                     "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"),
                    "content_filter"),
}

# Gemini's wording for an over-long prompt, e.g. "The input token count (1200000) exceeds the
# maximum number of tokens allowed (1048576)."
_CONTEXT_LENGTH = re.compile(r"token count.*exceed|maximum number of tokens|context (length|window)"
                             r"|too many tokens", re.IGNORECASE | re.DOTALL)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")  # google.protobuf.Duration in JSON: "37s"


def _bad(message: str, param: str | None = None) -> UpstreamError:
    return UpstreamError(ErrorKind.BAD_REQUEST, message, status=400, param=param)


def _protocol(message: str) -> UpstreamError:
    return UpstreamError(ErrorKind.PROTOCOL, f"Gemini: {message}")


# ---------------------------------------------------------------------------------------------
# OpenAI request -> GenerateContentRequest


def _text_only(content: Any, where: str) -> str:
    """The text of a message that may only hold text (system, assistant, tool)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"{where}: content must be a string or an array of parts", "messages")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise _bad(f"{where}: only text content is supported here by Gemini", "messages")
    return "".join(texts)


# Media types of the formats Gemini documents as supported, by file extension
# (https://ai.google.dev/gemini-api/docs/image-understanding, .../audio, .../video,
# .../document-processing). Used for fileData parts, whose mimeType is optional in the API.
_MEDIA_TYPES = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
    "heic": "image/heic", "heif": "image/heif",
    "wav": "audio/wav", "mp3": "audio/mp3", "aiff": "audio/aiff", "aac": "audio/aac",
    "ogg": "audio/ogg", "flac": "audio/flac",
    "mp4": "video/mp4", "mpeg": "video/mpeg", "mpg": "video/mpg", "mov": "video/mov",
    "avi": "video/avi", "flv": "video/x-flv", "webm": "video/webm", "wmv": "video/wmv",
    "3gp": "video/3gpp",
    "pdf": "application/pdf", "txt": "text/plain",
}


def _file_data(url: str) -> dict[str, Any]:
    """An ``https://`` URL as a ``fileData`` part: Gemini fetches public and signed URLs and
    takes Files API URIs the same way (https://ai.google.dev/gemini-api/docs/file-input-methods).

    FileData.mimeType is optional (google/ai/generativelanguage/v1beta/content.proto), so it is
    sent only when the URL's extension names a documented format; a Files API URI has none,
    and Gemini uses the type stored with the file.
    """
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    extension = name.rpartition(".")[2].lower() if "." in name else ""
    data: dict[str, Any] = {"fileUri": url}
    if extension in _MEDIA_TYPES:
        data["mimeType"] = _MEDIA_TYPES[extension]
    return {"fileData": data}


def _media_part(url: Any, where: str) -> dict[str, Any]:
    """An image or file URL as a Gemini part: ``https://`` as fileData, ``data:`` inline."""
    if isinstance(url, str) and url[:8].lower() == "https://":
        return _file_data(url)
    return _inline_data(url, where)


def _inline_data(url: Any, where: str) -> dict[str, Any]:
    """A ``data:<mime>;base64,<data>`` URL as a Gemini ``inlineData`` part (a Blob)."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise _bad(f"{where}: Gemini accepts images and files as https:// URLs or data: URLs "
                   "(data:<mime>;base64,...)", "messages")
    header, sep, data = url[5:].partition(",")
    params = header.split(";")
    if not sep or not params[0] or "base64" not in params[1:]:
        raise _bad(f"{where}: expected a data:<mime>;base64,<data> URL", "messages")
    return {"inlineData": {"mimeType": params[0], "data": data}}


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise _bad(f"{where}: content must be a string or an array of parts", "messages")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                parts.append({"text": part["text"]})
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            parts.append(_media_part(part["image_url"].get("url"), where))
        elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
            audio = part["input_audio"]
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format')}",
                                         "data": audio.get("data")}})
        elif kind == "file" and isinstance(part.get("file"), dict) \
                and part["file"].get("file_data") is not None:
            parts.append(_media_part(part["file"]["file_data"], where))
        else:
            raise _bad(f"{where}: content part type {kind!r} is not supported by Gemini "
                       "(text, image_url, input_audio, file with file_data)", "messages")
    return parts


# The ids aiproxy.provider.tool_call_id() makes for calls Gemini sent without one.
_OUR_CALL_ID = re.compile(r"call_[0-9a-f]{24}")


def _gemini_call_id(call_id: str) -> bool:
    """True for a tool call id to send back to Gemini as FunctionCall/FunctionResponse ``id``.

    When Gemini gives a functionCall an ``id``, the client must answer with the same one
    (https://ai.google.dev/api/caching#FunctionCall); the OpenAI tool call carries it verbatim.
    An id we made up ourselves was never Gemini's, so the replay stays as Gemini sent it.
    """
    return bool(call_id) and not _OUR_CALL_ID.fullmatch(call_id)


def _signature_of(call: Mapping[str, Any]) -> str | None:
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def _function_call_part(call: Any, where: str, names: dict[str, str],
                        signatures: Mapping[str, str]) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or call.get("type", "function") != "function" \
            or not isinstance(fn.get("name"), str):
        raise _bad(f"{where}: only function tool calls are supported by Gemini", "messages")
    try:
        args = orjson.loads(fn.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        raise _bad(f"{where}: tool call arguments are not valid JSON", "messages") from None
    if not isinstance(args, dict):
        raise _bad(f"{where}: tool call arguments must be a JSON object", "messages")
    function_call: dict[str, Any] = {"name": fn["name"], "args": args}
    call_id = call.get("id")
    if isinstance(call_id, str):
        names[call_id] = fn["name"]
        if _gemini_call_id(call_id):
            function_call["id"] = call_id
    part: dict[str, Any] = {"functionCall": function_call}
    # Gemini 3 rejects a replayed functionCall without the thoughtSignature it came with
    # (https://ai.google.dev/gemini-api/docs/thought-signatures).
    signature = _signature_of(call) or (signatures.get(call_id) if isinstance(call_id, str)
                                        else None)
    if signature:
        part["thoughtSignature"] = signature
    return part


def _function_response_part(msg: dict[str, Any], where: str,
                            names: dict[str, str]) -> dict[str, Any]:
    # Gemini matches a result to its call by function name, which OpenAI's tool message lacks.
    call_id = msg.get("tool_call_id")
    name = names.get(call_id) if isinstance(call_id, str) else None
    if name is None:
        raise _bad(f"{where}: tool_call_id {call_id!r} matches no earlier assistant tool call",
                   "messages")
    text = _text_only(msg.get("content"), where)
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    # FunctionResponse.response must be a JSON object (a protobuf Struct).
    response = parsed if isinstance(parsed, dict) else {"content": text}
    function_response: dict[str, Any] = {"name": name, "response": response}
    if isinstance(call_id, str) and _gemini_call_id(call_id):
        function_response["id"] = call_id  # FunctionResponse.id: the FunctionCall.id answered
    return {"functionResponse": function_response}


def _contents(messages: Any, signatures: Mapping[str, str]
              ) -> tuple[list[dict[str, Any]], list[str]]:
    """Messages as Gemini ``contents`` (user/model turns) and the system texts."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty array", "messages")
    turns: list[dict[str, Any]] = []
    system: list[str] = []
    names: dict[str, str] = {}  # tool call id -> function name
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad(f"{where} must be an object", "messages")
        role, content = msg.get("role"), msg.get("content")
        if role in ("system", "developer"):
            # Gemini has one systemInstruction; system messages anywhere in the thread go there.
            text = _text_only(content, where)
            if text:
                system.append(text)
            continue
        if role == "user":
            gemini_role, parts = "user", _user_parts(content, where)
        elif role == "assistant":
            text = _text_only(content, where)
            gemini_role, parts = "model", [{"text": text}] if text else []
            parts += [_function_call_part(call, where, names, signatures)
                      for call in msg.get("tool_calls") or []]
        elif role == "tool":
            # Function results travel in a user turn:
            # https://ai.google.dev/gemini-api/docs/function-calling
            gemini_role, parts = "user", [_function_response_part(msg, where, names)]
        else:
            raise _bad(f"{where}: role {role!r} is not supported by Gemini", "messages")
        if not parts:
            continue
        # Gemini wants user and model turns to alternate: merge neighbours of one role.
        if turns and turns[-1]["role"] == gemini_role:
            turns[-1]["parts"].extend(parts)
        else:
            turns.append({"role": gemini_role, "parts": parts})
    if not turns:
        raise _bad("messages must hold at least one non-empty user or assistant message",
                   "messages")
    return turns, system


def _tools(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """``tools``/``tool_choice`` as Gemini ``tools`` and ``toolConfig``."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not tools:
        if choice in (None, "auto", "none"):
            return [], None
        raise _bad("tool_choice requires tools", "tool_choice")
    if not isinstance(tools, list):
        raise _bad("tools must be an array", "tools")
    declarations = []
    for j, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function" \
                or not isinstance(fn.get("name"), str):
            raise _bad(f"tools[{j}]: only function tools are supported by Gemini", "tools")
        declaration: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            declaration["description"] = fn["description"]
        if fn.get("parameters") is not None:
            # OpenAI sends JSON Schema; `parameters` takes only Gemini's OpenAPI subset and
            # refuses e.g. additionalProperties, so use parametersJsonSchema
            # (https://ai.google.dev/api/caching#FunctionDeclaration).
            declaration["parametersJsonSchema"] = fn["parameters"]
        declarations.append(declaration)
    # FunctionCallingConfig.mode: AUTO / ANY (must call) / NONE, with allowedFunctionNames.
    config: dict[str, Any] | None
    if choice is None:
        config = None
    elif choice in ("auto", "none", "required"):
        config = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}
    elif isinstance(choice, dict) and choice.get("type") == "function" \
            and isinstance(choice.get("function"), dict) \
            and isinstance(choice["function"].get("name"), str):
        config = {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    else:
        raise _bad(f"tool_choice {choice!r} is not supported by Gemini", "tool_choice")
    tool_config = {"functionCallingConfig": config} if config else None
    return [{"functionDeclarations": declarations}], tool_config


# reasoning_effort as thinkingConfig (https://ai.google.dev/gemini-api/docs/thinking).
# Gemini 2.5 takes a thinkingBudget in tokens: low/medium/high are the 1K/8K/24K budgets Google's
# own OpenAI-compatible endpoint uses (https://ai.google.dev/gemini-api/docs/openai), 0 turns
# thinking off. Gemini 3 takes a thinkingLevel and cannot turn thinking off; MINIMAL is its
# least. Pro models have no MINIMAL and cannot think less than LOW (2.5 Pro: 128 tokens), and
# Gemini 3 Pro offers only LOW and HIGH.
# Above high, OpenAI's xhigh and max get Gemini's most: HIGH, or 24576 (2.5 Flash's maximum).
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576,
            "xhigh": 24576, "max": 24576}
_LEVELS = {"none": "MINIMAL", "minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM",
           "high": "HIGH", "xhigh": "HIGH", "max": "HIGH"}
_PRO_MIN_BUDGET = 128
_VERSION = re.compile(r"^(?:models/)?gemini-(\d+)(?:\.(\d+))?(?=-|$)")


def _thinking_config(effort: Any, model_id: str) -> dict[str, Any] | None:
    """``reasoning_effort`` as a ThinkingConfig for this model, or None where it means nothing."""
    if effort is None:
        return None
    if effort not in _EFFORTS:
        raise _bad(f"reasoning_effort must be one of {', '.join(_EFFORTS)}", "reasoning_effort")
    model = model_id.lower().removeprefix("models/")
    pro = "-pro" in model
    match = _VERSION.match(model)
    version = (int(match.group(1)), int(match.group(2) or 0)) if match else None
    if model.startswith("gemma-") or (version is not None and version < (2, 5)):
        return None  # models without thinking: no effort to set, and they refuse the field
    if version is not None and version >= (3, 0):
        level = _LEVELS[effort]
        if pro and level == "MINIMAL":
            level = "LOW"
        if pro and version == (3, 0) and level == "MEDIUM":
            level = "HIGH"
        return {"thinkingLevel": level}
    # 2.5 and names without a version (aliases such as gemini-flash-latest, tuned models):
    # thinkingBudget, which Gemini 3 also still accepts.
    budget = _BUDGETS[effort]
    if pro and budget == 0:
        budget = _PRO_MIN_BUDGET
    return {"thinkingBudget": budget}


#: OpenAI's and Gemini's bound on top_logprobs / GenerationConfig.logprobs.
MAX_TOP_LOGPROBS = 20


def _logprobs_config(body: Mapping[str, Any]) -> dict[str, Any]:
    """``logprobs``/``top_logprobs`` as GenerationConfig ``responseLogprobs``/``logprobs``."""
    wanted, top = body.get("logprobs"), body.get("top_logprobs")
    if top is not None:
        if not isinstance(top, int) or isinstance(top, bool) \
                or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise _bad(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}",
                       "top_logprobs")
        if wanted is not True:
            raise _bad("top_logprobs requires logprobs: true", "top_logprobs")
    if wanted is not True:
        return {}
    config: dict[str, Any] = {"responseLogprobs": True}
    if top:
        config["logprobs"] = top
    return config


def _generation_config(body: Mapping[str, Any], model_id: str) -> dict[str, Any]:
    """Sampling fields as a GenerationConfig (https://ai.google.dev/api/generate-content)."""
    config: dict[str, Any] = _logprobs_config(body)
    thinking = _thinking_config(body.get("reasoning_effort"), model_id)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"),
                         ("n", "candidateCount"), ("presence_penalty", "presencePenalty"),
                         ("frequency_penalty", "frequencyPenalty"), ("seed", "seed")):
        if body.get(ours) is not None:
            config[theirs] = body[ours]
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            config["stopSequences"] = stop
    elif stop is not None:
        raise _bad("stop must be a string or an array of strings", "stop")
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind == "json_object":
        config["responseMimeType"] = "application/json"
    elif kind == "json_schema":
        spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
        if not isinstance(spec, dict):
            raise _bad("response_format.json_schema must be an object", "response_format")
        config["responseMimeType"] = "application/json"
        if spec.get("schema") is not None:
            # responseJsonSchema takes JSON Schema as OpenAI clients write it; responseSchema
            # would need Gemini's OpenAPI subset. It requires responseMimeType.
            config["responseJsonSchema"] = spec["schema"]
    elif kind not in (None, "text"):
        raise _bad(f"response_format type {kind!r} is not supported by Gemini",
                   "response_format")
    return config


def _reject_unsupported(body: Mapping[str, Any]) -> None:
    """Refuse fields whose meaning Gemini cannot honour; harmless ones are ignored."""
    if body.get("logit_bias"):
        raise _bad("logit_bias is not supported by Gemini", "logit_bias")
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise _bad("the legacy functions/function_call fields are not supported by the Gemini "
                   "provider; use tools and tool_choice", "functions")
    if body.get("audio") is not None or body.get("modalities") not in (None, ["text"]):
        raise _bad("audio output is not supported by the Gemini provider", "modalities")
    if body.get("web_search_options") is not None:
        raise _bad("web_search_options is not supported by Gemini", "web_search_options")


# ---------------------------------------------------------------------------------------------
# GenerateContentResponse -> OpenAI


def _read_parts(candidate: Any) -> tuple[str, list[dict[str, Any]]]:
    """A candidate's answer text (thoughts left out) and its function calls, as OpenAI ones."""
    if not isinstance(candidate, dict):
        raise _protocol("a candidate is not an object")
    content = candidate.get("content") or {}
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts or [], list):
        raise _protocol("candidate content parts are not an array")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts or []:
        if not isinstance(part, dict):
            raise _protocol("a content part is not an object")
        call = part.get("functionCall")
        if isinstance(call, dict):
            if not isinstance(call.get("name"), str):
                raise _protocol("a functionCall has no name")
            tool_call: dict[str, Any] = {
                "id": call.get("id") or tool_call_id(),  # FunctionCall.id is optional
                "type": "function",
                "function": {"name": call["name"],
                             "arguments": orjson.dumps(call.get("args") or {}).decode()},
            }
            signature = part.get("thoughtSignature")
            if isinstance(signature, str) and signature:
                # Where Google's own OpenAI-compatible endpoint puts it, so a client that
                # sends the message back as it got it returns the signature too.
                tool_call["extra_content"] = {"google": {"thought_signature": signature}}
            calls.append(tool_call)
        elif isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
        # Other parts (thoughts, inlineData, executableCode...) have no OpenAI counterpart.
    return "".join(texts), calls


def _finish_reason(reason: Any, has_calls: bool) -> str:
    mapped = _FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if has_calls and mapped == "stop" else mapped


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(metadata: Any) -> dict[str, Any]:
    """UsageMetadata as OpenAI usage, with prompt + completion == total.

    totalTokenCount is the sum of promptTokenCount, toolUsePromptTokenCount (the results of
    Gemini's own tools, read as input), candidatesTokenCount and thoughtsTokenCount (thinking is
    billed as output) (https://ai.google.dev/api/generate-content#UsageMetadata). Should Gemini
    report a total above its parts, the rest is counted as prompt, so budgets never undercount.
    """
    meta = metadata if isinstance(metadata, dict) else {}
    prompt = _count(meta.get("promptTokenCount")) + _count(meta.get("toolUsePromptTokenCount"))
    thoughts = _count(meta.get("thoughtsTokenCount"))
    completion = _count(meta.get("candidatesTokenCount")) + thoughts
    prompt += max(0, _count(meta.get("totalTokenCount")) - prompt - completion)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if _count(meta.get("cachedContentTokenCount")):
        usage["prompt_tokens_details"] = {"cached_tokens": meta["cachedContentTokenCount"]}
    if thoughts:
        usage["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return usage


def _token_logprob(candidate: Mapping[str, Any]) -> dict[str, Any]:
    token = candidate.get("token")
    token = token if isinstance(token, str) else ""
    logprob = candidate.get("logProbability")
    return {"token": token,
            "logprob": float(logprob) if isinstance(logprob, int | float) else 0.0,
            "bytes": list(token.encode())}


def _logprobs(candidate: Mapping[str, Any]) -> dict[str, Any] | None:
    """Candidate.logprobsResult as OpenAI ``choices[].logprobs`` (``content`` per token).

    chosenCandidates has one entry per decoding step and topCandidates the alternatives at the
    same step (https://ai.google.dev/api/generate-content#LogprobsResult).
    """
    result = candidate.get("logprobsResult")
    if not isinstance(result, dict):
        return None
    chosen = result.get("chosenCandidates")
    tops = result.get("topCandidates")
    tops = tops if isinstance(tops, list) else []
    content = []
    for step, pick in enumerate(chosen if isinstance(chosen, list) else []):
        if not isinstance(pick, dict):
            continue
        top = tops[step] if step < len(tops) and isinstance(tops[step], dict) else {}
        alternatives = top.get("candidates")
        content.append({**_token_logprob(pick), "top_logprobs": [
            _token_logprob(c) for c in (alternatives if isinstance(alternatives, list) else [])
            if isinstance(c, dict)]})
    return {"content": content, "refusal": None}


def _normalised(values: list[float]) -> list[float]:
    """``values`` scaled to unit (L2) length; a zero vector stays as it is."""
    norm = math.sqrt(math.fsum(v * v for v in values))
    return [v / norm for v in values] if norm else [float(v) for v in values]


#: Characters (UTF-8 bytes) per token for the embedding usage estimate: Google's rule of
#: thumb for Gemini models (https://ai.google.dev/gemini-api/docs/tokens).
BYTES_PER_TOKEN = 4


def _estimate_tokens(text: str) -> int:
    """About how many tokens ``text`` is: at least 1 when it is not empty."""
    return math.ceil(len(text.encode()) / BYTES_PER_TOKEN)


def _candidate_index(candidate: dict[str, Any], position: int) -> int:
    index = candidate.get("index")
    return index if isinstance(index, int) else position


@attrs.define
class _StreamState:
    chunks: StreamChunks
    started: set[int] = attrs.Factory(set)
    finished: set[int] = attrs.Factory(set)
    tool_calls: dict[int, int] = attrs.Factory(dict)  # candidate index -> calls sent so far
    usage: Any = None


class GeminiProvider(Provider):
    """Chat (plain and streamed) and embeddings on the Gemini API, keyed by ``x-goog-api-key``."""

    capabilities = frozenset({Capability.CHAT, Capability.EMBEDDINGS})
    default_url = "https://generativelanguage.googleapis.com/v1beta"
    options_type = GeminiOptions

    #: Thought signatures remembered per tool call id, for clients that drop extra_content.
    SIGNATURES_KEPT = 2048

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(model, session)
        self._signatures: OrderedDict[str, str] = OrderedDict()
        # The old proxy's url: could end in /models; both forms name the same API root.
        base = self.url.rstrip("/")
        base = base.removesuffix("/models")
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
            signature = _signature_of(call)
            if signature:
                self._signatures[call["id"]] = signature
                while len(self._signatures) > self.SIGNATURES_KEPT:
                    self._signatures.popitem(last=False)

    def _redact(self, text: str) -> str:
        # Gemini does not echo keys, but a message must never carry one. Very short tokens
        # (tests, placeholders) would mangle ordinary words, and are no secret worth hiding.
        token = self.model.token
        return text.replace(token, "[redacted]") if token and len(token) >= 8 else text

    def build_request(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The GenerateContentRequest for an OpenAI chat request body."""
        _reject_unsupported(body)
        contents, system = _contents(body.get("messages"), self._signatures)
        request: dict[str, Any] = {"contents": contents}
        if system:
            request["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        tools, tool_config = _tools(body)
        if tools:
            request["tools"] = tools
        if tool_config:
            request["toolConfig"] = tool_config
        config = _generation_config(body, self.model_path)
        if config:
            request["generationConfig"] = config
        options: GeminiOptions = self.options
        if options.safety_settings:
            request["safetySettings"] = [dict(s) for s in options.safety_settings]
        return request

    def _check_blocked(self, data: dict[str, Any]) -> None:
        feedback = data.get("promptFeedback")
        reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
        if reason:
            raise UpstreamError(ErrorKind.CONTENT_FILTER,
                                f"Gemini blocked the prompt (blockReason: {reason})",
                                code="content_filter")

    async def _post_json(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        resp = await self.send("POST", url, data=orjson.dumps(payload), headers=self._headers())
        try:
            body = await resp.read()
        except aiohttp.ClientError:
            raise _protocol("the answer was cut off") from None
        finally:
            resp.release()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _protocol("the answer is not JSON") from None
        if not isinstance(data, dict):
            raise _protocol("the answer is not a JSON object")
        return data

    async def chat(self, request: ChatRequest) -> ChatResponse:
        data = await self._post_json(self.chat_url, self.build_request(request.body))
        self._check_blocked(data)
        candidates = data.get("candidates") or []
        if not isinstance(candidates, list):
            raise _protocol("candidates is not an array")
        with_logprobs = request.body.get("logprobs") is True
        choices = []
        for position, candidate in enumerate(candidates):
            text, calls = _read_parts(candidate)
            self._remember_signatures(calls)
            message: dict[str, Any] = {"role": "assistant",
                                       "content": text if text or not calls else None}
            if calls:
                message["tool_calls"] = calls
            choice = {"index": _candidate_index(candidate, position), "message": message,
                      "finish_reason": _finish_reason(candidate.get("finishReason"),
                                                      bool(calls))}
            if with_logprobs:
                choice["logprobs"] = _logprobs(candidate)
            choices.append(choice)
        if not choices:
            # Unblocked yet empty: answer an empty message rather than a choice-less reply.
            choices.append({"index": 0, "message": {"role": "assistant", "content": ""},
                            "finish_reason": "stop"})
            if with_logprobs:
                choices[0]["logprobs"] = None
        return ChatResponse(data={
            "id": completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model.name,
            "choices": choices,
            "usage": _usage(data.get("usageMetadata")),
        })

    def _event_chunks(self, data: Any, state: _StreamState) -> list[dict[str, Any]]:
        """The OpenAI chunks for one streamed GenerateContentResponse, validated as a whole."""
        if not isinstance(data, dict):
            raise _protocol("a stream event is not a JSON object")
        error = data.get("error")
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            status = code if isinstance(code, int) and code >= 400 else 500
            raise self.error_from_response(status, orjson.dumps(data), {})
        self._check_blocked(data)
        if data.get("usageMetadata") is not None:
            state.usage = data["usageMetadata"]  # cumulative: the last one is the total
        candidates = data.get("candidates") or []
        if not isinstance(candidates, list):
            raise _protocol("candidates is not an array")
        out: list[dict[str, Any]] = []
        for position, candidate in enumerate(candidates):
            text, calls = _read_parts(candidate)
            self._remember_signatures(calls)
            index = _candidate_index(candidate, position)
            if index in state.finished:
                continue
            if index not in state.started:
                state.started.add(index)
                out.append(state.chunks.role(index))
            if text:
                chunk = state.chunks.chunk({"content": text}, index=index)
                if state.chunks.logprobs:
                    chunk["choices"][0]["logprobs"] = _logprobs(candidate)
                out.append(chunk)
            for call in calls:
                # Gemini sends each function call whole, so one delta carries all of it.
                number = state.tool_calls.get(index, 0)
                state.tool_calls[index] = number + 1
                out.append(state.chunks.chunk({"tool_calls": [{"index": number, **call}]},
                                              index=index))
            if candidate.get("finishReason"):
                state.finished.add(index)
                out.append(state.chunks.chunk({}, _finish_reason(
                    candidate["finishReason"], index in state.tool_calls), index=index))
        return out

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        payload = orjson.dumps(self.build_request(request.body))
        resp = await self.send("POST", self.stream_url, data=payload, headers=self._headers())
        state = _StreamState(StreamChunks(self.model.name,
                                          logprobs=request.body.get("logprobs") is True))
        complete = False
        try:
            # iter_sse is an async generator (typed as an iterator): close it with us.
            sse = iter_sse(resp.content)
            async with contextlib.aclosing(sse) as events:
                async for event in events:
                    try:
                        data = orjson.loads(event.data)
                    except orjson.JSONDecodeError:
                        raise _protocol("a stream event is not valid JSON") from None
                    for chunk in self._event_chunks(data, state):
                        yield chunk
            # Gemini has no [DONE]: the end is every candidate having a finishReason.
            if not state.finished or state.started - state.finished:
                raise _protocol("the stream ended before a finishReason")
            complete = True
            if request.include_usage:
                yield state.chunks.usage(_usage(state.usage))
        except (aiohttp.ClientError, ValueError) as exc:
            # Connection lost mid-stream, or an event over iter_sse's size bound.
            raise _protocol(f"the stream broke ({type(exc).__name__})") from None
        finally:
            end_response(resp, complete=complete)

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        body = request.body
        given = body.get("input")
        if isinstance(given, str):
            texts, batch = [given], False
        elif isinstance(given, list) and given and all(isinstance(t, str) for t in given):
            texts, batch = list(given), True
        else:
            raise _bad("input must be a string or a non-empty array of strings; Gemini does "
                       "not take token arrays", "input")
        dimensions = body.get("dimensions")
        if dimensions is not None and (not isinstance(dimensions, int)
                                       or isinstance(dimensions, bool) or dimensions < 1):
            raise _bad("dimensions must be a positive integer", "dimensions")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _bad("encoding_format must be float or base64", "encoding_format")
        options: GeminiOptions = self.options
        task_type = options.task_type
        if body.get("task_type") is not None:
            task_type = _task_type(body["task_type"])
            if task_type is None:
                raise _bad(f"task_type must be one of {', '.join(sorted(TASK_TYPES))}",
                           "task_type")

        def embed_request(text: str) -> dict[str, Any]:
            # EmbedContentRequest: https://ai.google.dev/api/embeddings
            one: dict[str, Any] = {"model": self.model_path,
                                   "content": {"parts": [{"text": text}]}}
            if task_type is not None:
                one["taskType"] = task_type.upper()
            if dimensions is not None:
                one["outputDimensionality"] = dimensions
            return one

        if batch:
            embeddings = await self._batch_embed([embed_request(t) for t in texts])
        else:
            data = await self._post_json(self.embed_url, embed_request(texts[0]))
            embeddings = [data.get("embedding")]
        items = []
        for i, embedding in enumerate(embeddings):
            values = embedding.get("values") if isinstance(embedding, dict) else None
            if not isinstance(values, list) or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                raise _protocol("an embedding has no list of numbers")
            if dimensions is not None:
                # Only Gemini's full-size embeddings come normalised; truncated ones must be
                # normalised by the caller (https://ai.google.dev/gemini-api/docs/embeddings,
                # "Ensuring quality for smaller dimensions"). OpenAI's are always unit
                # length, and normalising a unit vector changes nothing, so any dimensions do.
                values = _normalised(values)
            vector: Any = embedding_base64(values) if encoding == "base64" else values
            items.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum(_estimate_tokens(t) for t in texts)
        return EmbeddingsResponse(data={
            "object": "list",
            "data": items,
            "model": self.model.name,
            # Gemini's embed answers carry no token counts: an estimate, so budgets count them.
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    #: batchEmbedContents takes at most this many requests
    #: (https://ai.google.dev/api/embeddings#method:-models.batchembedcontents).
    BATCH_LIMIT = 100
    #: Batches of one embeddings request in flight at once.
    BATCH_CONCURRENCY = 4

    async def _batch_embed(self, requests: list[dict[str, Any]]) -> list[Any]:
        """The embeddings of ``requests``, in order, in batches of at most BATCH_LIMIT."""
        batches = [requests[i:i + self.BATCH_LIMIT]
                   for i in range(0, len(requests), self.BATCH_LIMIT)]
        results: list[list[Any]] = [[] for _ in batches]
        slots = asyncio.Semaphore(self.BATCH_CONCURRENCY)

        async def run(number: int, batch: list[dict[str, Any]]) -> None:
            async with slots:
                data = await self._post_json(self.batch_embed_url, {"requests": batch})
            embeddings = data.get("embeddings")
            if not isinstance(embeddings, list) or len(embeddings) != len(batch):
                raise _protocol("the number of embeddings does not match the input")
            results[number] = embeddings

        try:
            # One failed batch fails the request and cancels the batches still running.
            async with asyncio.TaskGroup() as group:
                for number, batch in enumerate(batches):
                    group.create_task(run(number, batch))
        except* UpstreamError as failed:
            raise failed.exceptions[0] from None
        return [embedding for result in results for embedding in result]

    def error_from_response(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError:
        """Map Gemini's error, a google.rpc.Status: ``{"error": {"code", "message", "status"}}``.

        Statuses per https://ai.google.dev/gemini-api/docs/troubleshooting.
        """
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list) and parsed:  # the non-SSE stream wraps it in an array
            parsed = parsed[0]
        error = parsed.get("error") if isinstance(parsed, dict) else None
        error = error if isinstance(error, dict) else {}
        message = self._redact(str(error.get("message") or f"Gemini answered HTTP {status}"))
        grpc = error.get("status") if isinstance(error.get("status"), str) else None
        details = [d for d in error.get("details") or [] if isinstance(d, dict)]
        retry_after = parse_retry_after(headers.get("retry-after"))
        reasons = set()
        for detail in details:
            kind = str(detail.get("@type", ""))
            if kind.endswith("google.rpc.RetryInfo") and retry_after is None:
                match = _DURATION.match(str(detail.get("retryDelay", "")))
                retry_after = float(match.group(1)) if match else None
            elif kind.endswith("google.rpc.ErrorInfo"):
                reasons.add(detail.get("reason"))

        def fail(kind: ErrorKind, out: int, code: str | None = grpc) -> UpstreamError:
            return UpstreamError(kind, message, status=out, code=code, retry_after=retry_after,
                                 upstream_status=status)

        if grpc == "RESOURCE_EXHAUSTED" or status == 429:
            return fail(ErrorKind.RATE_LIMITED, 429)
        if (grpc == "INVALID_ARGUMENT" or status == 400) and _CONTEXT_LENGTH.search(message):
            return fail(ErrorKind.CONTEXT_LENGTH, 400, "context_length_exceeded")
        # A bad key is a 400 INVALID_ARGUMENT with reason API_KEY_INVALID; an unusable account
        # (billing, region) is FAILED_PRECONDITION. Both are ours to fix, not the client's.
        if status in (401, 403) or grpc in ("UNAUTHENTICATED", "PERMISSION_DENIED",
                                            "FAILED_PRECONDITION") \
                or "API_KEY_INVALID" in reasons:
            return fail(ErrorKind.AUTH, 502)
        if grpc == "DEADLINE_EXCEEDED" or status == 504:
            return fail(ErrorKind.TIMEOUT, 504)
        if grpc in ("UNAVAILABLE", "INTERNAL") or status >= 500:
            return fail(ErrorKind.OVERLOADED, 502)
        return error_from_status(status, message, headers=headers, code=grpc)
