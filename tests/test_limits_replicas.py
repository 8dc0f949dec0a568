"""Limits across replicas: real aiproxy processes sharing one real redis-server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import TOKEN
from tests.redis_fixture import RedisServer
from tests.test_cli import free_port, stop_procs, wait_ready

LIMIT = 10
MSG = [{"role": "user", "content": "hi"}]


class Proxies:
    """Start and stop aiproxy processes; all are killed at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self, redis_url: str, *, workers: int = 1, fail_mode: str = "open",
                    port: int | None = None) -> str:
        config = self.tmp_path / "c.yaml"
        config.write_text(f"models:\n  - name: limited\n    provider: mock\n"
                          f"    requests_per_minute: {LIMIT}\n")
        port = port or free_port()
        env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
        env.update(AUTH_TOKEN=TOKEN, REDIS_URL=redis_url, REDIS_FAIL_MODE=fail_mode,
                   LOG_LEVEL="WARNING", REDIS_PREFIX="test:")
        proc = subprocess.Popen([sys.executable, "-m", "aiproxy", "--config", str(config),
                                 "--addr", f"127.0.0.1:{port}", "--workers", str(workers)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url, proc)
        return url

    def stop_all(self) -> None:
        stop_procs(self.procs)


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Proxies]:
    group = Proxies(tmp_path)
    yield group
    group.stop_all()


async def fire(urls: list[str], count: int) -> list[tuple[int, str | None]]:
    """``count`` concurrent chat requests spread over ``urls``: (status, Retry-After)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:

        async def one(i: int) -> tuple[int, str | None]:
            async with session.post(urls[i % len(urls)] + "/v1/chat/completions",
                                    json={"model": "limited", "messages": MSG}) as resp:
                await resp.read()
                return resp.status, resp.headers.get("Retry-After")

        return await asyncio.gather(*(one(i) for i in range(count)))


async def test_two_proxies_admit_exactly_the_limit_together(redis_server: RedisServer,
                                                            proxies: Proxies):
    urls = [await proxies.start(redis_server.url), await proxies.start(redis_server.url)]
    results = await fire(urls, 3 * LIMIT)
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: LIMIT, 429: 2 * LIMIT}
    assert all(retry is not None and 1 <= int(retry) <= 60 for status, retry in results
               if status == 429)
    # The limits live in Redis: a restarted proxy still refuses.
    proxies.stop_all()
    url = await proxies.start(redis_server.url)
    assert Counter(s for s, _ in await fire([url], 2)) == {429: 2}


async def test_workers_share_exact_limits(redis_server: RedisServer, proxies: Proxies):
    url = await proxies.start(redis_server.url, workers=2)
    results = await fire([url], 3 * LIMIT)
    assert Counter(status for status, _ in results) == {200: LIMIT, 429: 2 * LIMIT}


async def test_redis_down_fail_closed_then_recovers(redis_server: RedisServer,
                                                    proxies: Proxies):
    url = await proxies.start(redis_server.url, fail_mode="closed")
    assert Counter(s for s, _ in await fire([url], 2)) == {200: 2}
    redis_server.stop()
    assert Counter(s for s, _ in await fire([url], 2)) == {503: 2}
    async with aiohttp.ClientSession() as session, session.get(url + "/health/ready") as resp:
        assert resp.status == 503
        assert (await resp.json())["checks"]["redis"] == "unreachable"
    redis_server.start()
    # Redis came back empty: exact limits again, without restarting the proxy.
    assert Counter(s for s, _ in await fire([url], LIMIT + 2)) == {200: LIMIT, 429: 2}


async def test_redis_down_fail_open_admits(redis_server: RedisServer, proxies: Proxies):
    url = await proxies.start(redis_server.url, fail_mode="open")
    redis_server.stop()
    assert Counter(s for s, _ in await fire([url], 3)) == {200: 3}
    # It is serving, so it is ready: a 503 here would have a balancer drop a working proxy.
    async with aiohttp.ClientSession() as session, session.get(url + "/health/ready") as resp:
        assert resp.status == 200
        checks = (await resp.json())["checks"]
        assert checks["redis"] == "unreachable"
        assert checks["redis_fail_mode"] == "open"
    redis_server.start()
    assert Counter(s for s, _ in await fire([url], LIMIT + 1)) == {200: LIMIT, 429: 1}
