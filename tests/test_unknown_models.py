"""``unknown_models:``: where a model name that is neither a model nor a group goes.

Old clients of the Go proxy send names like ``gpt-4``, which it sent to ``SMALL`` when they
were shorter than 10 characters. Off by default; driven here through a real server with the
openai SDK, against a fake upstream.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from aiproxy.config import ConfigError, parse_config
from tests.conftest import openai_model


def config(url: str, **unknown: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"models": [
        openai_model("openai/small-one", url, model_size="SMALL"),
        openai_model("openai/big-one", url, model_size="BIG"),
    ]}
    if unknown:
        data["unknown_models"] = unknown
    return data


def ask(proxy: Any, model: str) -> Any:
    return proxy.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}])


class TestRouting:
    async def test_off_by_default_an_unknown_name_is_a_404(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy(config(url))
        with pytest.raises(openai.NotFoundError) as info:
            await ask(proxy, "gpt-4")
        assert info.value.code == "model_not_found"
        assert "'gpt-4' does not exist" in info.value.message
        assert fake.seen == []

    async def test_the_old_proxys_short_names_go_to_small(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy(config(url, route_to="SMALL", shorter_than=10))
        answer = await ask(proxy, "gpt-4")
        # The SMALL model answered, under its own name, and the upstream got its model id.
        assert answer.model == "openai/small-one"
        assert answer.choices[0].message.content == "reply from small-one: hello"
        assert [s.body["model"] for s in fake.seen] == ["small-one"]

        stream = await proxy.client.chat.completions.create(
            model="llama3", messages=[{"role": "user", "content": "hello"}], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "reply from small-one: hello"

    async def test_a_name_of_ten_or_more_characters_stays_unknown(self, start_proxy,
                                                                  fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy(config(url, route_to="SMALL", shorter_than=10))
        with pytest.raises(openai.NotFoundError):
            await ask(proxy, "gpt-4o-mini")  # 11 characters
        with pytest.raises(openai.NotFoundError):
            await ask(proxy, "abcdefghij")  # exactly 10
        assert (await ask(proxy, "abcdefghi")).model == "openai/small-one"  # 9

    async def test_known_names_and_groups_are_untouched(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy(config(url, route_to="SMALL"))
        assert (await ask(proxy, "BIG")).model == "openai/big-one"
        assert (await ask(proxy, "openai/big-one")).model == "openai/big-one"
        # Without shorter_than, every unknown name goes, however long.
        assert (await ask(proxy, "some-very-long-model-name-2024")).model == "openai/small-one"

    async def test_route_to_a_model_and_the_other_endpoints(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy(config(url, route_to="openai/big-one", shorter_than=10))
        assert (await ask(proxy, "gpt-4")).model == "openai/big-one"
        embedded = await proxy.client.embeddings.create(model="ada", input=["a", "b"])
        assert embedded.model == "openai/big-one"
        assert [s.body["model"] for s in fake.seen][-1] == "big-one"


class TestConfig:
    def test_defaults_off(self):
        parsed = parse_config({"models": []})
        assert parsed.unknown_models.route_to is None
        assert parsed.unknown_models.shorter_than == 0

    def test_route_to_must_name_a_model_or_group(self):
        with pytest.raises(ConfigError) as info:
            parse_config({"models": [{"name": "m", "provider": "mock"}],
                          "unknown_models": {"route_to": "SMAL"}})
        assert info.value.errors == ["unknown_models.route_to: unknown model or group 'SMAL'"]

    def test_bad_values_are_reported_with_their_path(self):
        with pytest.raises(ConfigError) as info:
            parse_config({"models": [{"name": "m", "provider": "mock", "model_size": "SMALL"}],
                          "unknown_models": {"route_to": "SMALL", "shorter_than": -1,
                                             "max_len": 3}})
        assert info.value.errors == ["unknown_models: unknown key max_len"]
        with pytest.raises(ConfigError) as info:
            parse_config({"models": [{"name": "m", "provider": "mock", "model_size": "SMALL"}],
                          "unknown_models": {"route_to": "SMALL", "shorter_than": -1}})
        assert info.value.errors == ["unknown_models.shorter_than: must be >= 0, got -1"]
