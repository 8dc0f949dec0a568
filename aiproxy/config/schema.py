"""``provider-config.yaml`` → frozen attrs values, with every error reported by its path.

The old Go proxy's format loads unchanged; everything added here is optional.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
import yaml
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

__all__ = [
    "BudgetConfig",
    "CircuitBreakerConfig",
    "Config",
    "ConfigError",
    "HttpClientConfig",
    "KeyConfig",
    "ModelConfig",
    "PriceConfig",
    "RetryConfig",
    "TimeoutConfig",
    "UnknownModelsConfig",
    "got",
    "load_config",
    "parse_config",
    "structure_options",
]

T = TypeVar("T")


class ConfigError(Exception):
    """The configuration is unusable; ``errors`` holds one ``path: message`` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid configuration:\n  " + "\n  ".join(errors))


class _FieldError(ValueError):
    """A validator's complaint about one attribute, so the error path can name it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _non_negative(inst: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value < 0:
        raise _FieldError(attribute.name, f"must be >= 0, got {value}")


def _non_empty(inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.strip():
        raise _FieldError(attribute.name, "must not be empty")


@attrs.frozen
class HttpClientConfig:
    """The old proxy's per-model HTTP settings; 0 means unlimited, as there."""

    timeout_seconds: float = attrs.field(default=0, validator=_non_negative)
    idle_conn_timeout_seconds: float = attrs.field(default=90, validator=_non_negative)
    # The largest upstream answer read whole (a non-stream body), in bytes; 0 = the default,
    # 64 MiB (room for several base64 images). An error body is read up to 1 MiB.
    max_response_size: int = attrs.field(default=0, validator=_non_negative)


@attrs.frozen
class TimeoutConfig:
    """Separate bounds for one upstream call, in seconds; ``None`` = use the default."""

    connect: float | None = attrs.field(default=None, validator=_non_negative)
    first_token: float | None = attrs.field(default=None, validator=_non_negative)
    idle: float | None = attrs.field(default=None, validator=_non_negative)
    total: float | None = attrs.field(default=None, validator=_non_negative)
    # How long a first chunk (stream) or answer (non-stream) may take before the next
    # candidate is started beside it; None: learned from this model's own times; 0: never.
    hedge: float | None = attrs.field(default=None, validator=_non_negative)


@attrs.frozen
class RetryConfig:
    """Per-model override of the ``RETRY_*`` settings; ``None`` = use the global value."""

    max_retries: int | None = attrs.field(default=None, validator=_non_negative)
    base_delay: float | None = attrs.field(default=None, validator=_non_negative)
    max_delay: float | None = attrs.field(default=None, validator=_non_negative)
    jitter: float | None = attrs.field(default=None, validator=_non_negative)
    # Quick retries of the same model after a 5xx or a connection reset, before the next
    # candidate (default 1); a 429 whose Retry-After fits the budget is waited and retried.
    same_model: int | None = attrs.field(default=None, validator=_non_negative)


@attrs.frozen
class CircuitBreakerConfig:
    """When a model that keeps failing is taken out of rotation, and for how long."""

    failures: int = attrs.field(default=3, validator=_non_negative)  # consecutive; 0 = never
    # Before a probe, doubling after each failed one up to max_cooldown. Short by default: a
    # recovered primary carries traffic again within seconds, and one probe at a time means
    # a dead one is never hammered.
    cooldown: float = attrs.field(default=2.0, validator=_non_negative)
    max_cooldown: float = attrs.field(default=4.0, validator=_non_negative)


@attrs.frozen
class PriceConfig:
    """What a model costs, in USD: per million tokens, and per generated image. A ``price:``
    replaces the built-in default for the model as a whole (see ``docs/usage.md``)."""

    input: float = attrs.field(default=0.0, validator=_non_negative)
    output: float = attrs.field(default=0.0, validator=_non_negative)
    # Of the input, tokens served from the upstream's prompt cache; None = the input rate.
    cached_input: float | None = attrs.field(default=None, validator=_non_negative)
    image: float = attrs.field(default=0.0, validator=_non_negative)


@attrs.frozen
class BudgetConfig:
    """Spend (USD) and token budgets per UTC day and calendar month; 0 = no budget."""

    daily: float = attrs.field(default=0.0, validator=_non_negative)
    monthly: float = attrs.field(default=0.0, validator=_non_negative)
    daily_tokens: int = attrs.field(default=0, validator=_non_negative)
    monthly_tokens: int = attrs.field(default=0, validator=_non_negative)

    @property
    def unlimited(self) -> bool:
        return not (self.daily or self.monthly or self.daily_tokens or self.monthly_tokens)


