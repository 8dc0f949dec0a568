"""A third-party plugin, end to end, as its author and an operator would meet it.

The example distribution (examples/aiproxy-provider-example) is pip-installed into this venv,
its own test suite runs, ``aiproxy --list-providers`` lists it, and a real aiproxy process
serves the openai SDK through it from a fake Ollama on 127.0.0.1, with no change to the core.
It is uninstalled at the end.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from aiproxy.testing import FakeUpstream, json_response, stream_response

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "aiproxy-provider-example"
DIST = "aiproxy-ollama-example"
TOKEN = "example-proxy-token"
UPSTREAM_KEY = "ollama-upstream-key"
WORDS = ("Hi", " from", " Ollama")


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=240, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example installed into this venv from a copy (a build writes into its source)."""
    source = tmp_path_factory.mktemp("dist") / "aiproxy-provider-example"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    # Offline: no index, and the build uses this venv's setuptools (the test extra has it)
    # instead of fetching one into an isolated build environment.
    out = _pip("install", "--no-deps", "--no-index", "--no-build-isolation", str(source))
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        yield source
    finally:
        out = _pip("uninstall", "-y", DIST)
        assert out.returncode == 0, out.stdout + out.stderr


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120, check=False)


def test_list_providers_shows_the_installed_plugin(installed: Path, tmp_path: Path) -> None:
    out = _run("-m", "aiproxy", "--list-providers", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "ollama-example" in rows, out.stdout
    assert "aiproxy_ollama_example:OllamaProvider (aiproxy-ollama-example 0.1.0)" \
        in rows["ollama-example"]
    assert "openai" in rows  # first-party plugins are still there


def test_the_plugins_own_tests_pass(installed: Path) -> None:
    # As its author runs them: pytest in the distribution's directory, conformance included.
    out = _run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=installed)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "passed" in out.stdout and "failed" not in out.stdout
    assert "skipped" not in out.stdout  # a check that does not apply is no test
    # aiproxy's pytest plugin (no conftest there) reports what the suite did not run and why.
    report = out.stdout[out.stdout.index("aiproxy conformance"):]
    assert re.search(r"OllamaProvider \(TestOllamaConformance\): \d+ passed, \d+ not run\n",
                     report), report
    assert "not run tool_round_trip: the adapter's upstream makes no tool calls" in report
    assert "not run embeddings: the provider does not declare Capability.EMBEDDINGS" in report


# ---------------------------------------------------------------------------------------------
# The real proxy in front of a fake Ollama


async def _fake_ollama_chat(request: web.Request) -> web.StreamResponse:
    """``POST /api/chat`` as Ollama answers it (https://github.com/ollama/ollama/blob/main/docs/api.md)."""
    body = await request.json()
    counts = {"prompt_eval_count": 5, "eval_count": len(WORDS)}
    if not body["stream"]:
        return json_response({"model": body["model"], "created_at": "2025-01-01T00:00:00Z",
                              "message": {"role": "assistant", "content": "".join(WORDS)},
                              "done": True, "done_reason": "stop", **counts})
    lines: list[Any] = [{"model": body["model"], "created_at": "2025-01-01T00:00:00Z",
                         "message": {"role": "assistant", "content": word}, "done": False}
                        for word in WORDS]
    lines.append({"model": body["model"], "created_at": "2025-01-01T00:00:01Z",
                  "message": {"role": "assistant", "content": ""}, "done": True,
                  "done_reason": "stop", **counts})
    return await stream_response(request, lines, format="ndjson")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def ollama() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        fake.route("POST", "/api/chat", _fake_ollama_chat)
        yield fake


@pytest.fixture
async def proxy(installed: Path, ollama: FakeUpstream, tmp_path: Path) -> AsyncIterator[str]:
    """``python -m aiproxy`` on a free port with a config naming the plugin; its /v1 URL."""
    config = tmp_path / "provider-config.yaml"
    config.write_text(f"""\
models:
  - name: local/llama
    provider: ollama-example
    url: {ollama.url}
    upstream_model: llama3.2
    token: {UPSTREAM_KEY}
    options:
      keep_alive: 10m
      num_ctx: 8192
""", encoding="utf-8")
    port = _free_port()
    env = {**os.environ, "AUTH_TOKEN": TOKEN, "LOG_FORMAT": "json", "SHUTDOWN_GRACE": "1"}
    log = (tmp_path / "proxy.log").open("wb")
    # cwd: an empty directory, so no ./.env or ./provider-config.yaml of the repo is read.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiproxy", "--config", str(config), "--addr", f"127.0.0.1:{port}",
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        await _wait_ready(f"http://127.0.0.1:{port}/ping", proc, tmp_path / "proxy.log")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def _wait_ready(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if proc.returncode is not None:
                pytest.fail(f"aiproxy exited with {proc.returncode}:\n{_text(log)}")
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    pytest.fail(f"aiproxy did not answer {url} within 15s:\n{_text(log)}")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


async def test_the_proxy_serves_the_sdk_through_the_plugin(proxy: str, ollama: FakeUpstream,
                                                            tmp_path: Path) -> None:
    async with openai.AsyncOpenAI(base_url=proxy, api_key=TOKEN, max_retries=0,
                                  timeout=30) as client:
        messages: Any = [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Say hi."}]
        answer = await client.chat.completions.create(
            model="local/llama", messages=messages, temperature=0.2, max_tokens=20, stop="\n")
        assert answer.choices[0].message.content == "Hi from Ollama"
        assert answer.choices[0].finish_reason == "stop"
        assert answer.model == "local/llama"
        assert answer.usage is not None
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 3)

        stream = await client.chat.completions.create(
            model="local/llama", messages=messages, stream=True,
            stream_options={"include_usage": True})
        text, usage, finish = "", None, None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        assert text == "Hi from Ollama"
        assert finish == "stop"
        assert usage is not None and usage.total_tokens == 8

    # What Ollama received: its own dialect, the operator's options, the upstream key.
    plain, streamed = (r.json for r in ollama.requests_to("/api/chat"))
    assert plain == {
        "model": "llama3.2", "stream": False,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Say hi."}],
        "options": {"temperature": 0.2, "num_predict": 20, "stop": ["\n"], "num_ctx": 8192},
        "keep_alive": "10m",
    }
    assert streamed["stream"] is True
    assert streamed["options"] == {"num_ctx": 8192}
    assert all(r.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}" for r in ollama.requests)
    log = _text(tmp_path / "proxy.log")
    assert "provider_bug" not in log and "Traceback" not in log, log
