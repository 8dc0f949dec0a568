"""One owner per request, one generation per config load: what the restructuring fixed, seen
from outside (a real server, the openai SDK, reloads through ``POST /admin/reload``)."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import openai
import orjson
import pytest
import yaml
from aiohttp import web

from aiproxy.config import ConfigError, load_config, parse_config
from aiproxy.http import make_app
from aiproxy.http.app import GC_YOUNG_THRESHOLD
from tests.conftest import TOKEN, make_settings, openai_model
from tests.fakes import FakeOpenAI
from tests.test_cli import ROOT, free_port, run_cli, wait_ready

MSG = [{"role": "user", "content": "hello"}]
EXHAUSTED = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s",
             "x-ratelimit-limit-requests": "100"}


async def reload(proxy: Any) -> tuple[int, dict[str, Any]]:
    async with proxy.http.post(proxy.url("/admin/reload"), headers=proxy.auth) as resp:
        return resp.status, await resp.json()


class TestReloads:
    async def test_upstream_parking_works_after_any_number_of_reloads(
            self, tmp_path, start_proxy, fake_upstream):
        fake, url = fake_upstream
        path = tmp_path / "provider-config.yaml"
        data = {"models": [openai_model("m1", url, priority=1, model_size="G"),
                           openai_model("m2", url, priority=2, model_size="G")]}
        path.write_text(yaml.safe_dump(data))
        proxy = await start_proxy(data, source=lambda: (load_config(path, {}),
                                                        make_settings()))
        for _ in range(3):  # each reload keeps both models unchanged
            assert (await reload(proxy))[0] == 200
        fake.extra_headers = EXHAUSTED
        first = await proxy.client.chat.completions.with_raw_response.create(
            model="G", messages=MSG)
        assert first.headers["x-aiproxy-model"] == "m1"
        fake.extra_headers = {}
        await asyncio.sleep(0.05)
        # m1 announced an exhausted budget: parked, so the next request goes to m2 directly.
        second = await proxy.client.chat.completions.with_raw_response.create(
            model="G", messages=MSG)
        assert second.headers["x-aiproxy-model"] == "m2"
        assert len(fake.requests_for("m1")) == 1

    async def test_a_rejected_reload_changes_nothing(self, tmp_path, start_proxy,
                                                     fake_upstream):
        fake, url = fake_upstream
        good = {"models": [openai_model("m1", url)]}
        # The rejected load would also set RETRY_MAX_RETRIES=0 and keep m1 unchanged.
        bad = {"models": [openai_model("m1", url), {"name": "x", "provider": "nosuch"}]}
        path = tmp_path / "provider-config.yaml"
        path.write_text(yaml.safe_dump(bad))

        def source() -> Any:
            return load_config(path, {}), attrs.evolve(make_settings(), retry_max_retries=0)

        proxy = await start_proxy(good, source=source)
        status, body = await reload(proxy)
        assert status == 400
        assert "models[1].provider: unknown provider 'nosuch'" in body["error"]["message"]
        # m1 still retries as the live config says (2 retries): a 500, then the answer.
        fake.script("m1", "500")
        answer = await proxy.client.chat.completions.create(model="m1", messages=MSG)
        assert answer.choices[0].message.content.startswith("reply from m1")
        assert len(fake.requests_for("m1")) == 2
        assert [m.id for m in (await proxy.client.models.list()).data] == ["m1"]

    async def test_a_request_finishes_on_the_generation_it_started_on(
            self, tmp_path, start_proxy):
        path = tmp_path / "provider-config.yaml"
        old = {"models": [{"name": "m", "provider": "mock",
                           "options": {"chunk_delay": 0.05, "reply": "old answer here"}}]}
        path.write_text(yaml.safe_dump(
            {"models": [{"name": "m", "provider": "mock", "options": {"reply": "new"}}]}))
        proxy = await start_proxy(old, source=lambda: (load_config(path, {}),
                                                       make_settings()))
        stream = await proxy.client.chat.completions.create(model="m", messages=MSG,
                                                            stream=True)
        text = ""
        async for chunk in stream:
            if not text:
                assert (await reload(proxy))[0] == 200  # mid-stream
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
        assert text == "old answer here"
        answer = await proxy.client.chat.completions.create(model="m", messages=MSG)
        assert answer.choices[0].message.content == "new"


class TestSettlement:
    async def test_embeddings_count_against_model_token_limits(self, start_proxy,
                                                               fake_upstream):
        fake, url = fake_upstream
        fake.embedding_tokens = 50
        proxy = await start_proxy({"models": [openai_model("e", url, tokens_per_minute=20)]})
        statuses = []
        for _ in range(5):
            async with proxy.http.post(proxy.url("/v1/embeddings"), headers=proxy.auth,
                                       json={"model": "e", "input": "some text"}) as resp:
                statuses.append(resp.status)
        # The first one used 50 tokens of 20: the window is spent for the minute.
        assert statuses == [200, 429, 429, 429, 429]
        assert len(fake.requests_for("e")) == 1

    async def test_a_small_key_cannot_drain_a_shared_window(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        key = "small-team-key-123456"
        proxy = await start_proxy({
            "models": [openai_model("m", url, tokens_per_minute=1000)],
            "keys": [{"name": "small", "key": key, "tokens_per_minute": 50}]})
        async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key,
                                      max_retries=0) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="m", messages=MSG, max_tokens=900)
        # The model's reservation is bounded by the key's own 50, then settled at the
        # reported 12: the shared window keeps nearly all of its 1000.
        assert raw.parse().usage.total_tokens == 12
        check = await proxy.client.chat.completions.with_raw_response.create(
            model="m", messages=MSG)
        assert int(check.headers["x-ratelimit-remaining-tokens"]) >= 1000 - 12 - 50

    async def test_an_abandoned_stream_settles_what_it_used(self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        fake.chunk_delay = 0.2
        fake.chunks = 20
        proxy = await start_proxy({"models": [openai_model("m", url, tokens_per_minute=5000)]})
        async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                   json={"model": "m", "messages": MSG, "stream": True,
                                         "max_tokens": 4000}) as resp:
            await resp.content.readline()  # the first chunk, then the client leaves
        await asyncio.sleep(0.3)
        fake.chunk_delay = 0
        check = await proxy.client.chat.completions.with_raw_response.create(
            model="m", messages=MSG)
        # Not the 4000 the request could have used: what it relayed before it was left.
        assert int(check.headers["x-ratelimit-remaining-tokens"]) > 5000 - 4000


class TestStreamBounds:
    async def test_the_error_event_names_the_bound_that_fired(self, start_proxy,
                                                              fake_upstream):
        fake, url = fake_upstream
        fake.chunk_delay = 0.15
        fake.chunks = 20
        proxy = await start_proxy({"models": [
            openai_model("total", url, timeouts={"total": 0.6, "idle": 5}),
            openai_model("idle", url, timeouts={"idle": 0.3})]})
        for model, said in (("total", "ran past its total bound of 0.6s"),
                            ("idle", "stalled: no chunk within 0.3s")):
            if model == "idle":
                fake.script("idle", "stall")
                fake.chunk_delay = 0
                fake.slow = 2
            async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                       json={"model": model, "messages": MSG,
                                             "stream": True}) as resp:
                body = await resp.read()
            last = orjson.loads(body.strip().split(b"\n\n")[-1][len(b"data: "):])
            assert said in last["error"]["message"], (model, last)
            assert b"[DONE]" not in body

    async def test_each_open_stream_keeps_its_own_bounds(self, start_proxy, aiohttp_server):
        # One timer keeps every stream's bounds: a stream opened after others, with a sooner
        # bound, still ends on time; the others, their chunks coming, are not ended.
        release = asyncio.Event()

        def chunk(text: str, finish: str | None = None) -> bytes:
            return b"data: " + orjson.dumps({
                "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up",
                "choices": [{"index": 0, "delta": {"content": text},
                             "finish_reason": finish}]}) + b"\n\n"

        async def chat(request: web.Request) -> web.StreamResponse:
            model = (await request.json())["model"]
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(chunk("first"))
            if model == "up-quick":
                await release.wait()  # stalls until the test is over
            else:
                for _ in range(12):
                    await asyncio.sleep(0.1)
                    await response.write(chunk("more"))
            await response.write(chunk("", "stop") + b"data: [DONE]\n\n")
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        url = str((await aiohttp_server(app)).make_url("/v1"))
        proxy = await start_proxy({"models": [
            openai_model("patient", url, upstream_model="up-patient",
                         timeouts={"idle": 30, "total": 60}),
            openai_model("quick", url, upstream_model="up-quick", timeouts={"idle": 0.3})]})
        loop = asyncio.get_running_loop()

        async def stream(model: str) -> tuple[bytes, float]:
            started = loop.time()
            async with proxy.http.post(proxy.url("/v1/chat/completions"), headers=proxy.auth,
                                       json={"model": model, "messages": MSG,
                                             "stream": True}) as resp:
                return await resp.read(), loop.time() - started

        try:
            patient = asyncio.create_task(stream("patient"))  # its bound: 30 s from now
            await asyncio.sleep(0.15)
            for _ in range(2):  # and again once the quick one is gone
                body, took = await stream("quick")
                assert b"stalled: no chunk within 0.3s" in body and b"[DONE]" not in body
                assert took < 10  # its own 0.3 s, not the patient stream's 30
            body, _ = await patient
            assert body.count(b'"more"') == 12 and body.endswith(b"data: [DONE]\n\n")
        finally:
            release.set()


def _lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out


class TestOperations:
    def test_workers_refuse_to_start_without_redis_when_a_key_has_limits(self, tmp_path):
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({
            "models": [{"name": "m", "provider": "mock"}],
            "keys": [{"name": "team", "key": "team-key-1234567890", "requests_per_minute": 5}]}))
        out = run_cli("--config", str(config), "--workers", "2", env={"AUTH_TOKEN": "t"},
                      cwd=tmp_path)
        assert out.returncode == 1
        assert "--workers 2" in out.stderr and "client key" in out.stderr
        assert "REDIS_URL" in out.stderr

    def test_port_in_use_is_one_clear_line(self, tmp_path):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            out = run_cli("--config", str(ROOT / "config" / "demo.yaml"), "--addr",
                          f"127.0.0.1:{port}", env={"AUTH_TOKEN": "t", "LOG_FORMAT": "json"},
                          cwd=tmp_path)
        assert out.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
        assert "Traceback" not in out.stderr
        assert '"listening"' not in out.stdout  # never claimed before the bind

    def test_check_config_reports_every_problem_at_once(self, tmp_path):
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"models": [
            {"name": "a", "provider": "mock"},
            {"name": "b", "provider": "glamour"},
            {"name": "c", "provider": "mock", "options": {"colour": "red"}},
            {"name": "d", "provider": "nosuch"}]}))
        out = run_cli("--config", str(config), "--check-config",
                      env={"AUTH_TOKEN": "t", "PORT": "99999"}, cwd=tmp_path)
        assert out.returncode == 1
        assert "models[1].provider: unknown provider 'glamour'; installed providers:" \
            in out.stderr
        assert "models[3].provider: unknown provider 'nosuch'" in out.stderr
        assert "c: options: unknown key colour" in out.stderr
        assert "PORT: must be between 1 and 65535" in out.stderr

    def test_check_config_warns_on_an_empty_token(self, tmp_path):
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"models": [
            {"name": "hosted", "provider": "openai"},
            {"name": "local", "provider": "openai", "url": "http://127.0.0.1:11434/v1"},
            {"name": "offline", "provider": "mock"}]}))
        out = run_cli("--config", str(config), "--check-config", env={"AUTH_TOKEN": "t"},
                      cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "warning: models[0].token: empty" in out.stderr
        assert "models[1]" not in out.stderr and "models[2]" not in out.stderr

    def test_check_config_fails_when_redis_is_wanted_but_not_installed(self, tmp_path,
                                                                       monkeypatch, capsys):
        import importlib.util

        from aiproxy import cli

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "redis" else real(name, *a))
        monkeypatch.setenv("AUTH_TOKEN", "t")
        monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
        monkeypatch.chdir(tmp_path)
        code = cli.main(["--config", str(ROOT / "config" / "demo.yaml"), "--check-config"])
        assert code == 1
        assert "REDIS_URL: set, but the redis client is not installed" in capsys.readouterr().err

    async def test_logs_of_a_real_server(self, tmp_path, aiohttp_server):
        """Start-up names the models and groups, "listening" comes after the bind, a failed
        request's access line names what was tried, every upstream_failed line carries the
        request id, a served one has its tokens, and shutdown says what it waited for."""
        fake = FakeOpenAI()
        upstream = await aiohttp_server(fake.app())
        base = str(upstream.make_url("/v1"))
        fake.defaults["bad"] = "500"
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"models": [
            openai_model("bad", base, priority=1, model_size="G"),
            openai_model("good", base, priority=2, model_size="G"),
            openai_model("worse", base, fallbacks=["bad"])]}))
        fake.defaults["worse"] = "503"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
        env.update(AUTH_TOKEN=TOKEN, LOG_FORMAT="json", RETRY_MAX_RETRIES="0")
        proc = subprocess.Popen([sys.executable, "-m", "aiproxy", "--config", str(config),
                                 "--addr", f"127.0.0.1:{port}"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_ready(url, proc)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession() as session:
                async with session.post(url + "/v1/chat/completions", headers=headers, json={
                        "model": "G", "messages": MSG}) as resp:
                    assert resp.status == 200
                async with session.post(url + "/v1/chat/completions", headers={
                        **headers, "X-Request-ID": "failing-one"}, json={
                        "model": "worse", "messages": MSG}) as resp:
                    assert resp.status == 502
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        lines = _lines(proc.stdout.read().decode())
        events = [line["event"] for line in lines]
        assert events.index("started") < events.index("listening")
        started = lines[events.index("started")]
        assert started["models"] == ["bad", "good", "worse"]
        assert started["groups"] == {"G": ["bad", "good"]}
        served, failed = [line for line in lines if line["event"] == "request"
                          and line["path"] == "/v1/chat/completions"]
        # A 5xx gets one quick retry on the same model, then the next candidate.
        assert served["model"] == "good" and served["tried"] == ["bad", "bad", "good"]
        assert (served["tokens_in"], served["tokens_out"]) == (7, 5)
        assert failed["request_id"] == "failing-one"
        assert failed["status"] == 502
        # bad's third failure in a row opened its breaker: no quick retry of an open model.
        assert failed["tried"] == ["worse", "worse", "bad"]
        assert failed["attempts"] == 3
        assert failed["upstream_ms"] is not None and failed["upstream_ms"] > 0
        assert failed["error_kind"] == "overloaded"
        upstream_failed = [line for line in lines if line["event"] == "upstream_failed"]
        assert len(upstream_failed) == 5
        assert {line["request_id"] for line in upstream_failed} == {
            served["request_id"], "failing-one"}
        shutdown = lines[events.index("shutting_down")]
        assert shutdown["in_flight"] == 0 and "grace_s" in shutdown
        assert "stopped" in events
        assert "Traceback" not in proc.stderr.read().decode()


class TestHealthCheck:
    async def test_probes_the_port_the_settings_name(self, tmp_path):
        port = free_port()
        env_file = tmp_path / ".env"
        env_file.write_text(f"AUTH_TOKEN=t\nPORT={port}\nHOST=127.0.0.1\n")
        env = {k: v for k, v in os.environ.items() if k not in ("AUTH_TOKEN", "PORT", "HOST")}
        proc = subprocess.Popen([sys.executable, "-m", "aiproxy", "--config",
                                 str(ROOT / "config" / "demo.yaml"), "--env-file",
                                 str(env_file)], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_ready(f"http://127.0.0.1:{port}", proc)
            ok = await asyncio.to_thread(run_cli, "health-check", "--env-file", str(env_file),
                                         cwd=tmp_path)
            assert ok.returncode == 0, ok.stderr
            other = free_port()
            wrong = await asyncio.to_thread(run_cli, "health-check", "--env-file",
                                            str(env_file), "--addr", f"127.0.0.1:{other}",
                                            cwd=tmp_path)
            assert wrong.returncode == 1
            assert f":{other}/ping" in wrong.stderr
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    async def test_follows_the_address_the_proxy_bound(self, tmp_path):
        """As in the container: --addr on the command line, PORT elsewhere in the env file;
        the address file the proxy writes after its bind is what the check probes."""
        port = free_port()
        env_file = tmp_path / ".env"
        env_file.write_text("AUTH_TOKEN=t\nPORT=1\n")
        addr_file = tmp_path / "aiproxy.addr"
        env = {k: v for k, v in os.environ.items() if k not in ("AUTH_TOKEN", "PORT", "HOST")}
        env["AIPROXY_ADDR_FILE"] = str(addr_file)
        proc = subprocess.Popen([sys.executable, "-m", "aiproxy", "--config",
                                 str(ROOT / "config" / "demo.yaml"), "--env-file",
                                 str(env_file), "--addr", f"127.0.0.1:{port}"], env=env,
                                cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            await wait_ready(f"http://127.0.0.1:{port}", proc)
            ok = await asyncio.to_thread(run_cli, "health-check", "--env-file", str(env_file),
                                         env={"AIPROXY_ADDR_FILE": str(addr_file)},
                                         cwd=tmp_path)
            assert ok.returncode == 0, ok.stderr
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    def test_the_container_uses_it_on_a_pinned_base(self):
        text = (ROOT / "Containerfile").read_text()
        assert 'CMD ["aiproxy", "health-check"]' in text
        assert "podman build --format docker" in text
        base = next(line for line in text.splitlines() if line.startswith("FROM "))
        assert re.fullmatch(r"FROM python:\d+\.\d+\.\d+-slim-\w+", base)  # a patch version
        assert "-c constraints.txt" in text
        pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#")]
        assert all("==" in line for line in pins)
        assert any(line.startswith("aiohttp==") for line in pins)


def test_config_error_never_hides_behind_another(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  - name: a\n    provider: mock\n    priority: high\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.errors == ["models[0].priority: expected an integer, got 'high'"]


class TestGarbageCollector:
    """While the app serves, the cyclic collector runs less often (a request's objects are
    freed by reference counting; docs/performance.md) but still runs, and the process gets its
    thresholds back when the app stops."""

    async def test_cycles_are_still_collected_and_the_thresholds_come_back(self):
        before = gc.get_threshold()
        app = make_app(parse_config({"models": [{"name": "echo", "provider": "mock"}]}, {}),
                       make_settings())
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            assert gc.isenabled()
            assert gc.get_threshold() == (max(before[0], GC_YOUNG_THRESHOLD), *before[1:])

            class Node:
                pass

            collected: list[bool] = []
            node = Node()
            node.loop = node  # type: ignore[attr-defined]  # a cycle: refcounts cannot free it
            weakref.finalize(node, collected.append, True)
            del node
            # No explicit gc.collect(): allocating more than the threshold's worth of live
            # container objects is what starts a collection in a serving proxy.
            held = [[] for _ in range(GC_YOUNG_THRESHOLD * 2)]
            assert collected == [True]
            del held
        finally:
            await runner.cleanup()
        assert gc.get_threshold() == before

    @pytest.mark.parametrize(("path", "body"), [
        ("/v1/chat/completions", {"model": "echo", "messages": MSG}),
        ("/v1/chat/completions", {"model": "echo", "messages": MSG, "stream": True}),
        ("/v1/messages", {"model": "echo", "max_tokens": 16, "messages": MSG}),
        ("/v1/messages", {"model": "echo", "max_tokens": 16, "messages": MSG, "stream": True}),
        ("/v1/responses", {"model": "echo", "input": "hello", "stream": True}),
    ])
    async def test_a_request_leaves_no_reference_cycle_behind(self, start_proxy, path, body):
        """Everything of a finished request is freed by reference counting: a cycle among
        its objects would wait for the collector, which now runs rarely, and then cost a
        pause (a stream's objects were once kept so, through its watchdog's closure)."""
        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]})

        async def ask() -> None:
            async with proxy.http.post(proxy.url(path), json=body,
                                       headers={**proxy.auth, "anthropic-version": "2023-06-01"},
                                       ) as resp:
                assert resp.status == 200
                await resp.read()
            await asyncio.sleep(0.05)  # the observers run once the answer has left

        def ours(obj: Any) -> bool:
            code = getattr(obj, "cr_code", None) or getattr(obj, "ag_code", None) or getattr(
                obj, "__code__", None)
            if code is not None:
                return "/aiproxy" in code.co_filename
            return type(obj).__module__.startswith("aiproxy")

        await ask()  # first use: caches, imports
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            await ask()
            gc.collect()
        finally:
            gc.set_debug(0)
        leaked = [obj for obj in gc.garbage if ours(obj)]
        gc.garbage.clear()
        assert not leaked, sorted({type(obj).__qualname__ for obj in leaked})