@attrs.frozen
class ModelConfig:
    """One entry of ``models:``: a model name clients use, and the upstream that serves it."""

    name: str = attrs.field(validator=_non_empty)
    provider: str = attrs.field(validator=_non_empty)
    priority: int = 0
    requests_per_minute: int = attrs.field(default=0, validator=_non_negative)
    requests_per_hour: int = attrs.field(default=0, validator=_non_negative)
    requests_per_day: int = attrs.field(default=0, validator=_non_negative)
    tokens_per_minute: int = attrs.field(default=0, validator=_non_negative)
    tokens_per_day: int = attrs.field(default=0, validator=_non_negative)
    url: str | None = None
    token: str | None = attrs.field(default=None, repr=False)
    # Largest request body in bytes this model takes; 0 = no limit.
    max_request_length: int = attrs.field(default=0, validator=_non_negative)
    model_size: str | None = None
    http_client_config: HttpClientConfig = HttpClientConfig()
    # The model id sent upstream; by default the name without a leading "<provider>/".
    upstream_model: str | None = None
    aliases: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()
    # What the model serves (chat, embeddings, images); empty = all its provider can do.
    serves: tuple[str, ...] = ()
    timeouts: TimeoutConfig = TimeoutConfig()
    retry: RetryConfig = RetryConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    # Whether a broken stream may be continued on this model (the request plus an assistant
    # message with the text already relayed); None: what its provider documents.
    continuation: bool | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    # Not part of equality: a reload that only changes a price or a budget keeps the model's
    # provider, connections and breaker.
    price: PriceConfig | None = attrs.field(default=None, eq=False)
    budget: BudgetConfig = attrs.field(default=BudgetConfig(), eq=False)

    @property
    def upstream_model_id(self) -> str:
        if self.upstream_model:
            return self.upstream_model
        prefix = self.provider + "/"
        return self.name[len(prefix) :] if self.name.startswith(prefix) else self.name


@attrs.frozen
class KeyConfig:
    """A client key beside ``AUTH_TOKEN``: its name is logged, the key never is."""

    name: str = attrs.field(validator=_non_empty)
    key: str | None = attrs.field(default=None, repr=False)
    # The key's SHA-256 in hex, so the config need not hold the key itself.
    key_sha256: str | None = attrs.field(default=None, repr=False)
    # Model names or groups this key may use; empty = every model.
    models: tuple[str, ...] = ()
    requests_per_minute: int = attrs.field(default=0, validator=_non_negative)
    requests_per_hour: int = attrs.field(default=0, validator=_non_negative)
    requests_per_day: int = attrs.field(default=0, validator=_non_negative)
    tokens_per_minute: int = attrs.field(default=0, validator=_non_negative)
    tokens_per_day: int = attrs.field(default=0, validator=_non_negative)
    # Spend and token budgets of the key as a whole, and of the key on one model.
    budget: BudgetConfig = BudgetConfig()
    model_budgets: Mapping[str, BudgetConfig] = attrs.field(factory=dict)

    @property
    def digest(self) -> str:
        if self.key_sha256:
            return self.key_sha256.lower()
        assert self.key is not None
        return hashlib.sha256(self.key.encode()).hexdigest()


@attrs.frozen
class UnknownModelsConfig:
    """Where a request for a model name that is neither a model nor a group goes.

    Off by default (such a request is a 404). The old Go proxy sent any unknown name shorter
    than 10 characters to ``SMALL``; ``{route_to: SMALL, shorter_than: 10}`` keeps that for
    old clients that send names like ``gpt-4``.
    """

    # A model or group name; None = unknown names are a 404.
    route_to: str | None = None
    # Only names with fewer characters than this; 0 = a name of any length.
    shorter_than: int = attrs.field(default=0, validator=_non_negative)


@attrs.frozen
class Config:
    """The whole ``provider-config.yaml``."""

    models: tuple[ModelConfig, ...] = ()
    # Named groups of models (names or other groups), beside the implicit model_size groups.
    groups: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    keys: tuple[KeyConfig, ...] = ()
    unknown_models: UnknownModelsConfig = UnknownModelsConfig()

    def model(self, name: str) -> ModelConfig | None:
        for model in self.models:
            if model.name == name:
                return model
        return None


_converter = cattrs.Converter(forbid_extra_keys=True)


def got(value: Any) -> str:
    """What a config error says it found: short scalars as they are, anything else by its
    kind only. A token written as a list, a mapping or into the wrong field must never be
    printed (``--check-config``, the reload log line and the ``/admin/reload`` answer show
    these errors)."""
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 16 else f"a string of {len(value)} characters"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {got(value)}")
    return float(value)


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {got(value)}")
    return value


def _structure_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {got(value)}")
    return value


def _structure_str(value: Any, _: type) -> str:
    # Numbers are accepted where YAML made one of an unquoted id (a token of digits, say).
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(f"expected a string, got {got(value)}")
    return str(value)


def _structure_str_tuple(value: Any, _: type) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list of strings, got {got(value)}")
    return tuple(_structure_str(item, str) for item in value)


def _structure_mapping(value: Any, _: type) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping, got {got(value)}")
    return dict(value)


def _structure_groups(value: Any, _: type) -> Mapping[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping of group name to model names, got {got(value)}")
    return {str(k): _structure_str_tuple(v, tuple) for k, v in value.items()}


_converter.register_structure_hook(float, _structure_float)
_converter.register_structure_hook(int, _structure_int)
_converter.register_structure_hook(str, _structure_str)
_converter.register_structure_hook(bool, _structure_bool)
_converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _structure_str_tuple)
_converter.register_structure_hook_func(lambda t: t == Mapping[str, Any], _structure_mapping)
_converter.register_structure_hook_func(lambda t: t == Mapping[str, tuple[str, ...]],
                                        _structure_groups)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _interpolate(value: Any, path: str, env: Mapping[str, str], errors: list[str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string, after YAML parsing."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(f"{path}: environment variable {name} is not set")
            return ""

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), env, errors)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", env, errors) for i, v in enumerate(value)]
    return value


