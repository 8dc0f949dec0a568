"""Client keys: allowed and forbidden models, unknown keys, per-key limits, never logged."""

from __future__ import annotations

import hashlib

import openai
import pytest

from aiproxy.config import ConfigError, parse_config

KEY_A = "team-a-key-0123456789"
KEY_B = "team-b-key-9876543210"
MSG = [{"role": "user", "content": "hi"}]


def config() -> dict:
    return {
        "models": [
            {"name": "big-1", "provider": "mock", "model_size": "BIG"},
            {"name": "big-2", "provider": "mock", "model_size": "BIG", "priority": 1},
            {"name": "small", "provider": "mock", "model_size": "SMALL"},
        ],
        "keys": [
            {"name": "team-a", "key": KEY_A, "models": ["BIG"]},
            {"name": "team-b", "key_sha256": hashlib.sha256(KEY_B.encode()).hexdigest(),
             "requests_per_minute": 2},
        ],
    }


def client_for(proxy, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)


async def test_allowed_and_forbidden_models(start_proxy):
    proxy = await start_proxy(config())
    async with client_for(proxy, KEY_A) as client:
        answer = await client.chat.completions.create(model="BIG", messages=MSG)
        assert answer.model == "big-1"
        answer = await client.chat.completions.create(model="big-2", messages=MSG)
        assert answer.model == "big-2"
        with pytest.raises(openai.PermissionDeniedError) as info:
            await client.chat.completions.create(model="small", messages=MSG)
        assert "team-a" in info.value.message and "small" in info.value.message
        with pytest.raises(openai.PermissionDeniedError):
            await client.embeddings.create(model="SMALL", input="x")
        listed = [m.id for m in (await client.models.list()).data]
        assert listed == ["big-1", "big-2", "BIG"]
        # Keys are for the API, not for operating the proxy.
        async with proxy.http.get(proxy.url("/metrics"),
                                  headers={"Authorization": f"Bearer {KEY_A}"}) as resp:
            assert resp.status == 403


async def test_unknown_key_401(start_proxy):
    proxy = await start_proxy(config())
    async with client_for(proxy, "team-c-key-00000000000") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="BIG", messages=MSG)


async def test_key_given_by_digest_and_its_own_limit(start_proxy):
    proxy = await start_proxy(config())
    async with client_for(proxy, KEY_B) as client:
        for _ in range(2):
            await client.chat.completions.create(model="small", messages=MSG)
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="BIG", messages=MSG)
        assert "team-b" in info.value.message
        assert int(info.value.response.headers["Retry-After"]) >= 59
    # The key's limit is its own: the proxy token is not limited by it.
    await proxy.client.chat.completions.create(model="small", messages=MSG)


async def test_key_name_logged_never_the_key(start_proxy, capsys):
    proxy = await start_proxy(config())
    async with client_for(proxy, KEY_A) as client:
        await client.chat.completions.create(model="BIG", messages=MSG)
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="small", messages=MSG)
    out = capsys.readouterr()
    logs = out.out + out.err
    assert "team-a" in logs
    assert KEY_A not in logs


class TestKeyConfig:
    @pytest.mark.parametrize(("key", "error"), [
        ({"name": "k"}, "keys[0]: give exactly one of key or key_sha256"),
        ({"name": "k", "key": "short"}, "keys[0].key: must be at least 16 characters"),
        ({"name": "k", "key_sha256": "abc"}, "keys[0].key_sha256: must be 64 hex digits"),
        ({"name": "k", "key": KEY_A, "models": ["nope"]},
         "keys[0].models: unknown model or group 'nope'"),
    ])
    def test_bad_keys(self, key, error):
        with pytest.raises(ConfigError) as info:
            parse_config({"models": [{"name": "m", "provider": "mock"}], "keys": [key]}, {})
        assert info.value.errors == [error]

    def test_key_not_in_repr(self):
        parsed = parse_config(config(), {})
        assert KEY_A not in repr(parsed)
