"""What each Workers AI model reads: text model families and text-to-image models, each from
its model page's input schema (https://developers.cloudflare.com/workers-ai/models/<model>/).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from aiproxy.provider import Parameters, bad_request

__all__ = ["FAMILIES", "IMAGE_MODELS", "MODELS", "NATIVE", "Family", "family_of", "image_body"]

MODELS = "https://developers.cloudflare.com/workers-ai/models/"

# Dropped on every family: they change nothing a Workers AI model does.
_IGNORED = ("user", "metadata", "store", "service_tier", "prediction", "safety_identifier",
            "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention")
# Taken by every family's schema; top_k and repetition_penalty are Workers AI's own.
_SAMPLING = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty",
             "max_tokens", "max_completion_tokens", "response_format", "tools")
_NOT_OPENAI = {"audio": "Workers AI text models answer in text only",
               "modalities": "Workers AI text models answer in text only",
               "functions": "use tools instead of the deprecated functions",
               "function_call": "use tool_choice instead of the deprecated function_call",
               "web_search_options": "Workers AI has no web search option"}
_NO_INPUT = "the model's input schema has no such input (its page under " + MODELS + ")"


def _native_parameters(label: str) -> Parameters:
    return Parameters(
        f"Workers AI ({label} models)",
        supported={*_SAMPLING, "tool_choice"},
        ignored={*_IGNORED, "parallel_tool_calls"},
        extensions={"top_k", "repetition_penalty"},
        notes={**_NOT_OPENAI, "parallel_tool_calls": "the model decides",
               **dict.fromkeys(("n", "stop", "logprobs", "top_logprobs", "logit_bias",
                                "reasoning_effort", "moderation", "verbosity"), _NO_INPUT)})


@attrs.frozen
class Family:
    """What a family of Workers AI text models reads, as its model pages' input schema says."""

    name: str
    page: str  # a model page whose schema shows it
    # The OpenAI Chat Completions schema: stop, n, logprobs, top_logprobs, logit_bias, every
    # tool_choice, and OpenAI's response_format ({name, schema, strict}) as it is.
    openai_schema: bool
    parameters: Parameters
    # One top-level ``image`` (its bytes as integers 0-255) beside string contents, instead of
    # OpenAI image_url parts.
    top_level_image: bool = False
    # The schema's max_tokens default: an answer that used all of it was cut.
    default_max_tokens: int | None = 256


# llama-3.x, mistral, qwen, gemma-3, llama-4...: no stop, n, logprobs or forced tool_choice;
# response_format.json_schema is the JSON schema itself (features/json-mode/).
NATIVE = Family("native", MODELS + "llama-3.3-70b-instruct-fp8-fast/", openai_schema=False,
                parameters=_native_parameters("native"))
_VISION = Family("vision", MODELS + "llama-3.2-11b-vision-instruct/", openai_schema=False,
                 parameters=_native_parameters("vision"), top_level_image=True)
# These answer max_tokens cuts with finish_reason "length" themselves.
_CHAT_COMPLETIONS = Family(
    "chat-completions", MODELS + "glm-4.7-flash/", openai_schema=True,
    parameters=Parameters(
        "Workers AI (chat-completions models)",
        supported={*_SAMPLING, "tool_choice", "stop", "n", "logprobs", "top_logprobs",
                   "logit_bias", "parallel_tool_calls", "reasoning_effort"},
        ignored=_IGNORED, extensions={"top_k", "repetition_penalty"},
        notes={**_NOT_OPENAI, "moderation": _NO_INPUT, "verbosity": _NO_INPUT}),
    default_max_tokens=None)
FAMILIES = {f.name: f for f in (NATIVE, _VISION, _CHAT_COMPLETIONS)}

# Model id (after its last "/") prefix -> family, first match wins; any other model is native,
# and options.family overrides. Each line was read off the model page named beside it.
_FAMILY_OF: tuple[tuple[str, Family], ...] = (
    ("llama-3.2-11b-vision-instruct", _VISION),  # models/llama-3.2-11b-vision-instruct/
    ("glm-", _CHAT_COMPLETIONS),  # models/glm-4.7-flash/, models/glm-5.3/
    ("kimi-k2", _CHAT_COMPLETIONS),  # models/kimi-k2.5/, models/kimi-k2.6/
    ("gemma-4", _CHAT_COMPLETIONS),  # models/gemma-4-26b-a4b-it/
    ("nemotron-3", _CHAT_COMPLETIONS),  # models/nemotron-3-120b-a12b/
    ("deepseek-v4", _CHAT_COMPLETIONS),  # models/deepseek-v4-flash-0731/
    ("qwen3.8", _CHAT_COMPLETIONS),  # models/qwen3.8-27b/
)


