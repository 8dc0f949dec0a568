"""Process settings from the environment and an optional ``.env`` file (real variables win)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import attrs
from dotenv import dotenv_values

from aiproxy.config.schema import ConfigError, got

__all__ = ["Settings", "load_env", "parse_duration", "settings_from_env"]

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from a Go duration (``1s``, ``1m30s``, ``250ms``) or a plain number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {got(text)} (use e.g. 1s, 500ms, 1m30s)")
    return total


@attrs.frozen
class Settings:
    """Everything the process reads from its environment."""

    auth_token: str = attrs.field(repr=False)
    host: str = "0.0.0.0"
    port: int = 8080
    log_level: str = "INFO"
    # None: console when stdout is a terminal, else JSON.
    log_format: str | None = None
    redis_url: str | None = attrs.field(default=None, repr=False)
    redis_prefix: str = "aiproxy:"
    redis_fail_mode: str = "open"
    retry_max_retries: int = 3
    retry_base_delay: float = 1.0
    retry_max_delay: float = 30.0
    retry_jitter: float = 0.1
    max_body_size: int = 20 * 1024 * 1024
    shutdown_grace: float = 30.0
    metrics_token: str | None = attrs.field(default=None, repr=False)
    # Client connections (see aiproxy/http/server.py): how long one may sit outside a request
    # (new, or between keep-alive requests), idle keep-alive, the body of a request, and how
    # many may be open at once (0: half the file descriptors the process may open).
    client_header_timeout: float = 20.0
    client_keepalive_timeout: float = 15.0
    client_body_timeout: float = 60.0
    client_max_connections: int = 0
    # The usage ledger: sqlite:///path, postgresql://..., or None (the CLI puts an SQLite file
    # next to the config; an app built without one keeps its ledger in memory).
    database_url: str | None = attrs.field(default=None, repr=False)
    usage_buffer: int = 100_000  # records held while the database is away; more are dropped
    usage_flush_interval: float = 1.0
    usage_retention_days: int = 0  # 0 = keep every record
    otel_endpoint: str | None = None  # the OTLP/HTTP traces URL: traces when set
    # Stored Responses API responses (store: true): kept this long after their last use (30
    # days, as OpenAI keeps them), and without REDIS_URL (in the usage database, or in
    # memory) at most this many bytes.
    responses_store_ttl: float = 30 * 86400.0
    responses_store_max_bytes: int = 256 * 1024 * 1024


def load_env(env_file: str | None) -> dict[str, str]:
    """The environment, over the ``.env`` file: ``env_file`` if given, else ``./.env`` if present.

    The old proxy let a ``.env`` file hide the real environment; here real variables win.
    """
    merged: dict[str, str] = {}
    path = Path(env_file) if env_file else Path(".env")
    if env_file and not path.is_file():
        raise ConfigError([f"--env-file: {env_file}: no such file"])
    if path.is_file():
        merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(os.environ)
    return merged


def _int(env: Mapping[str, str], name: str, default: int, errors: list[str],
         low: int | None = None, high: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        errors.append(f"{name}: expected an integer, got {got(raw)}")
        return default
    if (low is not None and value < low) or (high is not None and value > high):
        errors.append(f"{name}: must be between {low} and {high}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, errors: list[str],
           duration: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse_duration(raw) if duration else float(raw)
    except ValueError as exc:
        errors.append(f"{name}: {exc}")
        return default
    if value < 0:
        errors.append(f"{name}: must be >= 0, got {got(raw)}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...],
            errors: list[str]) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        errors.append(f"{name}: must be one of {', '.join(choices)}, got {got(raw)}")
        return default
    return raw


def _traces_endpoint(env: Mapping[str, str]) -> str | None:
    """Where OTLP/HTTP traces go: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` as it is, else
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces`` (the OpenTelemetry exporter spec)."""
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if traces:
        return traces
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return f"{base.rstrip('/')}/v1/traces" if base else None


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Validate settings; :class:`ConfigError` lists every bad variable."""
    errors: list[str] = []
    token = env.get("AUTH_TOKEN", "").strip()
    if not token:
        errors.append("AUTH_TOKEN: required: set the proxy access token clients must send "
                      "(in the environment or the .env file)")
    port = _int(env, "PORT", 8080, errors, 1, 65535)
    level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        errors.append(f"LOG_LEVEL: must be DEBUG, INFO, WARNING or ERROR, got {got(level)}")
    settings = Settings(
        auth_token=token,
        host=env.get("HOST", "").strip() or "0.0.0.0",
        port=port,
        log_level=level,
        log_format=_choice(env, "LOG_FORMAT", "", ("json", "console"), errors) or None,
        redis_url=env.get("REDIS_URL", "").strip() or None,
        redis_prefix=env.get("REDIS_PREFIX", "aiproxy:"),
        redis_fail_mode=_choice(env, "REDIS_FAIL_MODE", "open", ("open", "closed"), errors),
        retry_max_retries=_int(env, "RETRY_MAX_RETRIES", 3, errors, 0, 100),
        retry_base_delay=_float(env, "RETRY_BASE_DELAY", 1.0, errors, duration=True),
        retry_max_delay=_float(env, "RETRY_MAX_DELAY", 30.0, errors, duration=True),
        retry_jitter=_float(env, "RETRY_JITTER", 0.1, errors),
        max_body_size=_int(env, "MAX_BODY_SIZE", 20 * 1024 * 1024, errors, 1024, 2**31),
        shutdown_grace=_float(env, "SHUTDOWN_GRACE", 30.0, errors, duration=True),
        metrics_token=env.get("METRICS_TOKEN", "").strip() or None,
        client_header_timeout=_float(env, "CLIENT_HEADER_TIMEOUT", 20.0, errors, duration=True),
        client_keepalive_timeout=_float(env, "CLIENT_KEEPALIVE_TIMEOUT", 15.0, errors,
                                        duration=True),
        client_body_timeout=_float(env, "CLIENT_BODY_TIMEOUT", 60.0, errors, duration=True),
        client_max_connections=_int(env, "CLIENT_MAX_CONNECTIONS", 0, errors, 0, 1_000_000),
        database_url=env.get("DATABASE_URL", "").strip() or None,
        usage_buffer=_int(env, "USAGE_BUFFER", 100_000, errors, 0, 10_000_000),
        usage_flush_interval=_float(env, "USAGE_FLUSH_INTERVAL", 1.0, errors, duration=True),
        usage_retention_days=_int(env, "USAGE_RETENTION_DAYS", 0, errors, 0, 100_000),
        otel_endpoint=_traces_endpoint(env),
        responses_store_ttl=_float(env, "RESPONSES_STORE_TTL", 30 * 86400.0, errors,
                                   duration=True),
        responses_store_max_bytes=_int(env, "RESPONSES_STORE_MAX_BYTES", 256 * 1024 * 1024,
                                       errors, 0, 2**40),
    )
    url = settings.database_url
    if url and not url.startswith(("sqlite://", "postgres://", "postgresql://")):
        errors.append("DATABASE_URL: expected sqlite:///path/to/file.db or "
                      "postgresql://user:password@host/db")
    if errors:
        raise ConfigError(errors)
    return settings
