"""provider-config.yaml and environment settings: the old format loads, bad input names its path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from aiproxy.config import (
    ConfigError,
    load_config,
    load_env,
    parse_config,
    parse_duration,
    settings_from_env,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_VARS = ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GROQ_API_KEY",
                "HF_TOKEN", "GEMINI_API_KEY", "COHERE_API_KEY", "GIGACHAT_CREDENTIALS",
                "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_ACCOUNT_ID")

# The example from the old Go proxy's README, verbatim.
OLD_README_CONFIG = """\
models:
  - name: deepseek/deepseek-r1:free
    provider: openrouter
    priority: 1
    requests_per_minute: 20
    requests_per_hour: 1000
    requests_per_day: 1000
    url: "https://openrouter.ai/api/v1/chat/completions"
    token: "your_openrouter_api_token"
    max_request_length: 167731
    model_size: BIG
    http_client_config:
      timeout_seconds: 30
      idle_conn_timeout_seconds: 90
"""


def errors_of(data: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env or {})
    return info.value.errors


class TestLoad:
    def test_old_proxy_config_loads_unchanged(self, tmp_path):
        path = tmp_path / "provider-config.yaml"
        path.write_text(OLD_README_CONFIG)
        config = load_config(path, {})
        (model,) = config.models
        assert model.name == "deepseek/deepseek-r1:free"
        assert model.provider == "openrouter"
        assert (model.requests_per_minute, model.requests_per_hour,
                model.requests_per_day) == (20, 1000, 1000)
        assert model.max_request_length == 167731
        assert model.model_size == "BIG"
        assert model.http_client_config.timeout_seconds == 30
        assert model.http_client_config.idle_conn_timeout_seconds == 90
        assert model.upstream_model_id == "deepseek/deepseek-r1:free"

    @pytest.mark.parametrize("name", ["provider-config.example.yaml", "demo.yaml"])
    def test_shipped_configs_load(self, name):
        env = dict.fromkeys(EXAMPLE_VARS, "x")
        config = load_config(ROOT / "config" / name, env)
        assert config.models

    def test_example_covers_every_first_party_provider(self):
        env = dict.fromkeys(EXAMPLE_VARS, "x")
        config = load_config(ROOT / "config" / "provider-config.example.yaml", env)
        assert {m.provider for m in config.models} == {
            "openrouter", "openai", "groq", "huggingface", "gemini", "cohere", "gigachat",
            "cloudflare", "anthropic"}

    def test_provider_prefix_is_stripped_for_the_upstream(self):
        config = parse_config({"models": [
            {"name": "groq/llama3", "provider": "groq"},
            {"name": "x", "provider": "openai", "upstream_model": "gpt-4o"}]}, {})
        assert config.models[0].upstream_model_id == "llama3"
        assert config.models[1].upstream_model_id == "gpt-4o"

    def test_interpolation_with_default_and_env(self):
        config = parse_config({"models": [{
            "name": "m", "provider": "openai", "token": "${KEY}",
            "url": "${BASE:-http://localhost:1}/v1"}]}, {"KEY": "secret"})
        assert config.models[0].token == "secret"
        assert config.models[0].url == "http://localhost:1/v1"

    def test_token_is_not_in_repr(self):
        config = parse_config({"models": [{"name": "m", "provider": "openai",
                                           "token": "sk-very-secret"}]}, {})
        assert "sk-very-secret" not in repr(config)


class TestErrors:
    def test_missing_variable_is_named(self):
        assert errors_of({"models": [{"name": "m", "provider": "p", "token": "${NOPE}"}]}) == [
            "models[0].token: environment variable NOPE is not set"]

    def test_bad_type_has_its_path(self):
        assert errors_of({"models": [{"name": "a", "provider": "p"},
                                     {"name": "b", "provider": "p", "priority": "high"}]}) == [
            "models[1].priority: expected an integer, got 'high'"]

    def test_negative_limit(self):
        assert errors_of({"models": [{"name": "a", "provider": "p",
                                      "requests_per_minute": -1}]}) == [
            "models[0].requests_per_minute: must be >= 0, got -1"]

    def test_unknown_keys_refused(self):
        assert errors_of({"models": [{"name": "a", "provider": "p", "tokn": "x"}]}) == [
            "models[0]: unknown key tokn"]
        assert errors_of({"modelz": []}) == ["config: unknown key modelz"]

    def test_nested_errors_all_reported(self):
        errors = errors_of({"models": [{"provider": "p", "http_client_config": {
            "timeout_seconds": "soon", "extra": 1}}]})
        assert "models[0].name: required" in errors
        assert "models[0].http_client_config.timeout_seconds: expected a number, got 'soon'" \
            in errors
        assert "models[0].http_client_config: unknown key extra" in errors

    def test_duplicate_names(self):
        assert errors_of({"models": [{"name": "a", "provider": "p"},
                                     {"name": "a", "provider": "q"}]}) == [
            "models[1].name: duplicate model name 'a' (first at models[0])"]

    def test_models_must_be_a_list_of_mappings(self):
        assert errors_of({"models": "x"}) == ["models: expected a list of models, got str"]
        assert errors_of({"models": ["x"]}) == ["models[0]: expected a mapping, got str"]
        assert errors_of([1]) == ["config: expected a mapping with a models: list, got list"]

    def test_invalid_yaml_reports_line(self, tmp_path):
        path = tmp_path / "c.yaml"
        path.write_text("models:\n  - name: a\n   provider: p\n")
        with pytest.raises(ConfigError) as info:
            load_config(path, {})
        assert "line 3" in info.value.errors[0]

    def test_missing_file(self, tmp_path):
        with pytest.raises(ConfigError) as info:
            load_config(tmp_path / "nope.yaml", {})
        assert "cannot read" in info.value.errors[0]

    def test_unknown_capability(self):
        assert errors_of({"models": [{"name": "a", "provider": "p", "serves": ["video"]}]}) == [
            "models[0].serves: unknown capability 'video' (known: chat, embeddings, images)"]


class TestSettings:
    def test_auth_token_required(self):
        with pytest.raises(ConfigError) as info:
            settings_from_env({})
        assert info.value.errors[0].startswith("AUTH_TOKEN: required")

    def test_defaults_match_the_old_proxy(self):
        settings = settings_from_env({"AUTH_TOKEN": "t"})
        assert settings.port == 8080
        assert (settings.retry_max_retries, settings.retry_base_delay,
                settings.retry_max_delay, settings.retry_jitter) == (3, 1.0, 30.0, 0.1)

    @pytest.mark.parametrize(("env", "needle"), [
        ({"PORT": "0"}, "PORT: must be between 1 and 65535"),
        ({"PORT": "70000"}, "PORT: must be between 1 and 65535"),
        ({"PORT": "http"}, "PORT: expected an integer"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT: must be one of json, console"),
        ({"RETRY_BASE_DELAY": "soon"}, "RETRY_BASE_DELAY: not a duration"),
        ({"REDIS_FAIL_MODE": "maybe"}, "REDIS_FAIL_MODE"),
    ])
    def test_bad_values(self, env, needle):
        with pytest.raises(ConfigError) as info:
            settings_from_env({"AUTH_TOKEN": "t", **env})
        assert any(needle in e for e in info.value.errors)

    def test_go_durations(self):
        assert parse_duration("1s") == 1.0
        assert parse_duration("250ms") == 0.25
        assert parse_duration("1m30s") == 90.0
        assert parse_duration("2") == 2.0
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration("1x")

    def test_real_environment_wins_over_env_file(self, tmp_path, monkeypatch):
        env_file = tmp_path / ".env"
        env_file.write_text(textwrap.dedent("""\
            AUTH_TOKEN=from-file
            PORT=9000
            """))
        monkeypatch.setenv("AUTH_TOKEN", "from-env")
        monkeypatch.delenv("PORT", raising=False)
        env = load_env(str(env_file))
        assert env["AUTH_TOKEN"] == "from-env"
        assert env["PORT"] == "9000"

    def test_missing_explicit_env_file(self, tmp_path):
        with pytest.raises(ConfigError, match="no such file"):
            load_env(str(tmp_path / "nope.env"))


def test_plugin_options_structure_booleans_strictly():
    import attrs

    from aiproxy.config import structure_options

    @attrs.frozen
    class Opts:
        flag: bool = False
        count: int = 0

    assert structure_options({"flag": True, "count": 2}, Opts) == Opts(True, 2)
    with pytest.raises(ConfigError) as info:
        structure_options({"flag": "yes", "count": True}, Opts)
    assert info.value.errors == ["options.flag: expected true or false, got 'yes'",
                                 "options.count: expected an integer, got True"]