def family_of(model_id: str) -> Family:
    name = model_id.rsplit("/", 1)[-1]
    return next((fam for prefix, fam in _FAMILY_OF if name.startswith(prefix)), NATIVE)


# --- Text-to-image models ---------------------------------------------------------------------


@attrs.frozen
class ImageModel:
    """The inputs of one text-to-image model, as its model page's input schema lists them."""

    page: str
    # Inputs besides ``prompt`` a client may send (extra_body), each with the schema's maximum
    # where it has one. The schemas refuse any other key.
    inputs: Mapping[str, int | None]
    # The bounds of width and height; None: the model takes no size and picks its own.
    size: tuple[int, int] | None


_SD_INPUTS: Mapping[str, int | None] = {"negative_prompt": None, "num_steps": 20,
                                        "guidance": None, "seed": None}
IMAGE_MODELS = {
    "flux-1-schnell": ImageModel(MODELS + "flux-1-schnell/", {"steps": 8}, None),
    "stable-diffusion-xl-base-1.0": ImageModel(MODELS + "stable-diffusion-xl-base-1.0/",
                                               _SD_INPUTS, (256, 2048)),
    "stable-diffusion-xl-lightning": ImageModel(MODELS + "stable-diffusion-xl-lightning/",
                                                _SD_INPUTS, (256, 2048)),
    "dreamshaper-8-lcm": ImageModel(MODELS + "dreamshaper-8-lcm/", _SD_INPUTS, (256, 2048)),
    "lucid-origin": ImageModel(MODELS + "lucid-origin/", {
        "guidance": None, "seed": None, "num_steps": 40, "steps": 40}, (0, 2500)),
    "phoenix-1.0": ImageModel(MODELS + "phoenix-1.0/", {
        "guidance": None, "seed": None, "num_steps": 50, "negative_prompt": None}, (0, 2048)),
}
# A model the table does not know gets what the client sent of these, and size as width/height.
_ANY_IMAGE_MODEL = ImageModel(MODELS, dict.fromkeys(
    ("steps", "num_steps", "guidance", "negative_prompt", "seed")), (0, 1 << 16))


def image_body(body: Mapping[str, Any], model_id: str) -> dict[str, Any]:
    """The input of a text-to-image model: what its schema (``IMAGE_MODELS``) takes."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("prompt: a non-empty string is required", param="prompt")
    # One image per call; n > 1 would multiply cost behind the limiter's back.
    if body.get("n") not in (None, 1):
        raise bad_request("Workers AI makes one image per request (n must be 1)", param="n")
    name = model_id.rsplit("/", 1)[-1]
    spec = IMAGE_MODELS.get(name, _ANY_IMAGE_MODEL)
    out: dict[str, Any] = {"prompt": prompt}
    size = body.get("size")
    if size not in (None, "auto") and spec.size is not None:
        width, sep, height = str(size).partition("x")
        if not (sep and width.isdigit() and height.isdigit()):
            raise bad_request("size: expected WIDTHxHEIGHT, such as 1024x1024", param="size")
        low, high = spec.size
        if not (low <= int(width) <= high and low <= int(height) <= high):
            raise bad_request(f"size: {name} makes images from {low} to {high} pixels a side "
                              f"({spec.page})", param="size")
        out["width"], out["height"] = int(width), int(height)
    # A model without width/height picks its own size: OpenAI clients send size by habit.
    for key in _ANY_IMAGE_MODEL.inputs:
        value = body.get(key)
        if value is None:
            continue
        if key not in spec.inputs:
            takes = ", ".join(["prompt", *spec.inputs])
            raise bad_request(f"{key}: {name} takes only {takes} ({spec.page})", param=key)
        cap = spec.inputs[key]
        if cap is not None and not (isinstance(value, int) and 1 <= value <= cap):
            raise bad_request(f"{key}: {name} takes 1 to {cap} ({spec.page})", param=key)
        out[key] = value
    return out
