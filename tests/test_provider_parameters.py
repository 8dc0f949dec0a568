"""Each translating provider's declared OpenAI parameters: refused ones get the one 400 shape
on every provider, before any upstream call; dropped ones never reach the upstream."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import orjson
import pytest

from aiproxy.provider import (
    OPENAI_CHAT_PARAMETERS,
    ChatRequest,
    ErrorKind,
    ModelConfig,
    Parameters,
    Provider,
    UpstreamError,
)
from aiproxy_providers.cloudflare import CloudflareProvider
from aiproxy_providers.cloudflare.models import FAMILIES
from aiproxy_providers.cloudflare.translate import chat_input
from aiproxy_providers.cohere import CohereProvider, _chat_payload
from aiproxy_providers.gemini import GeminiProvider
from aiproxy_providers.gigachat import GigaChatProvider
from aiproxy_providers.gigachat.translate import chat_body

# A value of each OpenAI chat parameter that asks for something (none is OpenAI's default).
SAMPLES: dict[str, Any] = {
    "audio": {"voice": "alloy", "format": "wav"},
    "frequency_penalty": 0.5,
    "function_call": "auto",
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "max_completion_tokens": 16,
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Hi"}],
    "metadata": {"team": "a"},
    "modalities": ["text", "audio"],
    "model": "m",
    "moderation": {"model": "omni-moderation-latest"},
    "n": 2,
    "parallel_tool_calls": False,
    "prediction": {"type": "content", "content": "draft"},
    "presence_penalty": 0.5,
    "prompt_cache_key": "k1",
    "prompt_cache_options": {"ttl": "30m"},
    "prompt_cache_retention": "24h",
    "reasoning_effort": "low",
    "response_format": {"type": "json_object"},
    "safety_identifier": "user-1",
    "seed": 7,
    "service_tier": "flex",
    "stop": ["END"],
    "store": True,
    "stream": True,
    "stream_options": {"include_usage": True},
    "temperature": 0.5,
    "tool_choice": "required",
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "top_logprobs": 2,
    "top_p": 0.5,
    "user": "u1",
    "verbosity": "low",
    "web_search_options": {"search_context_size": "low"},
}

GEMINI = ModelConfig(name="gemini/gemini-2.5-flash", provider="gemini", token="k",
                     url="http://127.0.0.1:9/v1beta")
COHERE = ModelConfig(name="command-a", provider="cohere", token="k", url="http://127.0.0.1:9")
GIGACHAT = ModelConfig(name="GigaChat", provider="gigachat", token="id:secret",
                       url="http://127.0.0.1:9/api/v1",
                       options={"oauth_url": "http://127.0.0.1:9/oauth"})
CLOUDFLARE = ModelConfig(name="@cf/meta/llama-3.1-8b-instruct", provider="cloudflare",
                         token="k", url="http://127.0.0.1:9/client/v4",
                         options={"account_id": "a"})
CLOUDFLARE_OPENAI = ModelConfig(name="@cf/zai-org/glm-4.7-flash", provider="cloudflare",
                                token="k", url="http://127.0.0.1:9/client/v4",
                                options={"account_id": "a"})
PROVIDERS: list[tuple[type[Provider], ModelConfig]] = [
    (GeminiProvider, GEMINI), (CohereProvider, COHERE), (GigaChatProvider, GIGACHAT),
    (CloudflareProvider, CLOUDFLARE), (CloudflareProvider, CLOUDFLARE_OPENAI)]


def declaration(cls: type[Provider], model: ModelConfig) -> Parameters:
    if cls is CloudflareProvider:
        return FAMILIES["chat-completions" if "glm" in model.name else "native"].parameters
    assert cls.chat_parameters is not None
    return cls.chat_parameters


def request(body: dict[str, Any]) -> ChatRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], **body}
    return ChatRequest(body=body, raw=orjson.dumps(body))


def test_every_openai_parameter_has_a_sample() -> None:
    assert set(SAMPLES) == OPENAI_CHAT_PARAMETERS


def cases() -> list[Any]:
    out = []
    for cls, model in PROVIDERS:
        for name in sorted(declaration(cls, model).refused):
            out.append(pytest.param(cls, model, name, id=f"{model.name}-{name}"))
    return out


@pytest.mark.parametrize(("cls", "model", "name"), cases())
async def test_refused_parameters_are_one_400_shape(cls: type[Provider], model: ModelConfig,
                                                    name: str) -> None:
    params = declaration(cls, model)
    async with aiohttp.ClientSession() as session:
        provider = cls(model, session)
        with pytest.raises(UpstreamError) as info:
            # Port 9 answers nothing: a call made before refusing would be a CONNECTION error.
            await provider.chat(request({name: SAMPLES[name]}))
    err = info.value
    assert (err.kind, err.status, err.code, err.param) == (
        ErrorKind.BAD_REQUEST, 400, "unsupported_parameter", name)
    assert err.message.startswith(f"Unsupported parameter: '{name}' is not supported by "
                                  f"{params.provider}")


@pytest.mark.parametrize(("cls", "model"), PROVIDERS, ids=[m.name for _, m in PROVIDERS])
def test_a_refused_parameter_at_openai_s_default_is_no_refusal(cls: type[Provider],
                                                               model: ModelConfig) -> None:
    params = declaration(cls, model)
    defaults = {"n": 1, "logprobs": False, "frequency_penalty": 0, "presence_penalty": 0,
                "logit_bias": {}, "modalities": ["text"], "stop": [], "verbosity": "medium",
                "audio": None, "top_logprobs": 0}
    params.check({k: v for k, v in defaults.items() if k in params.refused})


def sent(cls: type[Provider], model: ModelConfig, body: dict[str, Any]) -> dict[str, Any]:
    """What the provider would send upstream for ``body``."""
    full = request(body).body
    if cls is GeminiProvider:
        # Building a request needs no session: the provider only keeps it.
        return GeminiProvider(model, None).build_request(full)  # type: ignore[arg-type]
    if cls is CohereProvider:
        return _chat_payload(full, "command-a", CohereProvider.options_type(), stream=False)
    if cls is GigaChatProvider:
        return chat_body(full, "GigaChat", stream=False)
    family = FAMILIES["chat-completions" if "glm" in model.name else "native"]
    return chat_input(full, family, model.name, stream=False, include_usage=False)[0]


@pytest.mark.parametrize(("cls", "model"), PROVIDERS, ids=[m.name for _, m in PROVIDERS])
def test_dropped_parameters_never_reach_the_upstream(cls: type[Provider],
                                                     model: ModelConfig) -> None:
    params = declaration(cls, model)
    assert params.ignored
    # The request with every dropped parameter set is the request without them.
    assert sent(cls, model, {name: SAMPLES[name] for name in params.ignored}) \
        == sent(cls, model, {})


async def test_the_client_sees_the_same_error_from_each_provider(start_proxy: Any) -> None:
    # Through a real server and the openai SDK: one code, one param, one message shape.
    proxy = await start_proxy({"models": [
        {"name": GEMINI.name, "provider": "gemini", "token": "k", "url": GEMINI.url},
        {"name": COHERE.name, "provider": "cohere", "token": "k", "url": COHERE.url},
        {"name": "cf", "provider": "cloudflare", "token": "k", "url": CLOUDFLARE.url,
         "upstream_model": CLOUDFLARE.name, "options": {"account_id": "a"}},
    ]})
    seen = {}
    for model, upstream in ((GEMINI.name, "Gemini"), (COHERE.name, "Cohere"),
                            ("cf", "Workers AI (native models)")):
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi"}],
                logit_bias={"50256": -100})
        body = info.value.body
        assert isinstance(body, dict)
        assert (body["code"], body["param"], body["type"]) == (
            "unsupported_parameter", "logit_bias", "invalid_request_error")
        # The core names the model the message came from.
        assert body["message"].startswith(
            f"model '{model}': Unsupported parameter: 'logit_bias' is not supported by "
            f"{upstream}")
        seen[model] = body["message"].removeprefix(f"model '{model}': ").replace(
            upstream, "<provider>").split(" (")[0]
    assert len(set(seen.values())) == 1
