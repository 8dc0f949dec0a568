"""The provider registry: entry points, run-time registration, clear failures."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import structlog

from aiproxy.config import ConfigError
from aiproxy.plugins import ProviderRegistry, UnknownProviderError
from aiproxy.provider import (
    PLUGIN_API_VERSION,
    SUPPORTED_PLUGIN_API_VERSIONS,
    ChatRequest,
    ChatResponse,
    Provider,
)
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


class Old(Shout):
    plugin_api_version = 1


class Future(Shout):
    plugin_api_version = 3


class Current(Shout):
    plugin_api_version = PLUGIN_API_VERSION


class TestPluginApiVersion:
    """The registry, not each plugin, checks the version a plugin was written for."""

    def test_first_party_plugins_declare_this_version(self):
        registry = ProviderRegistry()
        for name in ("openai", "openrouter", "groq", "huggingface", "glama", "arliai", "github",
                     "together", "aimlapi", "airforce", "google", "gemini", "cohere",
                     "gigachat", "cloudflare"):
            assert registry.get(name).plugin_api_version == PLUGIN_API_VERSION, name
        assert PLUGIN_API_VERSION in SUPPORTED_PLUGIN_API_VERSIONS

    @pytest.mark.parametrize(("cls", "words"), [
        (Old, "was written for plugin API 1; this aiproxy runs 2: upgrade the plugin"),
        (Future, "was written for plugin API 3; this aiproxy runs 2: upgrade aiproxy"),
    ])
    def test_an_incompatible_plugin_is_a_config_error_naming_it(self, cls, words):
        with pytest.raises(ConfigError) as info:
            ProviderRegistry(discover=False).register("old", cls)
        assert info.value.errors == [
            f"provider 'old' (test_plugins:{cls.__qualname__}) {words}"
            + (' (CHANGELOG.md, "Plugin API", says what changed)' if cls is Old else "")]

    def test_an_entry_point_written_for_another_version(self, monkeypatch):
        from importlib.metadata import EntryPoint

        module = types.ModuleType("aiproxy_old_plugin_xyz")
        module.Provider = Old  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "aiproxy_old_plugin_xyz", module)
        registry = ProviderRegistry(discover=False)
        registry._entry_points["old"] = EntryPoint(
            name="old", value="aiproxy_old_plugin_xyz:Provider", group="aiproxy.providers")
        with pytest.raises(ConfigError, match=r"provider 'old' \(aiproxy_old_plugin_xyz:"
                                              r"Provider\) was written for plugin API 1"):
            registry.get("old")

    def test_a_version_that_is_no_number(self):
        class Odd(Shout):
            plugin_api_version = "2"  # type: ignore[assignment]

        with pytest.raises(ConfigError, match="is not a version number"):
            ProviderRegistry(discover=False).register("odd", Odd)

    def test_undeclared_loads_with_a_warning(self):
        registry = ProviderRegistry(discover=False)
        with structlog.testing.capture_logs() as logs:
            registry.register("shout", Shout)
            registry.register("shout2", Shout)  # warned about once
            registry.register("current", Current)
        assert registry.get("shout") is Shout
        assert [entry["event"] for entry in logs] == ["plugin_api_version_undeclared"]
        assert logs[0]["provider"] == "shout"

    async def test_a_config_naming_an_incompatible_plugin_does_not_start(self, monkeypatch,
                                                                        start_proxy):
        from importlib.metadata import EntryPoint

        module = types.ModuleType("aiproxy_old_plugin_xyz")
        module.Provider = Old  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "aiproxy_old_plugin_xyz", module)
        registry = ProviderRegistry()
        registry._entry_points["old"] = EntryPoint(
            name="old", value="aiproxy_old_plugin_xyz:Provider", group="aiproxy.providers")
        with pytest.raises(ConfigError, match="written for plugin API 1"):
            await start_proxy({"models": [{"name": "m", "provider": "old"},
                                          {"name": "n", "provider": "mock"}]},
                              registry=registry)
