"""Reload: a valid config replaces the old atomically, in-flight streams survive, an invalid one
is refused and the old kept; SIGHUP does the same for a running process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import openai
import pytest
import yaml

from aiproxy.config import load_config
from aiproxy.http.state import RUNTIME
from tests.conftest import TOKEN, make_settings
from tests.test_cli import free_port, wait_ready

MSG = [{"role": "user", "content": "hello"}]


def write(path: Path, models: list[dict], keys: list[dict] | None = None) -> None:
    data: dict = {"models": models}
    if keys:
        data["keys"] = keys
    path.write_text(yaml.safe_dump(data))


@pytest.fixture
async def reloadable(tmp_path, start_proxy):
    path = tmp_path / "provider-config.yaml"
    write(path, [{"name": "old", "provider": "mock",
                  "options": {"chunk_delay": 0.05}}])

    def source():
        return load_config(path, {}), make_settings()

    proxy = await start_proxy(yaml.safe_load(path.read_text()), source=source)
    return proxy, path


async def reload(proxy) -> tuple[int, dict]:
    async with proxy.http.post(proxy.url("/admin/reload"), headers=proxy.auth) as resp:
        return resp.status, await resp.json()


async def test_new_model_served_after_reload(reloadable):
    proxy, path = reloadable
    write(path, [{"name": "old", "provider": "mock"}, {"name": "new", "provider": "mock",
                                                       "options": {"reply": "fresh"}}])
    status, body = await reload(proxy)
    assert (status, body) == (200, {"status": "reloaded", "models": 2})
    answer = await proxy.client.chat.completions.create(model="new", messages=MSG)
    assert answer.choices[0].message.content == "fresh"
    assert [m.id for m in (await proxy.client.models.list()).data] == ["old", "new"]


async def test_in_flight_stream_survives_a_reload(reloadable):
    proxy, path = reloadable
    words = " ".join(f"w{i}" for i in range(30))
    stream = await proxy.client.chat.completions.create(
        model="old", messages=[{"role": "user", "content": words}], stream=True)
    received = []
    async for chunk in stream:
        received.append(chunk)
        if len(received) == 3:
            # Mid-stream: the model the stream runs on disappears from the config.
            write(path, [{"name": "other", "provider": "mock"}])
            status, _ = await reload(proxy)
            assert status == 200
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == f"You said: {words}"
    assert received[-1].choices[0].finish_reason == "stop"
    with pytest.raises(openai.NotFoundError):
        await proxy.client.chat.completions.create(model="old", messages=MSG)


async def test_invalid_config_is_rejected_and_the_old_kept(reloadable):
    proxy, path = reloadable
    path.write_text("models:\n  - name: broken\n    provider: mock\n    priority: high\n")
    status, body = await reload(proxy)
    assert status == 400
    assert body["error"]["code"] == "invalid_config"
    assert "models[0].priority: expected an integer" in body["error"]["message"]
    answer = await proxy.client.chat.completions.create(model="old", messages=MSG)
    assert answer.model == "old"
    path.write_text("models:\n  - name: x\n    provider: nosuch\n")
    status, body = await reload(proxy)
    assert status == 400
    assert "unknown provider 'nosuch'" in body["error"]["message"]


async def test_unchanged_models_keep_their_state(reloadable):
    proxy, path = reloadable
    before = proxy.app[RUNTIME].current.router.routes["old"]
    write(path, [{"name": "old", "provider": "mock", "options": {"chunk_delay": 0.05}},
                 {"name": "more", "provider": "mock"}])
    assert (await reload(proxy))[0] == 200
    after = proxy.app[RUNTIME].current.router.routes["old"]
    assert after.provider is before.provider  # the same provider, its sessions kept
    assert after.state is before.state  # the same breaker and recency


async def test_reload_brings_new_keys(reloadable):
    proxy, path = reloadable
    key = "a-new-client-key-1234"
    write(path, [{"name": "old", "provider": "mock"}], keys=[{"name": "new-team", "key": key}])
    assert (await reload(proxy))[0] == 200
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key,
                                  max_retries=0) as client:
        assert (await client.chat.completions.create(model="old", messages=MSG)).model == "old"


async def test_reload_needs_the_proxy_token(reloadable):
    proxy, _ = reloadable
    async with proxy.http.post(proxy.url("/admin/reload")) as resp:
        assert resp.status == 401


async def test_readiness(start_proxy):
    proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]})
    async with proxy.http.get(proxy.url("/health/ready")) as resp:  # no token needed
        assert resp.status == 200
        assert await resp.json() == {"status": "ready", "checks": {"config": "loaded"}}


async def test_sighup_reloads_a_running_process(tmp_path):
    path = tmp_path / "c.yaml"
    write(path, [{"name": "first", "provider": "mock"}])
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    env.update(AUTH_TOKEN=TOKEN, LOG_FORMAT="json")
    proc = subprocess.Popen([sys.executable, "-m", "aiproxy", "--config", str(path), "--addr",
                             f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url, proc)
        write(path, [{"name": "first", "provider": "mock"}, {"name": "second",
                                                             "provider": "mock"}])
        proc.send_signal(signal.SIGHUP)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            for _ in range(100):
                async with s.get(url + "/v1/models") as resp:
                    ids = [m["id"] for m in (await resp.json())["data"]]
                if "second" in ids:
                    break
                await asyncio.sleep(0.05)
            assert ids == ["first", "second"]
            assert proc.poll() is None  # SIGHUP reloads; it does not stop the process
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_a_plugin_that_fails_to_build_keeps_the_old_config(tmp_path, start_proxy):
    from aiproxy.plugins import ProviderRegistry
    from aiproxy.provider import Provider

    class Broken(Provider):
        default_url = "x://"

        def __init__(self, *args, **kwargs):
            raise RuntimeError("boom")

    registry = ProviderRegistry()
    registry.register("broken", Broken)
    path = tmp_path / "c.yaml"
    write(path, [{"name": "old", "provider": "mock"}])
    proxy = await start_proxy(yaml.safe_load(path.read_text()), registry=registry,
                              source=lambda: (load_config(path, {}), make_settings()))
    write(path, [{"name": "new", "provider": "broken"}])
    status, body = await reload(proxy)
    assert status == 400
    assert "RuntimeError" in body["error"]["message"]
    assert (await proxy.client.chat.completions.create(model="old", messages=MSG)).model == "old"
