"""An OpenAI chat request as a Gemini ``GenerateContentRequest``.

- generateContent: https://ai.google.dev/api/generate-content
- Content, Part, Tool, ToolConfig, FunctionDeclaration: https://ai.google.dev/api/caching
- Function calling: https://ai.google.dev/gemini-api/docs/function-calling
- Structured output: https://ai.google.dev/gemini-api/docs/structured-output
- Thinking: https://ai.google.dev/gemini-api/docs/thinking
- Media by URL: https://ai.google.dev/gemini-api/docs/file-input-methods
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
import orjson

from aiproxy.provider import (
    Message,
    Parameters,
    Part,
    ToolCall,
    bad_request,
    data_url,
    function_tools,
    max_tokens_of,
    messages_of,
    parts_of,
    stop_of,
    text_of,
    tool_choice_of,
)

__all__ = ["CHAT_PARAMETERS", "PROVIDER", "TASK_TYPES", "GeminiOptions", "build_request",
           "signature_of", "task_type"]

PROVIDER = "Gemini"

# What a GenerateContentRequest has room for (https://ai.google.dev/api/generate-content).
CHAT_PARAMETERS = Parameters(
    PROVIDER,
    supported={"temperature", "top_p", "n", "presence_penalty", "frequency_penalty", "seed",
               "max_tokens", "max_completion_tokens", "stop", "logprobs", "top_logprobs",
               "reasoning_effort", "response_format", "tools", "tool_choice"},
    ignored={"user", "metadata", "store", "parallel_tool_calls", "service_tier", "prediction",
             "safety_identifier", "prompt_cache_key", "prompt_cache_options",
             "prompt_cache_retention"},
    extensions={"top_k"},
    notes={
        "parallel_tool_calls": "Gemini decides how many functions it calls at once",
        "logit_bias": "Gemini has no logit bias",
        "functions": "the legacy functions/function_call fields: use tools and tool_choice",
        "function_call": "the legacy functions/function_call fields: use tools and tool_choice",
        "audio": "Gemini answers in text only, no audio output",
        "modalities": "Gemini answers in text only, no audio output",
        "web_search_options": "Gemini's search grounding is not an OpenAI option",
    },
)

# EmbedContentRequest.taskType values (https://ai.google.dev/api/embeddings#tasktype).
TASK_TYPES = frozenset({"RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY",
                        "CLASSIFICATION", "CLUSTERING", "QUESTION_ANSWERING",
                        "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY"})


def task_type(value: Any) -> str | None:
    """A task type as Gemini spells it (upper case), or None if it names none."""
    if not isinstance(value, str) or value.upper() not in TASK_TYPES:
        return None
    return value.upper()


def _check_task_type(inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and task_type(value) is None:
        raise ValueError(f"task_type: {value!r} is not one of {', '.join(sorted(TASK_TYPES))} "
                         "(https://ai.google.dev/api/embeddings#tasktype)")


def _check_safety_settings(
    inst: object, attribute: attrs.Attribute[Any], value: tuple[Mapping[str, Any], ...]
) -> None:
    for i, setting in enumerate(value):
        if not isinstance(setting.get("category"), str) \
                or not isinstance(setting.get("threshold"), str):
            raise ValueError(f"safety_settings[{i}]: needs string category and threshold "
                             "(https://ai.google.dev/gemini-api/docs/safety-settings)")


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


# --- Contents ---------------------------------------------------------------------------------

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


def _media_part(part: Part) -> dict[str, Any]:
    """An image or file URL as a Gemini part: ``https://`` as fileData, ``data:`` inline (a
    Blob)."""
    url = part.url or ""
    if url[:8].lower() == "https://":
        return _file_data(url)
    inline = data_url(url)
    if inline is not None:
        return {"inlineData": {"mimeType": inline.media_type, "data": inline.data}}
    if url[:5].lower() == "data:":
        raise bad_request(f"{part.where}: expected a data:<mime>;base64,<data> URL",
                          param=part.where)
    raise bad_request(f"{part.where}: Gemini accepts images and files as https:// URLs or data: "
                      "URLs (data:<mime>;base64,...)", param=part.where)


def _user_parts(msg: Message) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in parts_of(msg.content, msg.where, provider=PROVIDER,
                         kinds=("text", "image_url", "input_audio", "file")):
        if part.kind == "text":
            if part.text:
                parts.append({"text": part.text})
        elif part.kind == "input_audio" and part.audio is not None:
            data, fmt = part.audio
            parts.append({"inlineData": {"mimeType": f"audio/{fmt}", "data": data}})
        else:
            parts.append(_media_part(part))
    return parts


# The ids aiproxy.provider.tool_call_id() makes for calls Gemini sent without one.
_OUR_CALL_ID = re.compile(r"call_[0-9a-f]{24}")


def _gemini_call_id(call_id: str | None) -> bool:
    """True for a tool call id to send back to Gemini as FunctionCall/FunctionResponse ``id``.

    When Gemini gives a functionCall an ``id``, the client must answer with the same one
    (https://ai.google.dev/api/caching#FunctionCall); the OpenAI tool call carries it verbatim.
    An id we made up ourselves was never Gemini's, so the replay stays as Gemini sent it.
    """
    return bool(call_id) and not _OUR_CALL_ID.fullmatch(call_id or "")


def signature_of(call: Mapping[str, Any]) -> str | None:
    """The thought signature an OpenAI tool call carries in ``extra_content.google``."""
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def _function_call_part(call: ToolCall, signatures: Mapping[str, str]) -> dict[str, Any]:
    function_call: dict[str, Any] = {"name": call.name, "args": call.arguments_object()}
    if _gemini_call_id(call.id):
        function_call["id"] = call.id
    part: dict[str, Any] = {"functionCall": function_call}
    # Gemini 3 rejects a replayed functionCall without the thoughtSignature it came with
    # (https://ai.google.dev/gemini-api/docs/thought-signatures).
    signature = signature_of(call.raw) or (signatures.get(call.id) if call.id else None)
    if signature:
        part["thoughtSignature"] = signature
    return part


def _function_response_part(msg: Message, names: Mapping[str, str]) -> dict[str, Any]:
    # Gemini matches a result to its call by function name, which OpenAI's tool message lacks.
    call_id = msg.tool_call_id
    name = names.get(call_id) if call_id else None
    if name is None:
        raise bad_request(f"{msg.where}: tool_call_id {call_id!r} matches no earlier assistant "
                          "tool call", param=f"{msg.where}.tool_call_id")
    text = text_of(msg.content, msg.where, provider=PROVIDER)
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    # FunctionResponse.response must be a JSON object (a protobuf Struct).
    response = parsed if isinstance(parsed, dict) else {"content": text}
    function_response: dict[str, Any] = {"name": name, "response": response}
    if _gemini_call_id(call_id):
        function_response["id"] = call_id  # FunctionResponse.id: the FunctionCall.id answered
    return {"functionResponse": function_response}


def _contents(body: Mapping[str, Any], signatures: Mapping[str, str]
              ) -> tuple[list[dict[str, Any]], list[str]]:
    """Messages as Gemini ``contents`` (user/model turns) and the system texts."""
    turns: list[dict[str, Any]] = []
    system: list[str] = []
    names: dict[str, str] = {}  # tool call id -> function name
    for msg in messages_of(body, provider=PROVIDER):
        if msg.role == "system":
            # Gemini has one systemInstruction; system messages anywhere in the thread go there.
            text = text_of(msg.content, msg.where, provider=PROVIDER)
            if text:
                system.append(text)
            continue
        if msg.role == "user":
            role, parts = "user", _user_parts(msg)
        elif msg.role == "assistant":
            text = text_of(msg.content, msg.where, provider=PROVIDER)
            role, parts = "model", [{"text": text}] if text else []
            for call in msg.tool_calls:
                if call.id:
                    names[call.id] = call.name
                parts.append(_function_call_part(call, signatures))
        else:
            # Function results travel in a user turn:
            # https://ai.google.dev/gemini-api/docs/function-calling
            role, parts = "user", [_function_response_part(msg, names)]
        if not parts:
            continue
        # Gemini wants user and model turns to alternate: merge neighbours of one role.
        if turns and turns[-1]["role"] == role:
            turns[-1]["parts"].extend(parts)
        else:
            turns.append({"role": role, "parts": parts})
    if not turns:
        raise bad_request("messages must hold at least one non-empty user or assistant message",
                          param="messages")
    return turns, system


# --- Tools --------------------------------------------------------------------------------------


def _tools(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """``tools``/``tool_choice`` as Gemini ``tools`` and ``toolConfig``."""
    tools = function_tools(body, provider=PROVIDER)
    choice = tool_choice_of(body, tools, provider=PROVIDER)
    if not tools:
        return [], None
    declarations = []
    for tool in tools:
        declaration: dict[str, Any] = {"name": tool.name}
        if tool.description:
            declaration["description"] = tool.description
        if tool.parameters is not None:
            # OpenAI sends JSON Schema; `parameters` takes only Gemini's OpenAPI subset and
            # refuses e.g. additionalProperties, so use parametersJsonSchema
            # (https://ai.google.dev/api/caching#FunctionDeclaration).
            declaration["parametersJsonSchema"] = tool.parameters
        declarations.append(declaration)
    # FunctionCallingConfig.mode: AUTO / ANY (must call) / NONE, with allowedFunctionNames.
    config: dict[str, Any] | None = None
    if choice is not None and choice.mode == "function":
        config = {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    elif choice is not None:
        config = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice.mode]}
    return [{"functionDeclarations": declarations}], (
        {"functionCallingConfig": config} if config else None)


# --- generationConfig ---------------------------------------------------------------------------

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
        raise bad_request(f"reasoning_effort must be one of {', '.join(_EFFORTS)}",
                          param="reasoning_effort")
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
            raise bad_request(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}",
                              param="top_logprobs")
        if wanted is not True:
            raise bad_request("top_logprobs requires logprobs: true", param="top_logprobs")
    if wanted is not True:
        return {}
    config: dict[str, Any] = {"responseLogprobs": True}
    if top:
        config["logprobs"] = top
    return config


def _response_format(fmt: Any) -> dict[str, Any]:
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind in (None, "text"):
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
        if not isinstance(spec, dict):
            raise bad_request("response_format.json_schema must be an object",
                              param="response_format")
        config: dict[str, Any] = {"responseMimeType": "application/json"}
        if spec.get("schema") is not None:
            # responseJsonSchema takes JSON Schema as OpenAI clients write it; responseSchema
            # would need Gemini's OpenAPI subset. It requires responseMimeType.
            config["responseJsonSchema"] = spec["schema"]
        return config
    raise bad_request(f"response_format type {kind!r} is not supported by Gemini",
                      param="response_format")


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
    max_tokens = max_tokens_of(body)
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    stop = stop_of(body)
    if stop:
        config["stopSequences"] = stop
    config.update(_response_format(body.get("response_format")))
    return config


def build_request(body: Mapping[str, Any], model_path: str, options: GeminiOptions,
                  signatures: Mapping[str, str]) -> dict[str, Any]:
    """The GenerateContentRequest for an OpenAI chat request body; ``signatures`` are the
    thought signatures remembered by tool call id."""
    CHAT_PARAMETERS.check(body)
    contents, system = _contents(body, signatures)
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    tools, tool_config = _tools(body)
    if tools:
        request["tools"] = tools
    if tool_config:
        request["toolConfig"] = tool_config
    config = _generation_config(body, model_path)
    if config:
        request["generationConfig"] = config
    if options.safety_settings:
        request["safetySettings"] = [dict(s) for s in options.safety_settings]
    return request