def _error_lines(exc: BaseException, path: str) -> list[str]:
    """Flatten cattrs' nested validation errors into ``path: message`` lines."""
    lines: list[str] = []
    if isinstance(exc, ForbiddenExtraKeysError):
        return [f"{path or 'config'}: unknown key{'s' if len(exc.extra_fields) > 1 else ''} "
                f"{', '.join(sorted(exc.extra_fields))}"]
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            lines += _error_lines(sub, _join(path, note.name))
        for sub in without:
            lines += _error_lines(sub, path)
        return lines
    if isinstance(exc, IterableValidationError):
        with_index, rest = exc.group_exceptions()
        for sub, note_it in with_index:
            lines += _error_lines(sub, f"{path}[{note_it.index}]")
        for sub in rest:
            lines += _error_lines(sub, path)
        return lines
    if isinstance(exc, _FieldError):
        return [f"{_join(path, exc.field)}: {exc}"]
    if isinstance(exc, KeyError):
        return [f"{path}: required"]
    message = str(exc) if str(exc) else type(exc).__name__
    # attrs validators and cattrs wrap some errors; keep the message the reader needs.
    return [f"{path}: {message}"]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def structure_options(data: Mapping[str, Any], cls: type[T], path: str = "options") -> T:
    """Structure a model's ``options:`` into a plugin's own attrs class, errors with paths."""
    try:
        return _converter.structure(dict(data), cls)
    except Exception as exc:  # noqa: BLE001 - every cattrs failure becomes a ConfigError
        raise ConfigError(_error_lines(exc, path)) from None


def _check_names(config: Config) -> list[str]:
    errors: list[str] = []
    seen: dict[str, int] = {}
    for i, model in enumerate(config.models):
        if model.name in seen:
            errors.append(f"models[{i}].name: duplicate model name {model.name!r} "
                          f"(first at models[{seen[model.name]}])")
        seen.setdefault(model.name, i)
        for cap in model.serves:
            if cap not in ("chat", "embeddings", "images"):
                errors.append(f"models[{i}].serves: unknown capability {cap!r} "
                              "(known: chat, embeddings, images)")
    names = set(seen) | set(config.groups) | {m.model_size for m in config.models
                                              if m.model_size} | {
        a for m in config.models for a in m.aliases}
    key_names: set[str] = set()
    digests: set[str] = set()
    for i, key in enumerate(config.keys):
        if key.name in key_names:
            errors.append(f"keys[{i}].name: duplicate key name {key.name!r}")
        key_names.add(key.name)
        if (key.key is None) == (key.key_sha256 is None):
            errors.append(f"keys[{i}]: give exactly one of key or key_sha256")
            continue
        if key.key_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", key.key_sha256):
            errors.append(f"keys[{i}].key_sha256: must be 64 hex digits")
            continue
        if key.key is not None and len(key.key) < 16:
            errors.append(f"keys[{i}].key: must be at least 16 characters")
            continue
        if key.digest in digests:
            errors.append(f"keys[{i}]: the same key is listed twice")
        digests.add(key.digest)
        for listed in key.models:
            if listed not in names:
                errors.append(f"keys[{i}].models: unknown model or group {listed!r}")
        for budgeted in key.model_budgets:
            if budgeted not in seen:
                errors.append(f"keys[{i}].model_budgets: unknown model {budgeted!r}")
    for group, members in config.groups.items():
        if group in seen:
            errors.append(f"groups.{group}: a group may not share its name with a model")
        if not members:
            errors.append(f"groups.{group}: must list at least one model")
    target = config.unknown_models.route_to
    if target is not None and target not in names:
        errors.append(f"unknown_models.route_to: unknown model or group {target!r}")
    return errors


def parse_config(data: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate parsed YAML into a :class:`Config`; :class:`ConfigError` lists every fault."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["config: expected a mapping with a models: list, "
                           f"got {type(data).__name__}"])
    errors: list[str] = []
    data = _interpolate(data, "", os.environ if env is None else env, errors)
    models = data.get("models", [])
    if not isinstance(models, list):
        errors.append(f"models: expected a list of models, got {type(models).__name__}")
    else:
        errors += [f"models[{i}]: expected a mapping, got {type(m).__name__}"
                   for i, m in enumerate(models) if not isinstance(m, dict)]
    if errors:
        raise ConfigError(errors)
    try:
        config = _converter.structure(data, Config)
    except Exception as exc:  # noqa: BLE001 - every cattrs failure becomes a ConfigError
        raise ConfigError(_error_lines(exc, "")) from None
    errors = _check_names(config)
    if errors:
        raise ConfigError(errors)
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a ``provider-config.yaml``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}: {problem}{where}"]) from None
    return parse_config(data, env)
