"""Configuration: ``provider-config.yaml`` (:mod:`.schema`) and the process settings from the
environment and ``.env`` (:mod:`.settings`), read together by :func:`.source.read_config`."""

from __future__ import annotations

from aiproxy.config.schema import (
    CircuitBreakerConfig,
    Config,
    ConfigError,
    HttpClientConfig,
    KeyConfig,
    ModelConfig,
    RetryConfig,
    TimeoutConfig,
    load_config,
    parse_config,
    structure_options,
)
from aiproxy.config.settings import Settings, load_env, parse_duration, settings_from_env

__all__ = [
    "CircuitBreakerConfig",
    "Config",
    "ConfigError",
    "HttpClientConfig",
    "KeyConfig",
    "ModelConfig",
    "RetryConfig",
    "Settings",
    "TimeoutConfig",
    "load_config",
    "load_env",
    "parse_config",
    "parse_duration",
    "settings_from_env",
    "structure_options",
]
