"""The provider registry: entry points, run-time registration, clear failures."""

from __future__ import annotations

from typing import Any

import pytest

from aiproxy.config import ConfigError
from aiproxy.plugins import ProviderRegistry, UnknownProviderError
from aiproxy.provider import ChatRequest, ChatResponse, Provider
from aiproxy_providers.mock import MockProvider
from aiproxy_providers.openai import OpenAIProvider


class Shout(Provider):
    default_url = "shout://"

    async def chat(self, request: ChatRequest) -> ChatResponse:
        text = str(request.body["messages"][-1]["content"]).upper()
        return ChatResponse({"id": "x", "object": "chat.completion", "created": 0,
                             "model": self.model.name, "choices": [{
                                 "index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}]})


class TestRegistry:
    def test_first_party_plugins_come_from_entry_points(self):
        registry = ProviderRegistry()
        assert registry.get("openai") is OpenAIProvider
        assert registry.get("mock") is MockProvider
        origins = dict(registry.describe())
        assert origins["openai"].startswith("aiproxy_providers.openai:OpenAIProvider (aiproxy ")

    def test_unknown_name_lists_installed(self):
        with pytest.raises(UnknownProviderError) as info:
            ProviderRegistry().get("nosuch")
        assert "installed providers:" in info.value.errors[0]
        assert "openai" in info.value.errors[0]

    def test_register_and_unregister(self):
        registry = ProviderRegistry(discover=False)
        registry.register("shout", Shout)
        assert registry.names() == ["shout"]
        assert registry.get("shout") is Shout
        registry.unregister("shout")
        with pytest.raises(UnknownProviderError):
            registry.get("shout")

    def test_register_refuses_non_providers(self):
        with pytest.raises(TypeError):
            ProviderRegistry().register("bad", dict)  # type: ignore[arg-type]

    def test_broken_entry_point_is_a_config_error(self, monkeypatch):
        from importlib.metadata import EntryPoint

        registry = ProviderRegistry(discover=False)
        registry._entry_points["broken"] = EntryPoint(
            name="broken", value="no_such_module_xyz:Thing", group="aiproxy.providers")
        with pytest.raises(ConfigError, match="failed to load: ModuleNotFoundError"):
            registry.get("broken")


async def test_registered_provider_serves_requests(start_proxy: Any):
    registry = ProviderRegistry()
    registry.register("shout", Shout)
    proxy = await start_proxy({"models": [{"name": "loud", "provider": "shout"}]},
                              registry=registry)
    answer = await proxy.client.chat.completions.create(
        model="loud", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content == "HELLO"
