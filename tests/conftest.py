"""Shared fixtures: a fake upstream, and a real aiproxy server driven over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import attrs
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aiproxy.config import Settings, parse_config
from aiproxy.generation import ConfigSource
from aiproxy.http import make_app
from aiproxy.http.protocol import ProxyRunner
from aiproxy.http.state import RUNTIME
from aiproxy.limits.base import RateLimiter
from aiproxy.plugins import ProviderRegistry
from tests.fakes import FakeOpenAI
from tests.no_skips import (  # noqa: F401 - hooks: a skipped test fails
    pytest_make_collect_report,
    pytest_runtest_makereport,
)
from tests.postgres_fixture import (  # noqa: F401 - fixtures for every test module
    own_postgres,
    postgres_server,
    postgres_url,
)
from tests.redis_fixture import redis_server  # noqa: F401 - a fixture for every test module

TOKEN = "test-token"


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: fast retries, a known token."""
    base = Settings(auth_token=TOKEN, retry_max_retries=2, retry_base_delay=0.05,
                    retry_max_delay=2.0, retry_jitter=0.0, log_format="json")
    return attrs.evolve(base, **overrides)


@attrs.define
class Proxy:
    """A running aiproxy with handy clients."""

    server: TestServer
    app: web.Application
    http: aiohttp.ClientSession
    client: openai.AsyncOpenAI

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("/v1"))

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}


class ProxyTestServer(TestServer):
    """aiohttp's test server, serving with the proxy's own server side (as ``serve`` does)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return ProxyRunner(self.app, **kwargs)


@pytest.fixture
async def aiohttp_server() -> AsyncIterator[Callable[..., Awaitable[TestServer]]]:
    """pytest-aiohttp's fixture, but an aiproxy app (one made by ``make_app``) is served by
    the proxy's server side, as in production; fakes and other apps by aiohttp's."""
    servers: list[TestServer] = []

    async def start(app: web.Application, *, host: str = "127.0.0.1", port: int | None = None,
                    **kwargs: Any) -> TestServer:
        kind = ProxyTestServer if RUNTIME in app else TestServer
        server = kind(app, host=host, port=port)
        await server.start_server(**kwargs)
        servers.append(server)
        return server

    yield start
    while servers:
        await servers.pop().close()


@pytest.fixture
async def fake_upstream(aiohttp_server: Any) -> tuple[FakeOpenAI, str]:
    """A fault-injecting OpenAI-compatible upstream: (controller, its /v1 base URL)."""
    fake = FakeOpenAI()
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("/v1"))


StartProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy(aiohttp_server: Any) -> AsyncIterator[StartProxy]:
    """Start aiproxy on 127.0.0.1 with a config mapping; returns a :class:`Proxy`."""
    sessions: list[aiohttp.ClientSession] = []
    clients: list[openai.AsyncOpenAI] = []

    async def start(config: dict[str, Any], *, settings: Settings | None = None,
                    registry: ProviderRegistry | None = None,
                    limiter: RateLimiter | None = None,
                    source: ConfigSource | None = None) -> Proxy:
        app = make_app(parse_config(config, {}), settings or make_settings(),
                       registry=registry, limiter=limiter, source=source)
        server = await aiohttp_server(app)
        http = aiohttp.ClientSession()
        sessions.append(http)
        client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=TOKEN,
                                    max_retries=0, timeout=30)
        clients.append(client)
        return Proxy(server, app, http, client)

    yield start
    for client in clients:
        await client.close()
    for session in sessions:
        await session.close()


def openai_model(name: str, url: str, **extra: Any) -> dict[str, Any]:
    """A config entry for a model served by the fake upstream."""
    return {"name": name, "provider": "openai", "url": url, "token": "upstream-secret", **extra}
