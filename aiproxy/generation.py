"""Generations: everything one config load builds (config, settings, router, keys), immutable.

A reload builds the next generation beside the live one, touching nothing the live one uses,
then swaps it in with one assignment; a rejected reload changes nothing. A request finishes on
the generation it started on. Providers (with their client sessions) live in a pool shared by
the generations: a model whose config is unchanged keeps its provider, breaker and recency,
and a provider closes once no live generation uses it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import attrs

from aiproxy.config import Config, ConfigError, ModelConfig, Settings
from aiproxy.errors import bounded_retry_after
from aiproxy.keys import KeyRing
from aiproxy.limits.base import LimiterUnavailable, Limits, RateLimiter
from aiproxy.metrics import Metrics
from aiproxy.observability import get_logger
from aiproxy.plugins import ProviderRegistry, UnknownProviderError
from aiproxy.provider import Provider, RateLimitHint
from aiproxy.routing import Planner, RetryPolicy, Route, Router, RouteState
from aiproxy.routing.router import AdmissionGuard
from aiproxy.upstream import UpstreamClient

__all__ = ["RESTART_ONLY", "ConfigSource", "Generation", "ProviderPool", "Runtime",
           "config_warnings", "has_limits", "make_session"]

ConfigSource = Callable[[], tuple[Config, Settings]]

# Settings a running process cannot change: a reload keeps the old value and says so.
RESTART_ONLY = ("host", "port", "redis_url", "redis_prefix", "redis_fail_mode", "max_body_size",
                "shutdown_grace", "log_level", "log_format", "client_header_timeout",
                "client_keepalive_timeout", "client_body_timeout", "client_max_connections",
                "responses_store_ttl", "responses_store_max_bytes", "database_url",
                "usage_buffer", "usage_flush_interval", "usage_retention_days", "otel_endpoint")

log = get_logger("aiproxy.generation")


def make_session(keepalive: float) -> aiohttp.ClientSession:
    """One pooled client session: no total timeout (long streams), keep-alive as configured."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=keepalive or None,
                                     enable_cleanup_closed=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                 read_bufsize=2**18, auto_decompress=True)


def has_limits(config: Config) -> bool:
    """True when any model or client key has a rate or token limit."""
    subjects = [Limits.of(m) for m in config.models] + [
        Limits(k.requests_per_minute, k.requests_per_hour, k.requests_per_day,
               k.tokens_per_minute, k.tokens_per_day) for k in config.keys]
    return any(not limits.unlimited for limits in subjects)


@attrs.define(eq=False)
class _Entry:
    """A pooled provider and the run-time state of its model."""

    model: ModelConfig
    provider: Provider
    state: RouteState


@attrs.frozen(eq=False)
class Generation:
    """One config load. Nothing in it changes after it is built."""

    number: int
    config: Config
    settings: Settings
    router: Router
    keys: KeyRing
    entries: tuple[_Entry, ...]


