"""Reload: re-read the config and ``.env``; a valid one replaces the old atomically.

Requests keep the router they started with, so in-flight requests and streams finish on the
old one; a model whose config did not change keeps its provider, breaker and recency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import attrs
from aiohttp import web

from aiproxy.config import Config, ConfigError
from aiproxy.keys import KeyRing
from aiproxy.observability import get_logger
from aiproxy.router import Router
from aiproxy.routes import build_routes
from aiproxy.settings import Settings
from aiproxy.state import LIMITER, METRICS, REGISTRY, RUNTIME

__all__ = ["RESTART_ONLY", "SOURCE", "ConfigSource", "reload"]

ConfigSource = Callable[[], tuple[Config, Settings]]
SOURCE: web.AppKey[ConfigSource] = web.AppKey("config_source")

# Settings a running process cannot change: a reload keeps the old value and says so.
RESTART_ONLY = ("host", "port", "redis_url", "redis_prefix", "redis_fail_mode", "max_body_size",
                "shutdown_grace", "log_level", "log_format")

log = get_logger("aiproxy.reload")


async def reload(app: web.Application) -> list[str]:
    """Reload from the app's config source; the errors, or ``[]`` when the new config is live."""
    source = app.get(SOURCE)
    if source is None:
        return ["this server was started without a config file to reload"]
    runtime = app[RUNTIME]
    async with runtime.reload_lock:
        try:
            config, settings = source()
            settings = _keep_restart_only(runtime.settings, settings)
            router = _build(app, config, settings)
        except ConfigError as exc:
            log.error("reload_rejected", errors=exc.errors)
            return exc.errors
        except Exception as exc:  # noqa: BLE001 - a plugin failing to build keeps the old config
            errors = [f"building the new configuration failed: {type(exc).__name__}"]
            log.error("reload_rejected", errors=errors)
            return errors
        old = runtime.router
        runtime.router, runtime.keys, runtime.settings = router, KeyRing(config, router), settings
    if old is not None:
        kept = {name for name, route in router.routes.items() if old.routes.get(name) is route}
        runtime.retired.append(old)
        old.retire(kept)
    log.info("reloaded", models=len(config.models), kept=len(router.routes) - len(
        set(router.routes) - (set(old.routes) if old else set())))
    return []


def _keep_restart_only(old: Settings, new: Settings) -> Settings:
    changed = [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]
    if changed:
        log.warning("reload_needs_restart", settings=changed)
    return attrs.evolve(new, **{name: getattr(old, name) for name in RESTART_ONLY})


def _build(app: web.Application, config: Config, settings: Settings) -> Router:
    runtime = app[RUNTIME]
    routes = build_routes(config, settings, app[REGISTRY], runtime.sessions,
                          reuse=runtime.router.routes if runtime.router else None)
    return Router(config, routes, app[LIMITER], metrics=app[METRICS])


def install_sighup(app: web.Application) -> Callable[[], None]:
    """Reload on SIGHUP (main thread only); returns the undo."""
    import signal

    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[list[str]]] = set()

    def on_hup() -> None:
        task = loop.create_task(reload(app))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (RuntimeError, ValueError, NotImplementedError):
        return lambda: None  # not the main thread, or no signals here

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return undo
