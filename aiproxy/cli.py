"""Command line: ``aiproxy`` / ``python -m aiproxy``. Accepts the old proxy's single-dash flags."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import platform
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
import attrs

from aiproxy import __version__
from aiproxy.config import Config, ConfigError, Settings, load_config, load_env, settings_from_env
from aiproxy.generation import ProviderPool, config_warnings, has_limits, redis_missing
from aiproxy.http import make_app
from aiproxy.http.server import serve
from aiproxy.limits import InMemoryRateLimiter
from aiproxy.observability import configure_logging, get_logger
from aiproxy.plugins import ProviderRegistry
from aiproxy.workers import supervise

__all__ = ["main", "parse_addr"]

DEFAULT_CONFIGS = ("provider-config.yaml", "/config/provider-config.yaml")
DEFAULT_ENV_FILES = (".env", "/config/.env")
# Where a running proxy writes the address it bound, for ``health-check`` (the container sets
# it, so the check follows --addr and PORT wherever they were given).
ADDR_FILE_ENV = "AIPROXY_ADDR_FILE"
USAGE_DB = "aiproxy-usage.db"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiproxy", allow_abbrev=False,
        description="An OpenAI-compatible proxy in front of many LLM providers.")
    parser.add_argument("--config", "-config", metavar="PATH",
                        help="path to provider-config.yaml (default: ./provider-config.yaml, "
                             "then /config/provider-config.yaml)")
    parser.add_argument("--env-file", "-env-file", metavar="PATH",
                        help="path to a .env file (default: ./.env, then /config/.env); "
                             "real environment variables win over it")
    parser.add_argument("--addr", "-addr", metavar="[HOST]:PORT",
                        help="listen address, e.g. :8080 or 127.0.0.1:9000 (overrides HOST/PORT)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run N server processes on one port (SO_REUSEPORT); with rate "
                             "limits configured this needs REDIS_URL, so limits stay exact")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="event loop: uvloop when installed (auto, the default), or force one")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the config and environment, then exit 0 (ok) or 1")
    parser.add_argument("--list-providers", action="store_true",
                        help="list the installed provider plugins and exit")
    parser.add_argument("--version", "-version", action="store_true",
                        help="print the version and exit")
    return parser


def parse_addr(addr: str) -> tuple[str | None, int]:
    """``host:port`` or ``:port`` (IPv6 as ``[::1]:8080``)."""
    host, sep, port_text = addr.rpartition(":")
    if not sep:
        raise ValueError(f"--addr: expected [HOST]:PORT, got {addr!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--addr: port must be a number, got {port_text!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"--addr: port must be between 1 and 65535, got {port}")
    host = host.strip("[]")
    return (host or None), port


def with_ledger_beside(settings: Settings, config_path: str) -> Settings:
    """Without ``DATABASE_URL``, the usage ledger is an SQLite file next to the config."""
    if settings.database_url:
        return settings
    path = Path(config_path).resolve().parent / USAGE_DB
    return attrs.evolve(settings, database_url=f"sqlite:///{path}")


def _find(explicit: str | None, defaults: Sequence[str]) -> str | None:
    if explicit:
        return explicit
    return next((p for p in defaults if Path(p).is_file()), None)


def _fail(lines: Sequence[str]) -> int:
    print("aiproxy: configuration error:", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)
    return 1


async def _check_providers(config: Config, registry: ProviderRegistry) -> None:
    """Build every provider once, as startup would, so that every plugin option error shows
    now (all of them, each with its path); then close what was built."""
    pool = ProviderPool(registry, InMemoryRateLimiter())
    try:
        _, fresh = pool.stage(config)
        await pool.discard(fresh)
    finally:
        await pool.close()


def _read(args: argparse.Namespace, config_path: str,
          env_path: str | None) -> tuple[Config | None, Settings | None, list[str]]:
    """The config and the settings, with every problem of both (a bad variable does not
    hide a bad model)."""
    errors: list[str] = []
    settings: Settings | None = None
    config: Config | None = None
    try:
        env = load_env(env_path)
    except ConfigError as exc:
        return None, None, exc.errors
    try:
        settings = with_ledger_beside(settings_from_env(env), config_path)
        if args.addr:
            host, port = parse_addr(args.addr)
            settings = attrs.evolve(settings, host=host or settings.host, port=port)
    except ConfigError as exc:
        errors += exc.errors
    except ValueError as exc:
        errors.append(str(exc))
    try:
        config = load_config(config_path, env)
    except ConfigError as exc:
        errors += exc.errors
    return config, settings, errors


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["health-check"]:
        return health_check(argv[1:])
    args = _parser().parse_args(argv)
    if args.version:
        print(f"aiproxy {__version__} (python {platform.python_version()}, "
              f"aiohttp {aiohttp.__version__})")
        return 0
    registry = ProviderRegistry()
    if args.list_providers:
        for name, origin in registry.describe():
            print(f"{name:<16} {origin}")
        return 0
    config_path = _find(args.config, DEFAULT_CONFIGS)
    if config_path is None:
        return _fail(["--config is required (no ./provider-config.yaml or "
                      "/config/provider-config.yaml found)"])
    env_path = _find(args.env_file, DEFAULT_ENV_FILES) if args.env_file is None \
        else args.env_file
    if args.workers < 1:
        return _fail([f"--workers: must be at least 1, got {args.workers}"])

    config, settings, errors = _read(args, config_path, env_path)
    if config is not None:
        try:
            asyncio.run(_check_providers(config, registry))
        except ConfigError as exc:
            errors += exc.errors
    if settings is not None:
        missing = redis_missing(settings)
        if missing:
            errors.append(missing)
    if (config is not None and settings is not None and args.workers > 1
            and not settings.redis_url and has_limits(config)):
        errors.append(f"--workers {args.workers}: rate or token limits are configured (on a "
                      "model or a client key), and each worker would count them alone, "
                      "admitting up to N times the limit; set REDIS_URL so the workers share "
                      "exact limits, or run one worker")
    if errors or config is None or settings is None:
        return _fail(errors)
    warnings = config_warnings(config, registry)
    for warning in warnings:
        print(f"aiproxy: warning: {warning}", file=sys.stderr)
    if args.check_config:
        print(f"aiproxy: {config_path}: ok ({len(config.models)} models"
              f"{f', {len(warnings)} warnings' if warnings else ''})")
        return 0

    def source() -> tuple[Config, Settings]:
        """Read the .env and the config again, for a reload."""
        env = load_env(env_path)
        new = with_ledger_beside(settings_from_env(env), config_path)
        if args.addr:
            host, port = parse_addr(args.addr)
            new = attrs.evolve(new, host=host or new.host, port=port)
        return load_config(config_path, env), new

    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("aiproxy")
    if args.workers > 1:
        worker_argv = ["--config", config_path, "--addr", f"[{settings.host}]:{settings.port}",
                       "--reuse-port", "--loop", args.loop]
        if args.env_file:
            worker_argv += ["--env-file", args.env_file]
        return supervise(worker_argv, args.workers, settings.shutdown_grace)
    app = make_app(config, settings, registry=registry, source=source)

    def listening() -> None:
        # Called once the port is bound: it is really ours now.
        log.info("listening", host=settings.host, port=settings.port, config=config_path,
                 version=__version__)
        addr_file = os.environ.get(ADDR_FILE_ENV)
        if addr_file:
            with contextlib.suppress(OSError):
                Path(addr_file).write_text(f"[{settings.host}]:{settings.port}\n")

    try:
        with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:
            runner.run(serve(app, settings, reuse_port=args.reuse_port,
                             on_listening=listening))
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            print(f"aiproxy: cannot listen on {settings.host}:{settings.port}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
        raise
    return 0


def health_check(argv: Sequence[str]) -> int:
    """``aiproxy health-check``: exit 0 when the proxy answers ``GET /ping`` on the port it
    listens on: ``--addr``, else the address a running proxy wrote to ``$AIPROXY_ADDR_FILE``,
    else what the same settings say (``--env-file``/``.env``, ``HOST``, ``PORT``)."""
    parser = argparse.ArgumentParser(prog="aiproxy health-check", allow_abbrev=False)
    parser.add_argument("--env-file", "-env-file", metavar="PATH")
    parser.add_argument("--addr", "-addr", metavar="[HOST]:PORT")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    env_path = _find(args.env_file, DEFAULT_ENV_FILES) if args.env_file is None \
        else args.env_file
    addr_file = os.environ.get(ADDR_FILE_ENV)
    try:
        env = load_env(env_path)
        host, port = env.get("HOST", "").strip(), env.get("PORT", "").strip() or "8080"
        addr = args.addr
        if not addr and addr_file and Path(addr_file).is_file():
            addr = Path(addr_file).read_text().strip()  # what the running proxy bound
        if addr:
            addr_host, addr_port = parse_addr(addr)
            host, port = addr_host or host, str(addr_port)
    except (ConfigError, ValueError) as exc:
        print(f"aiproxy health-check: {exc}", file=sys.stderr)
        return 1
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/ping"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            ok = resp.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"aiproxy health-check: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for or, with ``auto``, when installed; None: asyncio's own."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("aiproxy: --loop uvloop: uvloop is not installed "
                             "(pip install 'aiproxy[speed]')") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