class ProviderPool:
    """Providers by model config, their client sessions, and the upstream-announced parking
    that each provider reports to the (process-wide) limiter."""

    def __init__(self, registry: ProviderRegistry, limiter: RateLimiter) -> None:
        self.registry = registry
        self.limiter = limiter
        self.sessions: dict[float, aiohttp.ClientSession] = {}
        self.clients: dict[float, UpstreamClient] = {}  # by keep-alive, as the sessions
        self._current: dict[str, _Entry] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def stage(self, config: Config) -> tuple[dict[str, _Entry], list[_Entry]]:
        """The entries for ``config``: pooled ones whose model is unchanged, new ones for the
        rest (returned also as the second item, to discard if the generation is refused).
        :class:`ConfigError` lists every model that cannot be built, by its path."""
        entries: dict[str, _Entry] = {}
        fresh: list[_Entry] = []
        errors: list[str] = []
        for i, model in enumerate(config.models):
            old = self._current.get(model.name)
            if old is not None and old.model == model:
                entries[model.name] = old
                continue
            try:
                cls = self.registry.get(model.provider)
            except UnknownProviderError as exc:
                errors += [f"models[{i}].provider: {line}" for line in exc.errors]
                continue
            except ConfigError as exc:
                errors += [f"models[{i}].provider: {line}" for line in exc.errors]
                continue
            try:
                provider = cls(model, self._session(model))
            except ConfigError as exc:
                errors += exc.errors
                continue
            except Exception as exc:  # noqa: BLE001 - a plugin failing to build is a config error
                errors.append(f"models[{i}]: provider {model.provider!r} failed to build "
                              f"({type(exc).__name__})")
                continue
            provider.rate_limit_listener = self._parker(model.name)
            provider.upstream_client = self._client(model)
            entry = _Entry(model, provider, RouteState.of(model))
            entries[model.name] = entry
            fresh.append(entry)
        if errors:
            self._spawn(self._close(fresh))
            raise ConfigError(errors)
        return entries, fresh

    def commit(self, entries: dict[str, _Entry]) -> None:
        self._current = dict(entries)

    async def release(self, entries: tuple[_Entry, ...], live: list[Generation]) -> None:
        """Close the providers of ``entries`` that no generation in ``live`` uses."""
        used = {id(e) for gen in live for e in gen.entries}
        await self._close([e for e in entries if id(e) not in used])

    async def discard(self, fresh: list[_Entry]) -> None:
        await self._close(fresh)

    async def close(self) -> None:
        """Close every provider and session (at shutdown, after the generations drained)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close(list(self._current.values()))
        self._current = {}
        for session in self.sessions.values():
            await session.close()
        for client in self.clients.values():
            await client.close()

    def _session(self, model: ModelConfig) -> aiohttp.ClientSession:
        keepalive = model.http_client_config.idle_conn_timeout_seconds
        session = self.sessions.get(keepalive)
        if session is None:
            session = self.sessions[keepalive] = make_session(keepalive)
        return session

    def _client(self, model: ModelConfig) -> UpstreamClient:
        keepalive = model.http_client_config.idle_conn_timeout_seconds
        client = self.clients.get(keepalive)
        if client is None:
            client = self.clients[keepalive] = UpstreamClient(keepalive)
        return client

    def _parker(self, name: str) -> Callable[[RateLimitHint], None]:
        """The listener a provider calls when its upstream announces an exhausted budget. It
        parks the model by name in the limiter, which outlives every generation, so parking
        holds across any number of reloads."""

        def on_hint(hint: RateLimitHint) -> None:
            seconds = bounded_retry_after(hint.reset_after)
            if seconds:
                self._spawn(self._park(name, seconds))

        return on_hint

    async def _park(self, name: str, seconds: float) -> None:
        try:
            await self.limiter.park(name, seconds)
        except LimiterUnavailable:
            log.warning("park_failed", model=name)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop (a build refused outside one): nothing was opened
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _close(entries: list[_Entry]) -> None:
        for entry in entries:
            try:
                await entry.provider.close()
            except Exception as exc:  # noqa: BLE001 - closing must go on for the others
                log.warning("provider_close_failed", model=entry.model.name,
                            error=type(exc).__name__)


class Runtime:
    """The live generation and the ones still draining; one per application."""

    def __init__(self, pool: ProviderPool, metrics: Metrics,
                 source: ConfigSource | None = None,
                 guards: tuple[AdmissionGuard, ...] = ()) -> None:
        self.pool = pool
        self.metrics = metrics
        self.source = source
        self.guards = guards  # admission guards every generation's router asks
        self.current: Generation | None = None
        self._in_flight: dict[Generation, int] = {}
        self._draining: list[Generation] = []
        self._number = 0
        self._idle: asyncio.Event | None = None  # set when the last request in flight ends
        # The loop the app runs on, once started (the gateway schedules the observers on it).
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    def build(self, config: Config, settings: Settings) -> tuple[Generation, list[_Entry]]:
        """A new generation (not yet live) and the providers built for it; raises
        :class:`ConfigError` and leaves everything as it was when the config cannot serve."""
        entries, fresh = self.pool.stage(config)
        policy = RetryPolicy.of(settings)
        routes = {m.name: Route(m, entries[m.name].provider, policy.with_override(m.retry),
                                entries[m.name].state) for m in config.models}
        planner = Planner(config, routes)
        router = Router(planner, self.pool.limiter, self.metrics, guards=self.guards)
        self._number += 1
        generation = Generation(self._number, config, settings, router,
                                KeyRing(config, planner), tuple(entries.values()))
        return generation, fresh

    def start(self, config: Config, settings: Settings) -> Generation:
        generation, _ = self.build(config, settings)
        self._swap(generation)
        return generation

    async def reload(self) -> list[str]:
        """Re-read the config source; the errors, or ``[]`` when the new generation is live."""
        if self.source is None:
            return ["this server was started without a config file to reload"]
        live = self.current
        try:
            config, settings = self.source()
            if live is not None:
                settings = _keep_restart_only(live.settings, settings)
            generation, fresh = self.build(config, settings)
        except ConfigError as exc:
            log.error("reload_rejected", errors=exc.errors)
            return exc.errors
        except Exception as exc:  # noqa: BLE001 - whatever fails, the live config stays
            errors = [f"building the new configuration failed: {type(exc).__name__}"]
            log.error("reload_rejected", errors=errors)
            return errors
        self._swap(generation)
        log.info("reloaded", generation=generation.number, models=len(config.models),
                 reused=len(generation.entries) - len(fresh), built=len(fresh))
        return []

    def _swap(self, generation: Generation) -> None:
        old = self.current
        self.pool.commit({e.model.name: e for e in generation.entries})
        self.current = generation
        if old is not None:
            self._draining.append(old)
            if not self._in_flight.get(old):
                self._retire(old)

    def enter(self) -> Generation | None:
        """A request starts: it runs on the live generation until it ends."""
        generation = self.current
        if generation is not None:
            self._in_flight[generation] = self._in_flight.get(generation, 0) + 1
        return generation

    def leave(self, generation: Generation) -> None:
        left = self._in_flight[generation] - 1
        if left:
            self._in_flight[generation] = left
            return
        del self._in_flight[generation]
        if generation in self._draining:
            self._retire(generation)
        if self._idle is not None and not self._in_flight:
            self._idle.set()

    async def drained(self, within: float) -> bool:
        """Wait up to ``within`` seconds for every request in flight to end; True when none is."""
        if not self._in_flight:
            return True
        self._idle = asyncio.Event()
        try:
            async with asyncio.timeout(within):
                await self._idle.wait()
        except TimeoutError:
            return False
        finally:
            self._idle = None
        return True

    def _retire(self, generation: Generation) -> None:
        self._draining.remove(generation)
        live = [g for g in (self.current, *self._draining) if g is not None]
        self.pool._spawn(self.pool.release(generation.entries, live))

    def interrupt_streams(self, reason: str) -> int:
        """End every stream being relayed, on any generation, with an error event."""
        streams = [s for g in (self.current, *self._draining) if g is not None
                   for s in g.router.streams]
        for stream in streams:
            stream.interrupt(reason)
        return len(streams)

    async def close(self) -> None:
        for generation in list(self._draining):
            self._draining.remove(generation)
        self.current = None
        await self.pool.close()


def _keep_restart_only(old: Settings, new: Settings) -> Settings:
    changed = [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]
    if changed:
        log.warning("reload_needs_restart", settings=changed)
    return attrs.evolve(new, **{name: getattr(old, name) for name in RESTART_ONLY})


_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def config_warnings(config: Config, registry: ProviderRegistry) -> list[str]:
    """What a config may mean to do but probably does not: an upstream that needs a token
    configured without one (a local server, by URL, needs none)."""
    warnings: list[str] = []
    for i, model in enumerate(config.models):
        try:
            cls = registry.get(model.provider)
        except ConfigError:
            continue  # reported as an error already
        if model.token or not cls.requires_token:
            continue
        host = urlsplit(model.url or cls.default_url or "").hostname or ""
        if host in _LOCAL_HOSTS or host.endswith(".localhost"):
            continue
        warnings.append(f"models[{i}].token: empty, but provider {model.provider!r} sends "
                        f"one upstream ({model.name} will be refused by {host or 'it'})")
    return warnings


def redis_missing(settings: Settings) -> str | None:
    """Why ``REDIS_URL`` cannot work here, or ``None``."""
    if settings.redis_url and importlib.util.find_spec("redis") is None:
        return ("REDIS_URL: set, but the redis client is not installed "
                "(pip install 'aiproxy[redis]')")
    return None
