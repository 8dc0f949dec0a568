"""The command line, run as a user would: ``python -m aiproxy`` in a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "aiproxy", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd or ROOT, timeout=60, check=False)


class TestFlags:
    @pytest.mark.parametrize("flag", ["--version", "-version"])
    def test_version(self, flag):
        out = run_cli(flag)
        assert out.returncode == 0
        assert out.stdout.startswith("aiproxy 0.")

    def test_list_providers_shows_first_party_plugins(self):
        out = run_cli("--list-providers")
        assert out.returncode == 0
        names = {line.split()[0] for line in out.stdout.splitlines()}
        assert {"openai", "openrouter", "groq", "huggingface", "mock", "gemini", "cohere",
                "gigachat", "cloudflare"} <= names

    def test_missing_auth_token_refuses_to_start(self, tmp_path):
        out = run_cli("--config", str(ROOT / "config" / "demo.yaml"), cwd=tmp_path)
        assert out.returncode == 1
        assert "AUTH_TOKEN: required" in out.stderr

    def test_check_config_ok(self, tmp_path):
        out = run_cli("-config", str(ROOT / "config" / "demo.yaml"), "--check-config",
                      env={"AUTH_TOKEN": "t"}, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "ok" in out.stdout

    def test_check_config_reports_paths(self, tmp_path):
        bad = tmp_path / "bad.yaml"
        bad.write_text("models:\n  - name: a\n    provider: mock\n    priority: high\n")
        out = run_cli("--config", str(bad), "--check-config", env={"AUTH_TOKEN": "t"},
                      cwd=tmp_path)
        assert out.returncode == 1
        assert "models[0].priority: expected an integer, got 'high'" in out.stderr
        assert "Traceback" not in out.stderr

    def test_unknown_provider_lists_installed_ones(self, tmp_path):
        bad = tmp_path / "bad.yaml"
        bad.write_text("models:\n  - name: a\n    provider: nosuch\n")
        out = run_cli("--config", str(bad), "--check-config", env={"AUTH_TOKEN": "t"},
                      cwd=tmp_path)
        assert out.returncode == 1
        assert "unknown provider 'nosuch'; installed providers:" in out.stderr
        assert "openai" in out.stderr

    def test_bad_plugin_options_fail_at_start(self, tmp_path):
        bad = tmp_path / "bad.yaml"
        bad.write_text("models:\n  - name: a\n    provider: mock\n    options: {colour: red}\n")
        out = run_cli("--config", str(bad), "--check-config", env={"AUTH_TOKEN": "t"},
                      cwd=tmp_path)
        assert out.returncode == 1
        assert "a: options: unknown key colour" in out.stderr

    def test_config_required_without_default_file(self, tmp_path):
        out = run_cli(env={"AUTH_TOKEN": "t"}, cwd=tmp_path)
        assert out.returncode == 1
        assert "--config is required" in out.stderr

    def test_default_config_and_env_file_are_found(self, tmp_path):
        (tmp_path / "provider-config.yaml").write_text(
            (ROOT / "config" / "demo.yaml").read_text())
        (tmp_path / ".env").write_text("AUTH_TOKEN=from-dotenv\n")
        out = run_cli("--check-config", cwd=tmp_path)
        assert out.returncode == 0, out.stderr

    @pytest.mark.parametrize("addr", ["nonsense", ":0", ":99999", "host:port"])
    def test_bad_addr(self, addr, tmp_path):
        out = run_cli("--config", str(ROOT / "config" / "demo.yaml"), "--addr", addr,
                      env={"AUTH_TOKEN": "t"}, cwd=tmp_path)
        assert out.returncode == 1
        assert "--addr" in out.stderr


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            assert proc.poll() is None, "the proxy exited early"
            try:
                async with session.get(url + "/ping") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the proxy did not start")


def stop_procs(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop proxies started by a test: SIGTERM to all, then wait (kill one that hangs)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    procs.clear()


class TestServer:
    @pytest.mark.parametrize("loop", ["auto", "asyncio", "uvloop"])
    async def test_serves_and_shuts_down_gracefully(self, tmp_path, loop):
        config = tmp_path / "c.yaml"
        config.write_text("models:\n  - name: slow\n    provider: mock\n"
                          "    options: {chunk_delay: 0.1}\n")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
        env.update(AUTH_TOKEN="secret-token", LOG_FORMAT="json")
        proc = subprocess.Popen([sys.executable, "-m", "aiproxy", "-config", str(config),
                                 "-addr", f"127.0.0.1:{port}", "--loop", loop], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_ready(url, proc)
            words = " ".join(f"w{i}" for i in range(15))
            async with aiohttp.ClientSession() as session:
                async with session.post(url + "/v1/chat/completions",
                                        headers={"Authorization": "Bearer secret-token"},
                                        json={"model": "slow", "stream": True, "messages": [
                                            {"role": "user", "content": words}]}) as resp:
                    assert resp.status == 200
                    await resp.content.readline()
                    started = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    body = await resp.read()
            # The in-flight stream ran to its end after SIGTERM.
            assert body.endswith(b"data: [DONE]\n\n")
            assert body.count(b"w1") >= 1 and b"w14" in body
            assert proc.wait(timeout=30) == 0
            assert time.monotonic() - started < 25
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        logs = proc.stdout.read().decode() if proc.stdout else ""
        assert '"event":"request"' in logs
        assert "secret-token" not in logs
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read().decode()
